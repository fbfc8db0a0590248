"""GGUF blocks re-laid into edgekit's form dequantize to exactly what gguf-py dequantizes."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from edgekit.exporters.gguf_blocks import GGUF_BLOCK_TYPES
from edgekit.exporters.gguf_source import GGUFSource, canonical_name, llama_row_order
from factories import SMOLLM2_GGUF


@pytest.mark.parametrize("name", sorted(GGUF_BLOCK_TYPES))
def test_block_type_is_bit_exact(name: str) -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 10, (64, 1))).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[name]
    raw = gguf.quants.quantize(w, qtype)
    expected = gguf.quants.dequantize(raw, qtype)
    got = GGUF_BLOCK_TYPES[name].to_block_weight(raw, 256).dequantize()
    np.testing.assert_array_equal(got, expected)


def test_row_size_not_multiple_of_block_is_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple of Q4_1 block size"):
        GGUF_BLOCK_TYPES["Q4_1"].to_block_weight(np.zeros((2, 20), np.uint8), 40)


@pytest.mark.slow
def test_every_tensor_of_the_real_model_is_exact() -> None:
    """All 272 tensors of SmolLM2-135M: the weights the package computes with equal gguf's dequantize."""
    src = GGUFSource(SMOLLM2_GGUF)
    cfg = src.config
    checked = 0
    for t in src.reader.tensors:
        name = canonical_name(t.name)
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        if name.endswith((".q", ".k")):  # the importer reorders q/k rows to Hugging Face's rope layout
            heads = cfg.num_heads if name.endswith(".q") else cfg.num_kv_heads
            expected = expected[llama_row_order(expected.shape[0], heads)]
        w = src.get(name)
        got = w if isinstance(w, np.ndarray) else w.dequantize()
        np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=t.name)
        checked += 1
    assert checked == 272
