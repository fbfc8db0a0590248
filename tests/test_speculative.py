"""Speculative decoding: greedy output identical to plain greedy for every drafter, sampling exact in
distribution, rollback exact, and bad drafts refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgekit.runtime import GenerationConfig, load
from edgekit.runtime.decoding import decode
from edgekit.runtime.draft_policy import CostAwareLength
from edgekit.runtime.drafters import ModelDrafter, NgramDrafter
from edgekit.runtime.sampling import SamplingParams, token_distribution

from edgekit.cli import main
from edgekit.errors import EdgekitError

WORDS = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "to", "the", "park", "while", "birds", "sang", "songs", "of", "spring", "def", "add(a,", "b):", "return", "a", "+", "b", "#", "add", "two", "numbers", "then", "print", "the", "result", "1", "2", "3", "4", "5"]


def varied_prompts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    prompts = []
    for i in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 20))))
        if i % 2:  # half the prompts repeat themselves, so prompt lookup finds matches
            words = words + words[: len(words) // 2]
        prompts.append(" ".join(words))
    return prompts


@pytest.mark.parametrize(("mode", "pkg"), [("ngram", "draft_pkg"), ("draft", "draft_pkg"), ("draft", "auto_draft_pkg")])
def test_greedy_speculative_equals_plain_greedy_on_50_prompts(request: pytest.FixtureRequest, mode: str,
                                                              pkg: str) -> None:
    model = load(request.getfixturevalue(pkg), draft=True)
    drafted = accepted = 0
    for prompt in varied_prompts(50):
        ids = model.encode(prompt)
        plain = list(model.generate_ids(ids, GenerationConfig(max_new_tokens=24, stop_token_ids=())))
        gen = GenerationConfig(24, stop_token_ids=(), speculative=mode, draft_len=5, draft_min_confidence=0.0)
        spec = list(model.generate_ids(ids, gen))
        assert spec == plain, prompt
        drafted += model.last_stats.drafted
        accepted += model.last_stats.accepted
    assert drafted > 0 and 0 < accepted  # drafts were proposed and some were accepted: the test exercised them


def test_speculative_saves_target_passes_when_output_repeats(draft_pkg: Path) -> None:
    model = load(draft_pkg)
    ids = model.encode("one two three four five six seven eight nine ten " * 4)
    list(model.generate_ids(ids, GenerationConfig(48, stop_token_ids=(), speculative="ngram", draft_len=8)))
    stats = model.last_stats
    if stats.accepted:  # the tiny random model may or may not continue the pattern; when it does, passes drop
        assert stats.target_passes < 48


def test_speculative_sampling_matches_plain_sampling_distribution(tiny_gguf_pkg: Path) -> None:
    """Joint distribution of the first two sampled tokens (top-k 4: 16 outcomes), computed exactly from the
    model, against 1500 speculative samples whose drafts are the argmax (accepted often, rejected often)."""
    target, draft = load(tiny_gguf_pkg), load(tiny_gguf_pkg)
    params = SamplingParams(temperature=1.0, top_k=4)
    prompt = target.encode("Hello there, my friend")
    p1 = token_distribution(target.logits(prompt)[-1], params)
    exact: dict[tuple[int, int], float] = {}
    for t1 in np.flatnonzero(p1):
        p2 = token_distribution(target.logits(prompt + [int(t1)])[-1], params)
        for t2 in np.flatnonzero(p2):
            exact[(int(t1), int(t2))] = p1[t1] * p2[t2]
    rng = np.random.default_rng(1)
    drafter = ModelDrafter(draft.decoder, min_confidence=0.0)
    counts: dict[tuple[int, int], int] = {}
    drafted = accepted = 0
    n = 1500
    from edgekit.runtime.decoding import DecodeStats

    for _ in range(n):
        stats = DecodeStats()
        out = tuple(decode(target.decoder, prompt, max_new_tokens=2, params=params, rng=rng, stops=set(),
                           drafter=drafter, draft_len=2, stats=stats))
        counts[out] = counts.get(out, 0) + 1  # type: ignore[index]
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert 0.2 < accepted / drafted < 0.95  # both acceptance and rejection paths were exercised
    tv = 0.5 * sum(abs(counts.get(k, 0) / n - p) for k, p in exact.items())
    tv += 0.5 * sum(c / n for k, c in counts.items() if k not in exact)
    assert tv < 0.06, (tv, counts, exact)


def test_ngram_drafter_proposes_what_followed_the_last_match() -> None:
    d = NgramDrafter(max_ngram=2)
    d.start([])
    assert d.propose([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert d.propose([7, 8, 9], 2) == []


def test_draft_with_another_vocabulary_is_refused(tmp_path: Path, tiny_hf: Path) -> None:
    other = Path(shutil.copytree(tiny_hf, tmp_path / "other"))
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġcat"] = vocab["Ġcat"], vocab["Ġthe"]  # same tokens, other ids
    (other / "tokenizer.json").write_text(json.dumps(tok))
    result = CliRunner().invoke(main, ["export", str(tiny_hf), "-o", str(tmp_path / "pkg"), "--draft", str(other)])
    assert result.exit_code == 2
    assert "draft tokenizer differs" in result.stderr and "other" in result.stderr
    assert not (tmp_path / "pkg").exists()


def test_draft_length_out_of_range_is_refused(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    with pytest.raises(ValueError, match="draft length"):
        list(model.generate_ids([1, 2, 3], GenerationConfig(8, speculative="ngram", draft_len=0)))


def test_missing_or_tampered_draft_is_refused(tmp_path: Path, draft_pkg: Path) -> None:
    pkg = Path(shutil.copytree(draft_pkg, tmp_path / "pkg"))
    data = pkg / "draft" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(EdgekitError, match="hash mismatch"):
        load(pkg, draft=True)
    data.unlink()
    with pytest.raises(EdgekitError, match="missing"):
        load(pkg, draft=True)


def test_draft_mode_needs_a_draft(tiny_gguf_pkg: Path) -> None:
    with pytest.raises(EdgekitError, match="no draft model"):
        load(tiny_gguf_pkg, draft=True)


def test_float_passes_keep_greedy_speculative_output_identical(tiny_gguf_pkg: Path) -> None:
    """Multi-token passes on float32 weights (a second session over the same cache) against plain decoding
    on the low-bit kernels: the same weights, so the same logits up to summation order, and the same tokens."""
    plain_model, wide_model = load(tiny_gguf_pkg), load(tiny_gguf_pkg, float_passes=True)
    ids = plain_model.encode(varied_prompts(2)[1])
    np.testing.assert_allclose(wide_model.logits(ids), plain_model.logits(ids), rtol=0, atol=1e-4)
    passes = 0
    for prompt in varied_prompts(50):
        ids = plain_model.encode(prompt)
        plain = list(plain_model.generate_ids(ids, GenerationConfig(max_new_tokens=24, stop_token_ids=())))
        gen = GenerationConfig(24, stop_token_ids=(), speculative="ngram", draft_len=5)
        assert list(wide_model.generate_ids(ids, gen)) == plain, prompt
        passes += wide_model.last_stats.drafted
    assert passes > 0


def test_float_passes_are_for_exact_mode(tiny_gguf_pkg: Path) -> None:
    with pytest.raises(EdgekitError, match="float_passes is for exact mode"):
        load(tiny_gguf_pkg, fast=True, float_passes=True)


def test_draft_policy_verifies_only_drafts_that_pay() -> None:
    policy = CostAwareLength()
    assert policy.length(3, 5) == 5  # nothing timed yet: verify what was drafted, and so measure it
    policy.record_pass(1, 1.0)
    for m in range(2, 7):
        policy.record_pass(m, 3.0)  # a multi-token pass costs three one-token passes
    for _ in range(20):
        policy.record_draft(1, drafted=4, accepted=0)  # one-token matches: always rejected
        policy.record_draft(3, drafted=5, accepted=5)  # three-token matches: always accepted
    assert policy.length(1, 5) == 0  # a plain step beats verifying a hopeless draft
    assert policy.length(3, 5) == 5  # 6 tokens for the price of 3
    assert policy.acceptance(7) == 0.8  # an unseen source starts from the (optimistic) prior
    policy.start()
    assert policy.acceptance(1) == 0.8  # acceptance is per generation; costs stay
    assert policy.cost(4) == 3.0 and policy.cost(9) == 3.0


def test_draft_policy_counts_a_draft_models_own_passes() -> None:
    policy = CostAwareLength()
    for m in range(1, 6):
        policy.record_pass(m, 1.0 + 0.1 * (m - 1))  # cheap verify passes: drafting pays at the prior acceptance
    assert policy.length("model", 4) == 4
    assert policy.length("model", 4, token_cost=1.0) == 0  # a drafted token costing a target pass does not


class CostlyDrafter:
    """Proposes k zeros; each would cost 10 s to make."""

    last_source = "model"

    def __init__(self) -> None:
        self.calls = 0

    def start(self, prompt: list[int]) -> None:
        pass

    def propose(self, context: list[int], k: int) -> list[int]:
        self.calls += 1
        return [0] * k

    def token_cost(self) -> float:
        return 10.0


def test_a_draft_model_that_cannot_pay_is_not_run(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    prompt = model.encode("Hello there, my friend")
    plain = list(model.generate_ids(prompt, GenerationConfig(12, stop_token_ids=())))
    drafter = CostlyDrafter()
    out = list(decode(model.decoder, prompt, max_new_tokens=12, params=SamplingParams(), rng=np.random.default_rng(0),
                      stops=set(), drafter=drafter, draft_len=4, policy=CostAwareLength()))
    assert out == plain
    assert drafter.calls == 1  # once, before any verify pass was timed; then 10 s a token never pays


@pytest.mark.parametrize("policy", ["cost", "all"])
def test_greedy_output_does_not_depend_on_the_draft_policy(draft_pkg: Path, policy: str) -> None:
    model = load(draft_pkg)
    for prompt in varied_prompts(10):
        ids = model.encode(prompt)
        plain = list(model.generate_ids(ids, GenerationConfig(max_new_tokens=24, stop_token_ids=())))
        gen = GenerationConfig(24, stop_token_ids=(), speculative="ngram", draft_len=8, draft_policy=policy)
        assert list(model.generate_ids(ids, gen)) == plain, prompt


def test_export_measures_the_drafts_acceptance(draft_pkg: Path) -> None:
    from edgekit.exporters.pipeline import describe

    from edgekit.package import read_manifest

    manifest = read_manifest(draft_pkg)
    measured = manifest.data["draft"]["measured"]
    assert 0.0 <= measured["acceptance_rate"] <= 1.0 and measured["draft_len"] == 4
    assert 0.0 <= measured["accepted_per_pass"] <= 4 and "measured acceptance" in describe(manifest)
    load(draft_pkg, draft=True)  # the rewritten manifest still verifies
