"""Quality per byte: SmolLM2-135M re-quantized by edgekit and by ONNX Runtime's own quantizer, in one run.

Usage: python benchmarks/quality.py [--rows NAME,NAME,...] [--chars N] [--out PREFIX]
(results in ~/.cache/edgekit/results/quality-latest.{txt,json} unless --out benchmarks/results/quality-latest)

The reference is the float32 model dequantized from the shipped GGUF (PyTorch, CPU). Every row is a
package run by the edgekit runtime (exact mode) on the same text, Python's own pydoc topics (40,000
characters, 512-token windows): perplexity, mean KL(reference || row) per token, top-1 agreement with the
reference, bits per projection weight as stored (codes + scales + offsets / zero points), size on disk
and decode tokens/s (64 tokens after a 128-token prompt, median of 3 rounds, 2 threads).

ONNX Runtime rows: `MatMulNBitsQuantizer` (RTN = its default quantizer, HQQ, GPTQ with our calibration
windows) applied to the same graph with float32 projections and the same 8-bit embedding / tied output
layer as the edgekit rows, so the rows differ only in how the projections are quantized. ONNX Runtime
has no 3-bit format, so it has no int3 rows. Needs the `bench` extra (`pip install -e ".[bench]"`: onnx-ir
for the ORT quantizer). About 55 minutes on 2 cores.

Calibration: edgekit's default, text the model generates itself, except in the rows marked "held-out": those
calibrate on pydoc text disjoint from the evaluated characters (edgekit.evaltext.held_out_text). "+tune100":
GPTQ then 100 steps of end-to-end distillation of group scales and norm weights (`--tune-steps 100`).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from edgekit.exporters.pipeline import PackageContents, build_graph, export, prepare, write_package
from edgekit.exporters.quantize import GridFormat, QuantConfig
from edgekit.exporters.quantize.rtn import quantize_rtn
from edgekit.exporters.quantize.source import QuantizedSource, float_weight, tensor_names
from edgekit.exporters.quantize.spec import CalibrationConfig, embedding_format
from edgekit.exporters.reference import TorchReference
from edgekit.runtime import Model
from edgekit.runtime.bench import decode_rate
from edgekit.runtime.bench_common import size_on_disk_mb
from harness import add_out_option, gguf_path, write_results

from edgekit.evaltext import HELD_OUT_START, default_text, held_out_text, log_softmax, windows
from edgekit.package import GRAPH_FILE, WEIGHTS_FILE
from edgekit.recipe import Recipe

GGUF = gguf_path()
GROUP = 128
THREADS = 2


def log(message: str) -> None:
    print(f"[quality] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    name: str
    who: str  # "edgekit" or "onnxruntime"
    ppl: float
    kl: float
    top1: float
    bits_per_weight: float
    size_mb: float
    tokens_per_s: float
    seconds_to_build: float
    error: str | None = None  # a row that could not be built or run: why, in one line


# -- the reference and the scoring -------------------------------------------------------------------
class Reference:
    """The float32 model's log-probabilities on every evaluation window (float16 to hold them all)."""

    def __init__(self, chars: int):
        self.torch = TorchReference(str(GGUF), "cpu")
        self.model = self.torch.model
        model = Model(export_default(), threads=THREADS)  # its tokenizer: the one every package carries
        self.windows = list(windows(model.codec.encode(default_text(chars))))
        self.logp = [log_softmax(self.torch.logits(w)[:-1]).astype(np.float16) for w in self.windows]
        self.ppl = self._ppl([lp for lp in self.logp])

    def _ppl(self, logps: list[np.ndarray]) -> float:
        nll = np.concatenate([-lp[np.arange(len(w) - 1), w[1:]] for lp, w in zip(logps, self.windows)])
        return float(np.exp(nll.astype(np.float64).mean()))

    def score(self, model: Model) -> tuple[float, float, float]:
        """(perplexity, KL(reference || model) per token, top-1 agreement) of a loaded package."""
        logps, kls, agree = [], [], []
        for w, ref in zip(self.windows, self.logp):
            lq = log_softmax(model.logits(w)[:-1])
            lp = ref.astype(np.float64)
            kls.append((np.exp(lp) * (lp - lq)).sum(-1))
            agree.append(lp.argmax(-1) == lq.argmax(-1))
            logps.append(lq)
        return self._ppl(logps), float(np.concatenate(kls).mean()), float(np.concatenate(agree).mean())


# -- packages --------------------------------------------------------------------------------------------
WORK = Path(tempfile.mkdtemp(prefix="edgekit-quality-"))


def export_default() -> Path:
    out = WORK / "gguf"
    if not out.exists():
        export(str(GGUF), out)
    return out


def edgekit_package(name: str, quant: QuantConfig | None) -> tuple[Path, float]:
    """An edgekit export of the GGUF (re-quantized by `quant`) and its stored bits per projection weight."""
    out = WORK / name
    manifest = export(str(GGUF), out, quant=quant)
    bpw = manifest.data["recipe"].get("bits_per_weight") or 5.0  # the GGUF's Q4_1: 4 bits + 2 float16 per 32
    return out, bpw


def float_projection_contents() -> PackageContents:
    """The GGUF with float32 projections and the edgekit rows' 8-bit embedding / tied output layer: the graph
    ONNX Runtime's quantizer gets, so that only the projections' quantization differs between rows."""
    contents = prepare(str(GGUF))
    source = contents.source
    weights = {n: float_weight(source, n) for n in tensor_names(source) if n.startswith("layers.")}
    weights["embed"] = quantize_rtn(float_weight(source, "embed"), embedding_format(GridFormat(4, GROUP)))
    floats = QuantizedSource(source, weights, Recipe(method="float projections"))  # type: ignore[arg-type]
    return PackageContents(floats, build_graph(floats), contents.tokenizer, contents.tok_info, str(GGUF),
                           contents.targets)


def matmulnbits_bpw(model: onnx.ModelProto) -> float:
    """Stored bits per weight of the MatMulNBits projections (packed codes, scales, zero points)."""
    inits = {t.name: t for t in model.graph.initializer}
    bits = weights = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            weights += attrs["K"] * attrs["N"]
            for name in node.input[1:]:
                if name in inits:
                    t = inits[name]
                    bits += 8 * int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return bits / weights


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over edgekit's self-generated calibration windows: prefill feeds
    for the edgekit graph (empty KV cache buffers of the window's length)."""

    def __init__(self, windows: np.ndarray, config: object):
        self.feeds = []
        for w in windows:
            n = len(w)
            feed = {"input_ids": w[None].astype(np.int64), "seqlens_k": np.array([n - 1], np.int32),
                    "total_sequence_length": np.array(n, np.int32), "logits_from": np.array([n - 1], np.int64)}
            for i in range(config.num_layers):  # type: ignore[attr-defined]
                for kind in ("key", "value"):
                    feed[f"past_key_values.{i}.{kind}"] = np.zeros(
                        (1, config.num_kv_heads, n, config.head_dim), np.float32)  # type: ignore[attr-defined]
            self.feeds.append(feed)
        self.it = iter(self.feeds)

    def get_next(self) -> dict | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.feeds)

    def __iter__(self):  # ORT's GPTQ path iterates a deep copy
        return iter(self.feeds)


def ort_package(name: str, algo: str, group: int, calibration: np.ndarray | None) -> tuple[Path, float]:
    """The float-projection graph quantized by ONNX Runtime's MatMulNBitsQuantizer (int4, asymmetric)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    contents = float_projection_contents()
    model = contents.built.model
    configs: dict[str, Callable[[], object]] = {
        "rtn": lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=group, is_symmetric=False),
        "hqq": lambda: mnq.HQQWeightOnlyQuantConfig(block_size=group, bits=4),
        "gptq": lambda: mnq.GPTQWeightOnlyQuantConfig(CalibrationReader(calibration, contents.source.config),
                                                      block_size=group, actorder=True),
    }
    quantizer = mnq.MatMulNBitsQuantizer(model, block_size=group, is_symmetric=False, algo_config=configs[algo]())
    quantizer.process()
    quantized = quantizer.model.model
    out = WORK / name
    write_package(replace(contents, targets=()), out)  # the portable graph only: ORT's graph replaces it
    onnx.save_model(quantized, str(out / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE, size_threshold=1024)
    return out, matmulnbits_bpw(quantized)


@functools.cache
def calibration_windows() -> np.ndarray:
    """The self-generated calibration text edgekit's GPTQ uses (same seed), for ORT's GPTQ."""
    from edgekit.exporters.quantize.calibration import calibration_windows as generate
    from edgekit.exporters.sources import open_source, source_tokenizer

    tokenizer, _ = source_tokenizer(open_source(str(GGUF)))
    return generate(TorchReference(str(GGUF), "cpu").model, tokenizer, CalibrationConfig())


def fmt(bits: int, sym: bool = False) -> GridFormat:
    return GridFormat(bits, GROUP, sym)


# Calibration on held-out text of the evaluation's kind (pydoc, disjoint from the evaluated characters), as
# WikiText's train split calibrates for its test split; the other data-aware rows use the default, self-generated text.
HELD_OUT = CalibrationConfig(file=WORK / "held-out.txt")
TUNE = 100
EDGEKIT_ROWS: dict[str, QuantConfig | None] = {
    "GGUF Q4_1 as shipped (g32)": None,
    "int8 g128 RTN": QuantConfig(fmt(8)),
    "int4 g32 RTN": QuantConfig(GridFormat(4, 32)),
    "int4 g128 RTN": QuantConfig(fmt(4)),
    "int4 g128 GPTQ": QuantConfig(fmt(4), "gptq"),
    "int4 g64 GPTQ": QuantConfig(GridFormat(4, 64), "gptq"),
    "int3 g128 RTN": QuantConfig(fmt(3)),
    "int3 g128 GPTQ": QuantConfig(fmt(3), "gptq"),
    "int2 g128 GPTQ": QuantConfig(fmt(2), "gptq"),
    "int3 g64 GPTQ": QuantConfig(GridFormat(3, 64), "gptq"),
    "mixed 3.5 bpw GPTQ": QuantConfig(None, "gptq", target_bpw=3.5, group_size=GROUP),
    f"int4 g128 GPTQ+tune{TUNE}": QuantConfig(fmt(4), "gptq", tune_steps=TUNE),
    "int4 g128 GPTQ, held-out": QuantConfig(fmt(4), "gptq", HELD_OUT),
    f"int4 g128 GPTQ+tune{TUNE}, held-out": QuantConfig(fmt(4), "gptq", HELD_OUT, tune_steps=TUNE),
    f"int3 g128 GPTQ+tune{TUNE}, held-out": QuantConfig(fmt(3), "gptq", HELD_OUT, tune_steps=TUNE),
}
ORT_ROWS = {"ORT int4 g128 RTN": ("rtn", GROUP), "ORT int4 g128 HQQ": ("hqq", GROUP),
            "ORT int4 g128 GPTQ": ("gptq", GROUP), "ORT int4 g64 GPTQ": ("gptq", 64)}


def measure_row(name: str, ref: Reference) -> Row:
    """Build one row's package, score it against the reference, time its decoding; the package is removed."""
    t0 = time.perf_counter()
    if name in EDGEKIT_ROWS:
        folder, bpw = edgekit_package(name.replace(" ", "_"), EDGEKIT_ROWS[name])
    else:
        algo, group = ORT_ROWS[name]
        folder, bpw = ort_package(name.replace(" ", "_"), algo, group, calibration_windows() if algo == "gptq" else None)
    built = time.perf_counter() - t0
    try:
        model = Model(folder, threads=THREADS, verify=name in EDGEKIT_ROWS)
        ppl, kl, top1 = ref.score(model)
        row = Row(name, "onnxruntime" if name in ORT_ROWS else "edgekit", ppl, kl, top1, bpw, size_on_disk_mb(folder),
                  decode_rate(model), built)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log(f"{name}: perplexity {ppl:.3f}, KL {kl:.4f}, top-1 {top1:.1%}, {bpw:.3f} bpw")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--chars", type=int, default=40_000)
    add_out_option(parser, "quality")
    args = parser.parse_args()
    if args.chars > HELD_OUT_START:
        parser.error(f"--chars {args.chars} would overlap the held-out calibration text (from {HELD_OUT_START})")
    wanted = set(args.rows.split(",")) if args.rows else set(EDGEKIT_ROWS) | set(ORT_ROWS)
    log(f"packages under {WORK}")
    assert HELD_OUT.file is not None
    HELD_OUT.file.write_text(held_out_text())
    ref = Reference(args.chars)
    log(f"reference perplexity {ref.ppl:.4f} on {sum(len(w) for w in ref.windows)} tokens")
    rows: list[Row] = []
    for name in [*EDGEKIT_ROWS, *ORT_ROWS]:
        if name not in wanted:
            continue
        log(f"building {name}")
        try:
            rows.append(measure_row(name, ref))
        except Exception as exc:  # noqa: BLE001  # a peer's quantizer may fail on this model: the table says how
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            log(f"{name}: FAILED ({message})")
            rows.append(Row(name, "onnxruntime" if name in ORT_ROWS else "edgekit", *[float("nan")] * 7, message))
    text = table(ref, rows)
    print(text)
    write_results(args.out, text, {"reference_ppl": ref.ppl, "rows": [asdict(r) for r in rows]})


def table(ref: Reference, rows: list[Row]) -> str:
    import platform

    tokens = sum(len(w) for w in ref.windows)
    lines = [(f"Quality per byte, SmolLM2-135M-Instruct on {platform.machine()}: reference float32 (dequantized GGUF) "
             f"perplexity {ref.ppl:.4f} on {tokens} tokens of pydoc text, 512-token windows; edgekit runtime, exact "
             f"mode, {THREADS} threads. Embedding and tied output layer int8 g{min(GROUP, 64)} in every re-quantized row."),
             "",
             (f"{'row':34s} {'perplexity':>10s} {'vs fp32':>8s} {'KL':>7s} {'top-1':>6s} {'bpw':>6s} "
             f"{'MB':>6s} {'tok/s':>6s} {'build s':>7s}"),
             "-" * 98]
    for r in rows:
        if r.error:
            lines.append(f"{r.name:34s} failed: {r.error}")
            continue
        lines.append(f"{r.name:34s} {r.ppl:10.3f} {r.ppl / ref.ppl - 1:+8.1%} {r.kl:7.4f} {r.top1:6.1%} "
                     f"{r.bits_per_weight:6.3f} {r.size_mb:6.1f} {r.tokens_per_s:6.1f} {r.seconds_to_build:7.0f}")
    lines += ["", ("bpw: stored bits per projection weight (codes, float16 scales and offsets or packed zero points); "
              "KL: mean KL(reference || row) in nats per token; top-1: agreement of the argmax with the reference's.")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
