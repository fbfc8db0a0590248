"""Fast mode per layer: int8 activations everywhere vs. the exact layers a calibrated export measured.

Usage: python benchmarks/fast_mode.py [--chars N] [--out benchmarks/results/fast-mode-latest]

Exports SmolLM2-135M at int4 g128 with GPTQ (default, self-generated calibration), which measures the nodes
to keep exact (`recipe.fast_exact`). Then, on the pydoc evaluation text and in one run: perplexity and
decode tokens/s (64 tokens after a 128-token prompt, median of 3 rounds, 2 threads) of the package in
exact mode, in fast mode as the runtime loads it (those nodes exact), and in fast mode with int8
activations in every node (the same quantized weights written again through the export option for it,
`edgekit.exporters.pipeline.int8_everywhere`). About 6 minutes on 2 cores.

The results go to a per-user cache folder unless --out names another prefix; refresh the repository's file
with `--out benchmarks/results/fast-mode-latest`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edgekit.exporters.pipeline import int8_everywhere, prepare, write_package
from edgekit.exporters.quantize import GridFormat, QuantConfig
from edgekit.runtime import Model
from edgekit.runtime.bench import decode_rate
from harness import default_out, gguf_path, write_results

from edgekit.evaltext import default_text, perplexity

THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=default_out("fast-mode"),
                        help="prefix of the .txt and .json results (default: %(default)s)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="edgekit-fast-"))
    contents = prepare(str(gguf_path()), QuantConfig(GridFormat(4, 128), "gptq"))
    everywhere = int8_everywhere(contents)
    exact_nodes = write_package(contents, folder / "int4g128").data["recipe"]["fast_exact"]
    write_package(everywhere, folder / "int4g128-int8-everywhere")
    print(f"[fast-mode] exact in fast mode: {exact_nodes}", file=sys.stderr, flush=True)
    rows = {}
    for name, pkg, fast in (("exact", "int4g128", False), ("fast, measured layers exact", "int4g128", True),
                            ("fast, int8 everywhere", "int4g128-int8-everywhere", True)):
        model = Model(folder / pkg, threads=THREADS, fast=fast)
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
    write_results(args.out, text, {"fast_exact": exact_nodes, "rows": rows})


if __name__ == "__main__":
    main()
