"""Multi-row passes (issue 14, item 3): what one pass of k rows costs on each candidate path, and how exact it is.

    python benchmarks/multirow.py --out benchmarks/results/multirow-latest [--pkg PKG] [--rounds 3]

A pass of k rows (k = 1, 2, 3, 5, 9) continues a 128-token prompt in the KV cache, as a speculative verify pass
does: the next k tokens of the evaluation text. Every candidate runs in fresh worker processes (so each has its
own peak RSS), one worker per candidate per round, candidates interleaved round by round; ms are medians over
all rounds' repetitions. The package defaults to a fresh `edgekit export smollm2-135m` in the cache.

Table 1, the whole package per path: stock CPU EP on the exact graph (model.cpu.onnx, the baseline); float32
weights for passes of several tokens (`Model(float_passes=True)`: 1-row passes stay on the exact graph); the
OpenVINO EP plugin (peer `openvino`: its library is registered into this onnxruntime) on the graph the runtime
picks for it, inference precision f32; onnxruntime-ggml (peer `ggml`, onnxruntime<1.31) on model.cpu.onnx.
  ms           median wall ms of one pass (Decoder.forward of k tokens, logits of all k rows)
  x own 1      ms / the same path's 1-row ms
  x stock 1    ms / the stock exact path's 1-row ms (issue 14's target: <= 1.5 at k = 5)
  RSS MiB      the worker process's peak RSS (load included) / final RSS / final RSS after glibc's malloc_trim(0)
               (onnxruntime's constant folding leaves freed memory that glibc keeps)
  max|dlogit|  max |logit difference| over the k rows against the stock exact graph run one token at a time
  argmax       rows whose argmax matches that reference, of k

Table 2, the package's projections alone (microbench): one graph holding every MatMulNBits of the package
(30 layers of qkv, o, gate_up, down and the head, shapes K x N read from model.cpu.onnx) with fresh random 4-bit
weights, at each accuracy_level and block size; and the same shapes as float32 / float16 MatMul on the CPU EP
and on ggml (float32 weights kept float32; its OpenMP threads wait passively: spinning at every op's barrier,
they made a pass ~1 s on a 2-core machine with a core taken). One run of the graph with k rows per input is one
pass's projections.
  1-row ms, x own 1 @k  median ms of a 1-row run; a k-row run / the 1-row run
  x stock 1 @5          a 5-row run / the stock exact path's whole 1-row pass (projections only: a lower bound)
  est @5                estimated whole 5-row pass / stock 1-row pass: stock pass(5) - MatMulNBits L0 b32(5) + this(5)
  rel err               max |y - x.W| / max |x.W| over layer 0's projections and the head (float64 reference,
                        k = 9); level 4 quantizes activations to int8, float16 rounds weights and activations
  argmax                head rows (k = 9) whose argmax matches the float64 reference
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    LoadMeter,
    add_out_option,
    cache_dir,
    default_peers,
    fmt,
    format_table,
    logger,
    peer_python,
    run_worker,
    worker_main,
    write_results,
)

KS = (1, 2, 3, 5, 9)
PROMPT = 128
LEVELS = (0, 1, 2, 4)
BLOCKS = (16, 32, 64, 128)
OPENVINO_OPTIONS = {"device_type": "CPU", "precision": "FP32"}  # f32 inference, not OpenVINO's bf16/f16 default
PACKAGE_PATHS = {"stock": "stock CPU EP, exact graph", "float": "float32 weights for k > 1",
                 "openvino": "OpenVINO EP plugin, f32", "ggml": "onnxruntime-ggml"}
log = logger("multirow")


# -- workers (any venv: numpy and onnxruntime at most) ---------------------------------------------------------

def rss_mib() -> dict[str, float]:
    """This process's peak and current RSS (VmHWM, VmRSS: getrusage's ru_maxrss would carry the driver's peak
    over fork + exec), and the current one once glibc has returned the free memory it keeps (malloc_trim)."""
    def read(field: str) -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    out = {"peak": read("VmHWM"), "end": read("VmRSS")}
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        out["trimmed"] = read("VmRSS")
    return out


def timed(run: Any, ks: tuple[int, ...], reps: int) -> dict[int, list[float]]:
    """ms of run(k) per k: `reps` runs after one warm-up run of each k (a provider may compile per shape)."""
    ms: dict[int, list[float]] = {k: [] for k in ks}
    for k in ks:
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            run(k)
            if rep:
                ms[k].append((time.perf_counter() - t0) * 1e3)
    return ms


def package_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Passes of k rows after a PROMPT-token prefill on the package; the logits go to spec["save"] (.npz)."""
    import onnxruntime as ort
    from edgekit.runtime import Model
    from edgekit.runtime.decoder import Decoder
    from edgekit.runtime.loader import graph_path, load_manifest
    from edgekit.runtime.providers import PROVIDER_NAMES, plugin_devices

    ids, threads, length = spec["ids"], spec["threads"], PROMPT + 2 * max(KS)
    if spec["mode"] == "openvino":
        if not Path(spec["site"]).is_dir():
            raise RuntimeError("not installed (bash benchmarks/setup_peers.sh openvino)")
        sys.path.append(spec["site"])  # the plugin's module, from its peer venv (same onnxruntime version)
        provider = PROVIDER_NAMES["openvino"]
        devices = plugin_devices(provider)
        if not devices:
            cpu = next(d.device for d in ort.get_ep_devices() if d.ep_name == "CPUExecutionProvider")
            raise RuntimeError(f"the plugin registers but offers no device: its factory takes Intel hardware only "
                               f"(vendor id 0x8086), this CPU is {cpu.vendor} ({cpu.vendor_id:#x})")
        graph = graph_path(spec["pkg"], load_manifest(spec["pkg"]), provider)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_provider_for_devices(devices, OPENVINO_OPTIONS)
        decoder = Decoder(ort.InferenceSession(str(graph), so), length)
    else:
        model = Model(spec["pkg"], threads=threads, max_length=length, float_passes=spec["mode"] == "float")
        decoder, graph = model.decoder, graph_path(spec["pkg"], model.manifest, "CPUExecutionProvider")
    decoder.forward(ids[:PROMPT])
    logits: dict[str, np.ndarray] = {}
    if spec["mode"] == "stock":  # the reference: one token at a time
        logits["ref"] = np.stack([decoder.forward([t])[0].copy() for t in ids[PROMPT:]])
        decoder.rollback(PROMPT)

    def run(k: int) -> None:
        logits[str(k)] = decoder.forward(ids[PROMPT:PROMPT + k], n_logits=k).copy()
        decoder.rollback(PROMPT)

    ms = timed(run, KS, spec["reps"])
    np.savez(spec["save"], **logits)
    return {"ms": ms, "rss_mib": rss_mib(), "graph": Path(graph).name}


def ggml_package_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Whether ggml claims any node of the package's graph: its capability log line, captured from stderr."""
    import onnxruntime as ort
    os.environ.setdefault("ORT_GGML_LOG", "warn")
    import onnxruntime_ggml as ggml
    so = ggml.session_options({"device": "cpu", "threads": spec["threads"]})
    so.log_severity_level = 1
    with tempfile.TemporaryFile("w+") as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            session = ort.InferenceSession(spec["graph"], so)
        finally:
            os.dup2(saved, 2)
        captured.seek(0)
        lacks = re.findall(r"nodes use ops this provider lacks: ([^;]+); claiming nothing", captured.read())
    if lacks:
        raise RuntimeError(f"claims no node of {Path(spec['graph']).name}: it lacks {lacks[0]}")
    return {"providers": session.get_providers()}


def graph_job(spec: dict[str, Any]) -> dict[str, Any]:
    """k-row runs of a projections graph (inputs x<K> [k, K]); the k = 9 outputs of the probes to spec["save"]."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = spec["threads"]
    so.log_severity_level = 3
    if spec["provider"] == "ggml":
        os.environ.setdefault("ORT_GGML_LOG", "warn")  # its INFO lines would bury the progress lines
        import onnxruntime_ggml as ggml
        so = ggml.session_options({"device": "cpu", "threads": spec["threads"], **spec["ggml"]}, base=so)
    session = ort.InferenceSession(spec["path"], so, providers=None if spec["provider"] == "ggml" else
                                   ["CPUExecutionProvider"])
    feeds = {k: {i.name: probe_input(int(i.name[1:]))[:k] for i in session.get_inputs()} for k in KS}
    ms = timed(lambda k: session.run(None, feeds[k]), KS, spec["reps"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds[max(KS)])))
    np.savez(spec["save"], **{n: out[n] for n in spec["probes"]})
    return {"ms": ms, "rss_mib": rss_mib(), "providers": session.get_providers()}


def probe_input(k_dim: int) -> np.ndarray:
    """The activations a microbench feeds to a K-wide projection: [max(KS), K] float32, the same everywhere."""
    return np.random.default_rng(k_dim).standard_normal((max(KS), k_dim)).astype(np.float32)


# -- the driver (main venv) ------------------------------------------------------------------------------------

def projection_shapes(graph: Path) -> list[tuple[str, int, int]]:
    """(name, K, N) of every MatMulNBits in `graph`, named after its weight (`layers.0.qkv`, `embed`)."""
    import onnx
    model = onnx.load(str(graph), load_external_data=False)
    return [(n.input[1].removesuffix(".qweight"), *(next(a.i for a in n.attribute if a.name == key)
                                                  for key in ("K", "N")))
            for n in model.graph.node if n.op_type == "MatMulNBits"]


def projections_graph(shapes: list[tuple[str, int, int]], path: Path, kind: str, block: int = 32,
                      level: int = 0) -> dict[str, np.ndarray]:
    """Writes a graph of one projection per shape (kind: nbits, f32, f16) with weights seeded by name; returns
    the float64 reference outputs [max(KS), N] of the probes (layer 0's projections and the head)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, probes = [], [], {}
    for name, k_dim, n_dim in shapes:
        rng = np.random.default_rng(zlib.crc32(f"{name} {kind} {block}".encode()))
        out, x = f"y.{name}", f"x{k_dim}"
        if kind == "nbits":
            blocks = -(-k_dim // block)
            codes = rng.integers(0, 256, (n_dim, blocks, block // 2), dtype=np.uint8)
            scales = rng.uniform(0.001, 0.02, (n_dim, blocks)).astype(np.float32)
            zeros = np.zeros((n_dim, (blocks + 1) // 2), np.uint8)  # zero point 0, as the package's Q4_1 import
            inits += [numpy_helper.from_array(a, f"{name}.{s}") for a, s in ((codes, "q"), (scales, "s"), (zeros, "z"))]
            nodes.append(helper.make_node("MatMulNBits", [x, f"{name}.q", f"{name}.s", f"{name}.z"], [out],
                                          domain="com.microsoft", K=k_dim, N=n_dim, bits=4, block_size=block,
                                          accuracy_level=level))
            if name.startswith(("layers.0.", "embed")):
                nibbles = np.stack([codes & 15, codes >> 4], -1).reshape(n_dim, -1)[:, :k_dim]
                weight_t = nibbles * np.repeat(scales, block, 1)[:, :k_dim].astype(np.float64)
                probes[out] = probe_input(k_dim).astype(np.float64) @ weight_t.T
            continue
        weight = (rng.standard_normal((k_dim, n_dim)) * 0.05).astype(np.float32)
        if kind == "f16":
            inits.append(numpy_helper.from_array(weight.astype(np.float16), f"{name}.w"))
            nodes += [helper.make_node("Cast", [x], [f"{x}.{name}.h"], to=TensorProto.FLOAT16),
                      helper.make_node("MatMul", [f"{x}.{name}.h", f"{name}.w"], [f"{out}.h"]),
                      helper.make_node("Cast", [f"{out}.h"], [out], to=TensorProto.FLOAT)]
        else:
            inits.append(numpy_helper.from_array(weight, f"{name}.w"))
            nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [out]))
        if name.startswith(("layers.0.", "embed")):
            probes[out] = probe_input(k_dim).astype(np.float64) @ weight.astype(np.float64)
    widths = sorted({k for _, k, _ in shapes})
    graph = helper.make_graph(
        nodes, kind, [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["rows", k]) for k in widths],
        [helper.make_tensor_value_info(f"y.{name}", TensorProto.FLOAT, ["rows", n]) for name, _, n in shapes], inits)
    model = helper.make_model(graph, ir_version=10,  # onnxruntime 1.30 (the ggml peer) reads IR 10
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return probes


def rss(mib: dict[str, float]) -> str:
    return "/".join(fmt(mib.get(key), ".0f") for key in ("peak", "end", "trimmed"))


def verify_tokens(pkg: Path) -> list[int]:
    """The evaluation text's first PROMPT + max(KS) tokens: the prompt, then the tokens a pass verifies."""
    from edgekit.runtime import Model

    from edgekit.evaltext import default_text
    return [int(t) for t in Model(pkg).codec.encode(default_text())[:PROMPT + max(KS)]]


def head_width(shapes: list[tuple[str, int, int]]) -> int:
    """The float head's K: the package's 8-bit head runs as 4-bit nibble pairs over a doubled K."""
    return next(k for name, k, _ in shapes if name == "embed") // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pkg", type=Path, help="the package (default: a fresh export of smollm2-135m, cached)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5, help="passes per k per worker, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", type=Path, default=default_peers())
    add_out_option(parser, "multirow")
    args = parser.parse_args()
    pkg = args.pkg or cache_dir() / "multirow-pkg"
    if not (pkg / "manifest.json").exists():
        import subprocess
        subprocess.run(["edgekit", "export", "smollm2-135m", "-o", str(pkg)], check=True)
    ids = verify_tokens(pkg)
    script, main_python = str(Path(__file__).resolve()), Path(sys.executable)
    site = args.peers / "openvino" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-multirow-"))
    shapes = projection_shapes(pkg / "model.cpu.onnx")
    float_shapes = [(n, head_width(shapes) if n == "embed" else k, nn) for n, k, nn in shapes]
    base = {"threads": args.threads, "reps": args.reps}
    jobs: dict[str, tuple[Path, dict[str, Any]]] = {}  # label -> (python, spec)
    for mode in ("stock", "float", "openvino"):
        jobs[PACKAGE_PATHS[mode]] = main_python, {**base, "job": "package", "mode": mode, "pkg": str(pkg), "ids": ids,
                                    "site": str(site)}
    ggml_python = peer_python(args.peers, "ggml")
    jobs[PACKAGE_PATHS["ggml"]] = ggml_python, {**base, "job": "ggml_package", "graph": str(pkg / "model.cpu.onnx")}
    references: dict[str, dict[str, np.ndarray]] = {}
    log("writing the microbench graphs")
    for block in BLOCKS:
        for level in LEVELS:
            path = tmp / f"nbits-b{block}-l{level}.onnx"
            references[f"MatMulNBits L{level} b{block}"] = projections_graph(shapes, path, "nbits", block, level)
            jobs[f"MatMulNBits L{level} b{block}"] = main_python, {**base, "job": "graph", "path": str(path),
                                                                    "provider": "cpu"}
    for kind in ("f32", "f16"):
        path = tmp / f"{kind}.onnx"
        probes = projections_graph(float_shapes, path, kind)
        for provider, python in (("cpu", main_python), ("ggml", ggml_python)):
            label = f"MatMul {kind} ({'CPU EP' if provider == 'cpu' else 'ggml'})"
            references[label] = probes
            ggml = {"ggml": {"weights": kind}}  # else ggml turns float32 weights into float16
            jobs[label] = python, {**base, "job": "graph", "path": str(path), "provider": provider, **ggml}
    results: dict[str, dict[str, Any]] = {label: {"ms": {k: [] for k in KS}} for label in jobs}
    meter = LoadMeter()
    for r in range(args.rounds):
        for label, (python, spec) in jobs.items():
            if "error" in results[label]:
                continue
            log(f"round {r + 1}/{args.rounds}: {label}")
            save = tmp / f"{len(os.listdir(tmp))}.npz"
            try:
                if not python.exists():
                    raise RuntimeError(f"not installed (bash benchmarks/setup_peers.sh {python.parent.parent.name})")
                # ggml's OpenMP threads spin at each op's barrier: with a core taken a pass took ~1 s, not ~15 ms
                spec = {**spec, "save": str(save), "probes": sorted(references.get(label, {}))}
                done = run_worker(python, script, spec, spin=python != ggml_python)
            except RuntimeError as exc:
                results[label] = {"error": str(exc)}
                continue
            for k in KS:
                results[label]["ms"][k] += done["ms"][str(k)]
            results[label].update({key: v for key, v in done.items() if key != "ms"})  # RSS: the last round's
            with contextlib.suppress(FileNotFoundError), np.load(save) as saved:
                results[label]["arrays"] = {n: saved[n] for n in saved.files}
    load_note = meter.note()
    shutil.rmtree(tmp)
    table, report = tabulate(results, references)
    setup = f"{os.cpu_count()} cores, {args.threads} threads, {args.rounds} rounds x {args.reps} passes, package {pkg}"
    text = "\n".join([setup, load_note, "", *table])
    print(text)
    write_results(args.out, text, {"package": str(pkg), "ks": KS, "rounds": args.rounds, "reps": args.reps,
                                   "load": load_note, "results": report})


def tabulate(results: dict[str, dict[str, Any]],
             references: dict[str, dict[str, np.ndarray]]) -> tuple[list[str], dict[str, Any]]:
    """The two tables (see the module docstring) and the JSON report."""
    med = {label: {k: statistics.median(r["ms"][k]) for k in KS} for label, r in results.items() if "error" not in r}
    stock = PACKAGE_PATHS["stock"]
    ref = results[stock]["arrays"]["ref"] if stock in med else None
    one = med.get(stock, {}).get(1)
    report: dict[str, Any] = {}
    rows1: list[list[str]] = []
    rows2: list[list[str]] = []
    for label, r in results.items():
        entry = report[label] = {key: v for key, v in r.items() if key != "arrays"}
        package = label in PACKAGE_PATHS.values()
        if "error" in r:
            (rows1 if package else rows2).append([label, r["error"]])
            continue
        m = entry["median_ms"] = med[label]
        if package:
            for k in KS:
                got = r["arrays"][str(k)]
                diff = float(np.abs(got - ref[:k]).max()) if ref is not None else None
                same = int((got.argmax(1) == ref[:k].argmax(1)).sum()) if ref is not None else None
                entry.setdefault("exact", {})[k] = {"max_abs_logit_diff": diff, "argmax_same": same}
                rows1.append([label, str(k), fmt(m[k], ".2f"), fmt(m[k] / m[1], ".2f", "x"),
                              fmt(m[k] / one if one else None, ".2f", "x"), rss(r["rss_mib"]),
                              fmt(diff, ".2e"), f"{same}/{k}" if same is not None else "n/a"])
            continue
        arrays, probes = r["arrays"], references[label]
        err = max(float(np.abs(arrays[n] - y).max() / np.abs(y).max()) for n, y in probes.items())
        same = int((arrays["y.embed"].argmax(1) == probes["y.embed"].argmax(1)).sum())
        base = med.get("MatMulNBits L0 b32")
        est = (med[stock][5] - base[5] + m[5]) / one if one and base else None
        entry.update(rel_err=err, head_argmax_same=same, est_pass5_vs_stock1=est)
        rows2.append([label, fmt(m[1], ".2f"), *(fmt(m[k] / m[1], ".2f", "x") for k in KS[1:]),
                      fmt(m[5] / one if one else None, ".2f", "x"), fmt(est, ".2f", "x"), rss(r["rss_mib"]),
                      f"{err:.1e}", f"{same}/{max(KS)}"])
    head1 = ["path", "k", "ms", "x own 1", "x stock 1", "RSS MiB peak/end/trim", "max|dlogit|", "argmax"]
    head2 = ["projections", "1-row ms", *(f"x own 1 @{k}" for k in KS[1:]), "x stock 1 @5", "est @5",
             "RSS MiB peak/end/trim", "rel err", "argmax"]
    return ["Whole package, one pass of k rows after a 128-token prompt", *format_table(head1, rows1, 1), "",
            "Projections alone (every MatMulNBits shape of the package, fresh random weights)",
            *format_table(head2, rows2, 1)], report


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker_main({"package": package_job, "ggml_package": ggml_package_job, "graph": graph_job})
    else:
        main()
