"""validate_encoder and retrieval_ranks on stand-in encoders (no model: embeddings are made up per text)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from edgekit.exporters.encoder_validate import (
    EncoderThresholds,
    retrieval_ranks,
    row_cosines,
    validate_encoder,
)
from edgekit.exporters.sentences import DISTRACTORS, PARAPHRASE_PAIRS, VALIDATION_SENTENCES

from edgekit.errors import EdgekitError

DIM = 24


def text_vector(text: str) -> np.ndarray:
    """A fixed unit vector per text."""
    v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


class StandIn:
    """The Encoder interface: embed(texts, batch_size) -> [n, DIM] float32; `spoil` maps texts to a perturbation."""

    def __init__(self, spoil: dict[str, np.ndarray] | None = None, device: str = "cpu"):
        self.spoil = spoil or {}
        self.device = device
        self.calls: list[int] = []

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(len(texts))
        rows = [text_vector(t) + self.spoil.get(t, 0) for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), DIM)


def test_identical_encoders_pass_on_the_validation_sentences() -> None:
    model, reference = StandIn(), StandIn(device="cuda")
    report = validate_encoder(model, reference)
    assert model.calls == reference.calls == [len(VALIDATION_SENTENCES)]
    assert report.sentences == len(VALIDATION_SENTENCES) >= 120
    assert report.mean_cosine == pytest.approx(1) and report.min_cosine == pytest.approx(1)
    assert report.max_abs_error == 0 and not report.failures and len(report.worst) == 3
    assert "PyTorch float32 on cuda" in report.table() and report.table().endswith("PASS")


def test_one_bad_sentence_fails_min_cosine_and_is_named_worst() -> None:
    texts = ["alpha", "beta", "gamma", "delta"]
    bad = -0.8 * text_vector("gamma") + 0.6 * text_vector("delta")  # cosine with the reference well below 0.95
    report = validate_encoder(StandIn({"gamma": bad}), StandIn(), texts)
    cos = float(row_cosines(text_vector("gamma")[None] + bad, text_vector("gamma")[None])[0])
    assert report.min_cosine == pytest.approx(cos) and cos < 0.95
    assert report.worst[0].text == "gamma" and report.worst[0].cosine == pytest.approx(cos)
    assert report.mean_cosine == pytest.approx((3 + cos) / 4)
    assert [f.split(" ", 2)[:2] for f in report.failures] == [["mean", "cosine"], ["min", "cosine"]]
    assert "'gamma'" in report.failures[1]
    table = report.table()
    assert "worst 1" in table and "'gamma'" in table and "FAIL: mean cosine" in table
    assert validate_encoder(StandIn({"gamma": bad}), StandIn(), texts,
                            EncoderThresholds(min_mean_cosine=0, min_cosine=-1)).failures == []


def test_scale_passes_cosine_but_not_an_element_error_limit() -> None:
    """Cosine cannot see a missing normalization; max_abs_error can."""
    texts = ["one", "two"]
    doubled = {t: text_vector(t) for t in texts}
    assert validate_encoder(StandIn(doubled), StandIn(), texts).failures == []
    report = validate_encoder(StandIn(doubled), StandIn(), texts, EncoderThresholds(max_abs_error=1e-3))
    assert report.failures == [f"max element error {report.max_abs_error:.3g}, limit 0.001"]


def test_to_dict_is_json_with_the_verdict() -> None:
    report = validate_encoder(StandIn({"b": text_vector("c")}), StandIn(), ["a", "b", "c"])
    d = json.loads(json.dumps(report.to_dict()))
    assert d["passed"] is False and d["sentences"] == 3 and d["failures"] == report.failures
    assert d["worst"][0] == {"text": "b", "cosine": pytest.approx(report.min_cosine)}
    assert set(d) >= {"mean_cosine", "min_cosine", "max_abs_error", "reference_device"}


def test_multi_line_texts_stay_on_one_table_line() -> None:
    texts = ["def f():\n    return 1", "x" * 200]
    lines = validate_encoder(StandIn(), StandIn(), texts).table().splitlines()
    assert len(lines) == 8  # reference, sentences, mean, min, error, 2 worst, result
    assert max(len(line) for line in lines) < 110


def test_shape_mismatch_and_no_texts_are_one_line_errors() -> None:
    class Short(StandIn):
        def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
            return super().embed(texts)[:, :8]

    with pytest.raises(EdgekitError, match=r"runtime's embeddings are \[2, 8\], the reference's \[2, 24\]"):
        validate_encoder(Short(), StandIn(), ["a", "b"])
    with pytest.raises(EdgekitError, match="no texts"):
        validate_encoder(StandIn(), StandIn(), [])


def test_retrieval_ranks_of_a_perfect_and_a_confused_encoder() -> None:
    pairs = [("q1", "m1"), ("q2", "m2"), ("q3", "m3")]
    distractors = ["d1", "d2"]
    same = {m: text_vector(q) - text_vector(m) for q, m in pairs}  # each match embeds as its query
    assert retrieval_ranks(StandIn(same).embed, pairs, distractors) == [1, 1, 1]
    # q2's match is now orthogonal-ish noise, and both distractors sit right on q2.
    confused = {**same, "m2": np.zeros(DIM), "d1": text_vector("q2") - text_vector("d1"),
                "d2": 0.9 * text_vector("q2") - text_vector("d2")}
    ranks = retrieval_ranks(StandIn(confused).embed, pairs, distractors)
    assert ranks[0] == ranks[2] == 1 and ranks[1] >= 3


def test_retrieval_ranks_default_to_fifty_queries_over_a_hundred_candidates() -> None:
    encoder = StandIn()
    ranks = retrieval_ranks(encoder.embed)
    assert encoder.calls == [50, 100] and len(ranks) == len(PARAPHRASE_PAIRS) == len(DISTRACTORS) == 50
    assert all(1 <= r <= 100 for r in ranks)


def test_sentence_sets_are_distinct() -> None:
    candidates = [m for _, m in PARAPHRASE_PAIRS] + list(DISTRACTORS)
    assert len(set(candidates)) == 100 and len(set(VALIDATION_SENTENCES)) == len(VALIDATION_SENTENCES)
    assert len({q for q, _ in PARAPHRASE_PAIRS}) == 50
