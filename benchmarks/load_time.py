"""Cold start of the device side: a fresh process imports edgekit.runtime, loads a package and decodes.

Each run is a new Python process (what an app start costs): import + load seconds, peak RSS after load,
and plain greedy decode tokens/s over 64 tokens. Medians of --runs. Several (label, python, package)
rows run interleaved in one invocation, so a comparison (e.g. an older checkout's venv and its package)
shares the machine's state:

    python benchmarks/load_time.py --row new,python,pkg --row old,/path/to/old-venv/bin/python,old-pkg
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

from harness import QUIET_ENV, LoadMeter

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    from edgekit.runtime import GenerationConfig, load
    model = load(sys.argv[1])
    load_s = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ids = model.encode("The capital of France is")
    gen = GenerationConfig(max_new_tokens=64, stop_token_ids=())
    t1 = time.perf_counter()
    n = len(list(model.generate_ids(ids, gen)))
    print(json.dumps({"load_s": load_s, "rss_mb": rss, "tokens_per_s": n / (time.perf_counter() - t1),
                      "onnx_imported": "onnx" in sys.modules}))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", action="append", required=True, help="label,python,package")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", dest="json_out", default=None, help="Write the rows as JSON here too.")
    args = parser.parse_args()
    rows = [r.split(",", 2) for r in args.row]
    results: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    load = LoadMeter()
    for _ in range(args.runs):
        for label, python, pkg in rows:
            python = sys.executable if python == "python" else python
            out = subprocess.run([python, "-c", CHILD, pkg], capture_output=True, text=True, check=True,
                                 env={**os.environ, **QUIET_ENV})
            results[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{load.note()}; medians of {args.runs}")
    print(f"{'row':<12} {'import+load s':>14} {'peak RSS MB':>12} {'decode tok/s':>13} {'onnx imported':>14}")
    summary = {}
    for label, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("load_s", "rss_mb", "tokens_per_s")}
        summary[label] = {**med, "onnx_imported": runs[0]["onnx_imported"], "runs": runs}
        print(f"{label:<12} {med['load_s']:>14.2f} {med['rss_mb']:>12.0f} {med['tokens_per_s']:>13.1f} "
              f"{runs[0]['onnx_imported']!s:>14}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
