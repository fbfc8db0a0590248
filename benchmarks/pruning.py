"""Structured pruning of SmolLM2-135M: quality and speed at 10%, 25% and 40% fewer parameters, without and with
recovery, and pruned + int4, measured side by side with the unpruned model in one run.

Usage: python benchmarks/pruning.py [--ratios 0.1,0.25,0.4] [--recover-steps 150] [--out PREFIX]

The GGUF (Q4_1) is dequantized by transformers to an fp32 Hugging Face folder, the unpruned reference. Each
ratio is pruned by `edgekit.exporters.prune` (activation importance on the model's own calibration text, the
default), once as is and once with recovery (distillation from the unpruned model). Every model is exported as
an fp32 package; the unpruned model and the recovered ones also as int4 g32 packages, by GPTQ and by RTN (the
format closest to the GGUF's Q4_1: 4-bit codes, a scale and a minimum per 32 weights; RTN keeps the unpruned
model's Q4_1 weights losslessly). Each ratio is also recovered through int4 g32 rounding (quantization-aware,
exporters.prune.quant_aware) and exported as int4 g32 RTN. Then, in one process, per package:
perplexity on the evaluation text (edgekit.evaltext, 9,579 tokens), KL to the unpruned fp32 model on its
first 2,048 tokens, greedy agreement with the unpruned fp32 model (identical tokens of 64, 4 prompts), the
factual check (edgekit.factcheck: 198 prompts with one-word answers, exact match; the points lost against the
unpruned package of the same format come with a 95% interval, paired over the prompts, and a second table
counts the facts right per kind: capitals, people, ...), size on disk, and decode
tokens/s (64 tokens after a 128-token prompt; median of 7 rounds, the packages taking turns each round, 2
threads) and time to first token (median of 4). Speed ratios compare each package with the unpruned package of
the same weight format and method.

Pruned folders and packages are kept under ${XDG_CACHE_HOME:-~/.cache}/edgekit/pruning (delete it to rebuild).
About an hour and a half on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.factcheck import FACTS, KINDS, accuracy, paired_drop, right_by_kind
from edgekit.formats import GridFormat
from harness import LoadMeter, add_out_option, cache_dir, fmt, format_table, gguf_path, logger, write_results

log = logger("pruning")
THREADS = 2
KL_TOKENS = 2048
GREEDY_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
                  "The main causes of the war were")
GREEDY_TOKENS = 64
SPEED_ROUNDS = 7
INT4 = GridFormat(4, 32)


def built(path: Path, build: Any) -> Path:
    """`path`, built by `build(tmp)` into a temporary sibling and renamed, unless it is already there."""
    if not path.exists():
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        tmp.rename(path)
    return path


def unpruned_folder(work: Path) -> Path:
    """The GGUF as an fp32 Hugging Face folder with edgekit's tokenizer (exporters.hf_folder)."""
    def build(out: Path) -> None:
        from edgekit.exporters.hf_folder import write_tokenizer_files
        from edgekit.exporters.reference import TorchReference
        from edgekit.exporters.sources import open_source, source_tokenizer

        log("unpruned fp32 folder from the GGUF")
        TorchReference(str(gguf_path()), "cpu").model.save_pretrained(str(out))
        write_tokenizer_files(out, *source_tokenizer(open_source(str(gguf_path()))))
    return built(work / "unpruned", build)


def pruned_folder(work: Path, base: Path, ratio: float, steps: int, recover_for: GridFormat | None = None) -> Path:
    def build(out: Path) -> None:
        from edgekit.exporters.prune import PruneRequest, prune

        log(f"pruning {ratio:.0%}" + (f", recovering {steps} steps" if steps else "")
            + (f" through {recover_for.name}" if recover_for else ""))
        result = prune(str(base), out, PruneRequest(ratio=ratio), recover_steps=steps, recover_for=recover_for)
        log(result.describe())
    return built(work / (f"pruned-{ratio:g}-r{steps}" + (f"-{recover_for.name}" if recover_for else "")), build)


def package(folder: Path, method: str | None) -> Path:
    """`folder` exported as fp32 (method None) or as INT4 quantized by `method` (rtn or gptq)."""
    def build(out: Path) -> None:
        from edgekit.exporters.pipeline import export
        from edgekit.exporters.quantize import QuantConfig

        log(f"exporting {folder.name} as {weights_label(method)}")
        export(str(folder), out, quant=QuantConfig(INT4, method) if method else None)
    return built(folder.parent / f"{folder.name}.{method or 'fp32'}.pkg", build)


def weights_label(method: str | None) -> str:
    return f"int4 {method}" if method else "fp32"


def measure(pkg: Path, reference: Any, ref_greedy: list[list[int]] | None) -> dict[str, Any]:
    """Every column for one package (module docstring); `reference` is the unpruned fp32 Model."""
    from edgekit.runtime import GenerationConfig, Model
    from edgekit.runtime.bench import time_to_first_token
    from edgekit.runtime.bench_common import size_on_disk_mb

    from edgekit.evaltext import default_text, log_softmax, perplexity, windows

    model = Model(pkg, threads=THREADS)
    ids = model.codec.encode(default_text())
    ppl = perplexity(model.logits, ids)
    kl = []
    for w in list(windows(ids))[: KL_TOKENS // 512]:
        p, q = log_softmax(reference.logits(w)), log_softmax(model.logits(w))
        kl.append((np.exp(p) * (p - q)).sum(-1))
    gen = GenerationConfig(max_new_tokens=GREEDY_TOKENS, stop_token_ids=())
    greedy = [list(model.generate_ids(model.encode(p), gen)) for p in GREEDY_PROMPTS]
    agree = None if ref_greedy is None else statistics.mean(
        next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), len(g)) for g, r in zip(greedy, ref_greedy))
    facts, misses = accuracy(lambda prompt, n: model.generate(prompt, max_new_tokens=n))  # type: ignore[arg-type,return-value]
    prompt = ids[:128]
    ttft = statistics.median(time_to_first_token(model, prompt) for _ in range(4))
    manifest = json.loads((pkg / "manifest.json").read_text())
    pruning = manifest["recipe"].get("pruning") or {}
    params = (pruning.get("parameters") or {}).get("after")
    return {"package": str(pkg), "perplexity": ppl, "kl": float(np.concatenate(kl).mean()), "greedy": agree,
            "facts": facts, "facts_missed": [list(m) for m in misses], "size_mb": size_on_disk_mb(pkg),
            "ttft_ms": ttft, "parameters": params, "greedy_tokens": greedy,
            "recovery": pruning.get("recovery"), "shapes": pruning.get("layers")}


def decode_rates(pkgs: list[Path]) -> list[float]:
    """Decode tokens/s of each package (64 after 128), the median of SPEED_ROUNDS rounds in which the packages take
    turns: a machine that slows down or speeds up during the run moves every package alike, not the ones measured
    then (three rounds per package, one package after the other, moved the same unpruned fp32 package from 76 to
    90 tok/s between two runs)."""
    from edgekit.runtime import Model
    from edgekit.runtime.bench import decode_rate

    models = [Model(pkg, threads=THREADS) for pkg in pkgs]
    rates: list[list[float]] = [[] for _ in models]
    for _ in range(SPEED_ROUNDS):
        for k, model in enumerate(models):
            rates[k].append(decode_rate(model, 128, 64, 1))
    return [statistics.median(r) for r in rates]


def points_lost(r: dict[str, Any]) -> str:
    """`10 (-1 to 21)`: the factual check's points below the unpruned package, and the 95% interval."""
    if r["ratio"] == 0:
        return "n/a"
    lo, hi = r["facts_lost_ci95"]
    return f"{100 * r['facts_lost']:.0f} ({100 * lo:.0f} to {100 * hi:.0f})"


def kind_counts(r: dict[str, Any]) -> list[str]:
    """`right/asked` per kind of fact for one package: where its facts go, not only how many."""
    return [f"{right}/{asked}" for right, asked in right_by_kind([m[0] for m in r["facts_missed"]]).values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.1,0.25,0.4", help="fractions of the parameters removed")
    parser.add_argument("--recover-steps", type=int, default=150)
    parser.add_argument("--work", type=Path, default=cache_dir() / "pruning", help="folders and packages (kept)")
    add_out_option(parser, "pruning")
    args = parser.parse_args()
    from edgekit.exporters.hf_folder import stored_parameters
    from edgekit.runtime import Model

    ratios = [float(r) for r in args.ratios.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    base = unpruned_folder(args.work)
    rows: list[tuple[str, str, float, int, Path]] = [("unpruned", weights_label(m), 0.0, 0, package(base, m))
                                                     for m in (None, "gptq", "rtn")]
    steps = args.recover_steps
    for ratio in ratios:
        plain = f"{ratio:.0%} pruned"
        recovered, folder = f"{plain}, {steps} recovery steps", pruned_folder(args.work, base, ratio, steps)
        rows += [(plain, "fp32", ratio, 0, package(pruned_folder(args.work, base, ratio, 0), None)),
                 (recovered, "fp32", ratio, steps, package(folder, None)),
                 (recovered, "int4 gptq", ratio, steps, package(folder, "gptq")),
                 (recovered, "int4 rtn", ratio, steps, package(folder, "rtn")),
                 (f"{plain}, {steps} int4-aware recovery steps", "int4 rtn", ratio, steps,
                  package(pruned_folder(args.work, base, ratio, steps, INT4), "rtn"))]
    log("measuring")
    meter = LoadMeter()
    reference = Model(rows[0][4], threads=THREADS)
    results: list[dict[str, Any]] = []
    ref_greedy = None
    for label, fmt_name, ratio, steps, pkg in rows:
        log(f"measuring {label} ({fmt_name})")
        r = measure(pkg, reference, ref_greedy)
        ref_greedy = ref_greedy or r["greedy_tokens"]
        r.update(label=label, format=fmt_name, ratio=ratio, recover_steps=steps)
        results.append(r)
    for r, rate in zip(results, decode_rates([row[4] for row in rows])):
        r["tokens_per_s"] = rate
    note = meter.note()
    base_params = None
    for r in results:
        if r["parameters"] is None:
            r["parameters"] = base_params = base_params or stored_parameters(base)
    same = {r["format"]: r for r in results if r["ratio"] == 0}  # by format and method
    for r in results:
        u = same[r["format"]]
        r["removed"] = 1 - r["parameters"] / u["parameters"]
        r["speedup"] = r["tokens_per_s"] / u["tokens_per_s"]
        r["facts_lost"], *r["facts_lost_ci95"] = paired_drop([m[0] for m in u["facts_missed"]],
                                                             [m[0] for m in r["facts_missed"]])
    head = ["model", "weights", "params", "removed", "ppl", "KL", "greedy/64", "facts", "facts lost (95% CI)", "MB",
            "tok/s", "vs unpruned", "TTFT ms"]
    body = [[r["label"], r["format"], f"{r['parameters'] / 1e6:.1f}M", f"{r['removed']:.1%}",
             f"{r['perplexity']:.2f}", fmt(r["kl"], ".3f"), fmt(r["greedy"], ".1f"), f"{r['facts']:.0%}",
             points_lost(r),
             f"{r['size_mb']:.1f}", f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}x", f"{r['ttft_ms']:.0f}"]
            for r in results]
    table = "\n".join([
        ("SmolLM2-135M-Instruct pruned by edgekit (activation importance, self-generated calibration text); "
        f"{THREADS} threads"),
        *format_table(head, body, 2),
        ("ppl: evaluation text (9,579 tokens); KL: to the unpruned fp32 model, nats/token on 2,048 tokens; "
        "greedy/64: tokens identical to the unpruned fp32 model before the first difference, mean of 4 prompts; "
        f"facts: exact match on {len(FACTS)} one-word answers (edgekit.factcheck); facts lost: points below the unpruned "
        "package of the same format, paired over the same prompts, with a 95% interval (factcheck.paired_drop); "
        "tok/s: decode, 64 tokens after 128, median "
        f"of {SPEED_ROUNDS} rounds, the packages in turn; vs unpruned: the unpruned package of the same weights' "
        "format and method; int4-aware recovery: distilled through int4 g32 rounding (exporters.prune.quant_aware)."),
        "",
        f"Facts right by kind (edgekit.factcheck.KINDS), of the {len(FACTS)} prompts:",
        *format_table(["model", "weights", *KINDS], [[r["label"], r["format"], *kind_counts(r)] for r in results], 2),
        note])
    print(table)
    for r in results:
        r.pop("greedy_tokens")
    write_results(args.out, table, {"rows": results})


if __name__ == "__main__":
    sys.exit(main())
