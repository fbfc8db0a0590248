"""Where a decode step's time goes: per op type, the block-offset term, Python per step, and k-row passes.

Rows (label, package) are measured in one process, interleaved where they are timed, so an A/B comparison
(e.g. a package exported before a lowering change) shares the machine's state:

    python benchmarks/profile_decode.py --row after,PKG --row before,OLD_PKG --threads 2 --rounds 5 \\
        --json benchmarks/results/profile-latest.json > benchmarks/results/profile-latest.txt

Per row:
- load s and decode tok/s (runtime.bench.decode_rate: 64 tokens after 128, one round per row in turn; medians);
- onnxruntime's profiler over decode steps: kernel µs and nodes per step for each op type, the block-offset term's
  nodes (their input or output names: `.block_sums_`, `.offset_term`, `shape_last_-1_32`: the earlier form), and the step's wall time
  beyond its kernels (executor overhead). The profiler itself slows small nodes: read shares, not absolutes;
- Python per step: a generate_ids token gap, a Decoder.forward call and the bare run_with_iobinding, and where a
  sampling profiler (a thread reading the main thread's stack each ms) finds the Python time;
- the offset term's cost without the profiler: median ms of a bare decode step on the graph and on a copy with the
  term dropped (wrong logits; timing only), interleaved;
- k-row passes, k = 1..8: wall ms of one pass and its ratio to a 1-row pass, and MatMulNBits' µs in it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from edgekit.runtime import GenerationConfig, Model
from edgekit.runtime.bench import decode_latencies, decode_rate
from edgekit.runtime.decoder import CPU_PROVIDER, Decoder, SessionSettings, make_session
from edgekit.runtime.loader import graph_path, load_manifest

from edgekit.evaltext import default_text

OFFSET_TERM = re.compile(r"\.block_sums_\d+|\.offset_term|shape_last_-1_\d+")
PROMPT = 128
STEPS = 32
MAX_K = 8


def profiled_session(graph: Path, threads: int, folder: str) -> ort.InferenceSession:
    """The session Model opens (runtime.decoder.make_session's options) with onnxruntime's profiler on."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(folder, "ort")
    return ort.InferenceSession(str(graph), so, providers=[CPU_PROVIDER])


def node_roles(graph: Path) -> dict[str, str]:
    """Node name -> "offset term" for the block-offset term's nodes, "MatMulNBits <weight>" for each projection kind
    (`layers.3.qkv.qweight` -> qkv): onnxruntime keeps the names of the nodes it does not fuse."""
    model = onnx.load(str(graph), load_external_data=False)
    roles = {}
    for n in model.graph.node:
        if any(OFFSET_TERM.search(v) for v in [*n.input, *n.output]):
            roles[n.name] = "offset term"
        elif n.op_type == "MatMulNBits":
            roles[n.name] = "MatMulNBits " + re.sub(r"^layers\.\d+\.|\.qweight.*$", "", n.input[1])
    return roles


def runs_of(events: list[dict[str, Any]]) -> list[tuple[float, list[dict[str, Any]]]]:
    """(wall µs, kernel events) of each model run, in order."""
    runs = [e for e in events if e["name"] == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return [(r["dur"], [k for k in kernels if r["ts"] <= k["ts"] <= r["ts"] + r["dur"]]) for r in runs]


def per_op(runs: list[tuple[float, list[dict[str, Any]]]], roles: dict[str, str]) -> dict[str, Any]:
    """Per-step averages over `runs`: µs and node count per op type and per role (node_roles), wall and overhead."""
    n = len(runs)
    ops: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    by_role: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for _, kernels in runs:
        for k in kernels:
            for table, key in ((ops, k["args"]["op_name"]), (by_role, roles.get(k["name"].removesuffix("_kernel_time")))):
                if key is not None:
                    table[key][0] += k["dur"] / n
                    table[key][1] += 1 / n
    wall = statistics.median(w for w, _ in runs)
    kernel = sum(us for us, _ in ops.values())

    def rows(table: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        return {key: {"us": us, "nodes": c} for key, (us, c) in sorted(table.items(), key=lambda kv: -kv[1][0])}
    return {"wall_us": wall, "kernel_us": kernel, "overhead_us": wall - kernel, "nodes": sum(c for _, c in ops.values()),
            "offset_term": rows(by_role).get("offset term", {"us": 0.0, "nodes": 0.0}), "ops": rows(ops),
            "roles": rows(by_role)}


def op_profile(folder: str, threads: int) -> dict[str, Any]:
    """Decode steps and k-row passes (k = 1..MAX_K) under onnxruntime's profiler."""
    manifest_graph = graph_path(folder, load_manifest(folder), CPU_PROVIDER)
    with tempfile.TemporaryDirectory() as tmp:
        session = profiled_session(manifest_graph, threads, tmp)
        decoder = Decoder(session, PROMPT + STEPS + 4 * MAX_K + 8)
        decoder.forward(list(range(1000, 1000 + PROMPT)))
        for i in range(STEPS):
            decoder.forward([500 + i])
        for k in range(1, MAX_K + 1):
            for _ in range(3):
                decoder.forward(list(range(700, 700 + k)))
                decoder.rollback(decoder.length - k)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = runs_of(events)[1:]  # the prefill's run first
    roles = node_roles(manifest_graph)
    passes = runs[STEPS:]
    k_rows = {k: per_op(passes[3 * (k - 1):3 * k], roles) for k in range(1, MAX_K + 1)}
    return {"graph": manifest_graph.name, "decode": per_op(runs[4:STEPS], roles),
            "k_rows": {k: {"wall_us": r["wall_us"], "matmulnbits_us": r["ops"].get("MatMulNBits", {}).get("us", 0.0),
                           "offset_term_us": r["offset_term"]["us"]} for k, r in k_rows.items()}}


def without_offset_term(graph: Path, folder: Path) -> Path:
    """A copy of `graph` in `folder` (its weights file linked or copied beside it) whose projections skip the
    block-offset term: each `Add(codes_term, offset_term)` becomes an Identity, and the nodes left unused go."""
    model = onnx.load(str(graph), load_external_data=False)
    nodes = [onnx.helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)
             if n.op_type == "Add" and n.input[1].endswith(".offset_term") else n for n in model.graph.node]
    needed = {o.name for o in model.graph.output}
    kept = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(n.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    data = {t.external_data[0].value for t in model.graph.initializer if t.external_data}
    for name in data:  # onnxruntime refuses a symbolic link that leaves the graph's folder
        try:
            os.link(graph.parent / name, folder / name)
        except OSError:
            shutil.copyfile(graph.parent / name, folder / name)
    onnx.save(model, str(folder / graph.name))
    return folder / graph.name


def step_ms(graph: Path, threads: int) -> float:
    """Median ms of a bare decode step (Decoder.forward) after a PROMPT-token prefill."""
    decoder = Decoder(make_session(graph, SessionSettings(threads=threads)), PROMPT + 64)
    decoder.forward(list(range(1000, 1000 + PROMPT)))
    times = []
    for i in range(48):
        t0 = time.perf_counter()
        decoder.forward([500 + i])
        times.append(time.perf_counter() - t0)
    return statistics.median(times[8:]) * 1e3


def sample_python(model: Model, ids: list[int], gen: GenerationConfig, interval_s: float = 0.001) -> dict[str, float]:
    """Share of main-thread samples per innermost Python frame (file:function:line) during one generation."""
    main = threading.main_thread().ident
    counts: collections.Counter[str] = collections.Counter()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            frame = sys._current_frames().get(main)  # the standard way to sample another thread
            if frame is not None:
                counts[f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}:{frame.f_lineno}"] += 1
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    list(model.generate_ids(ids, gen))
    done.set()
    sampler.join()
    total = sum(counts.values())
    return {where: c / total for where, c in counts.most_common(8)}


def python_overhead(model: Model) -> dict[str, Any]:
    """Median ms of a generate_ids token gap, a Decoder.forward step and the bare run_with_iobinding."""
    ids = model.codec.encode(default_text())[:PROMPT]
    gen = GenerationConfig(max_new_tokens=64, stop_token_ids=())
    gaps = decode_latencies(model, ids, gen)[0]
    decoder = model.decoder
    decoder.reset()
    decoder.forward(ids)
    session, binding = decoder._bindings[0]  # the step Decoder.forward binds, rerun bare
    forward, bare = [], []
    for i in range(48):  # interleaved, so that a busy moment of the machine falls on both
        t0 = time.perf_counter()
        decoder.forward([500 + i])
        t1 = time.perf_counter()
        session.run_with_iobinding(binding)
        forward.append(t1 - t0)
        bare.append(time.perf_counter() - t1)
    ms = {"generate_gap_ms": statistics.median(gaps) * 1e3, "forward_ms": statistics.median(forward) * 1e3,
          "run_ms": statistics.median(bare) * 1e3}
    return {**ms, "python_per_step_ms": ms["generate_gap_ms"] - ms["run_ms"],
            "samples": sample_python(model, ids, gen)}


def measure(rows: list[tuple[str, str]], threads: int, rounds: int, tmp: Path) -> dict[str, Any]:
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    loads: dict[str, list[float]] = {label: [] for label, _ in rows}
    steps: dict[str, dict[str, list[float]]] = {label: {"with": [], "without": []} for label, _ in rows}
    graphs = {label: graph_path(folder, load_manifest(folder), CPU_PROVIDER) for label, folder in rows}
    dropped = {}
    for i, (label, _) in enumerate(rows):
        (tmp / str(i)).mkdir()
        dropped[label] = without_offset_term(graphs[label], tmp / str(i))
    for _ in range(rounds):
        for label, folder in rows:  # one model loaded at a time: an idle session's spinning threads steal cores
            t0 = time.perf_counter()
            model = Model(folder, threads=threads)
            loads[label].append(time.perf_counter() - t0)
            rates[label].append(decode_rate(model, rounds=1))
            del model
            steps[label]["with"].append(step_ms(graphs[label], threads))
            steps[label]["without"].append(step_ms(dropped[label], threads))
    out: dict[str, Any] = {}
    for label, folder in rows:
        model = Model(folder, threads=threads)
        with_term, without = (statistics.median(steps[label][k]) for k in ("with", "without"))
        out[label] = {"package": folder, "load_s": statistics.median(loads[label]),
                      "tokens_per_s": statistics.median(rates[label]), "tokens_per_s_rounds": rates[label],
                      "step_ms": {"with_offset_term": with_term, "without": without, "offset_term": with_term - without},
                      "python": python_overhead(model), **op_profile(folder, threads)}
        del model
    return out


def print_report(results: dict[str, Any], threads: int, rounds: int) -> None:
    print(f"{os.cpu_count()} cores, {threads} threads, load average (1 min) {os.getloadavg()[0]:.2f}; tok/s and load: "
          f"medians of {rounds} interleaved rounds; op times: onnxruntime profiler, per decode step")
    for label, r in results.items():
        d, p = r["decode"], r["python"]
        print(f"\n== {label}: {r['package']} ({r['graph']})")
        print(f"decode {r['tokens_per_s']:.1f} tok/s (rounds {', '.join(f'{x:.1f}' for x in r['tokens_per_s_rounds'])}); "
              f"load {r['load_s']:.2f} s")
        print(f"profiled step: wall {d['wall_us']:.0f} us, kernels {d['kernel_us']:.0f} us, between kernels "
              f"{d['overhead_us']:.0f} us, {d['nodes']:.0f} nodes")
        t, st = d["offset_term"], r["step_ms"]
        print(f"block-offset term: {t['nodes']:.0f} nodes, {t['us']:.0f} us = {100 * t['us'] / d['kernel_us']:.1f}% "
              f"of kernel time; unprofiled step {st['with_offset_term']:.2f} ms, {st['without']:.2f} ms without it: "
              f"{st['offset_term']:.2f} ms ({100 * st['offset_term'] / st['with_offset_term']:.0f}%)")
        print(f"{'op type':<34} {'us/step':>8} {'share':>6} {'nodes':>6}")
        for op, v in d["ops"].items():
            print(f"{op:<34} {v['us']:>8.0f} {100 * v['us'] / d['kernel_us']:>5.1f}% {v['nodes']:>6.0f}")
        print(f"{'by role':<34} {'us/step':>8} {'share':>6} {'nodes':>6}")
        for role, v in d["roles"].items():
            print(f"{role:<34} {v['us']:>8.0f} {100 * v['us'] / d['kernel_us']:>5.1f}% {v['nodes']:>6.0f}")
        print(f"Python: generate_ids gap {p['generate_gap_ms']:.2f} ms, Decoder.forward {p['forward_ms']:.2f} ms, bare "
              f"run {p['run_ms']:.2f} ms -> {p['python_per_step_ms']:.2f} ms per step outside onnxruntime")
        print("sampled main thread (share of samples): " + "; ".join(f"{w} {100 * s:.0f}%" for w, s in p["samples"].items()))
        one = r["k_rows"][1]["wall_us"]
        print(f"{'k rows':>6} {'pass ms':>8} {'vs 1 row':>9} {'MatMulNBits us':>15} {'offset term us':>15}")
        for k, v in r["k_rows"].items():
            print(f"{k:>6} {v['wall_us'] / 1e3:>8.2f} {v['wall_us'] / one:>8.2f}x {v['matmulnbits_us']:>15.0f} "
                  f"{v['offset_term_us']:>15.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", action="append", required=True, help="label,package")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", dest="json_out", default=None, help="Write the results as JSON here too.")
    args = parser.parse_args()
    rows = [tuple(r.split(",", 1)) for r in args.row]
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(rows, args.threads, args.rounds, Path(tmp))  # type: ignore[arg-type]
    print_report(results, args.threads, args.rounds)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
