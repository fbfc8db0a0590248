"""One onnxruntime session over the decoder graph, with the KV cache kept in place.

The cache is one preallocated buffer per layer ([1, kv_heads, max_length, head_dim]) bound as
both the past input and the present output of GroupQueryAttention, which writes the new keys and
values into it: no step copies the cache. Its valid length is just a number here, so rolling
back (speculative decoding) costs nothing.

Sessions are thread-safe and shared; a cache and its IOBinding belong to one sequence at a time. A loaded
model therefore keeps its caches in a `StatePool`: each generation checks one out and gives it back.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import onnxruntime as ort
from edgekit.runtime.coverage import report_coverage
from edgekit.runtime.providers import create_session

from edgekit.errors import EdgekitError, first_line

State = TypeVar("State")


CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class SessionSettings:
    provider: str = CPU_PROVIDER
    threads: int = 0  # 0: onnxruntime's default (one per physical core)
    spinning: bool = True  # turn off when several sessions take turns on few cores


def make_session(graph: Path, settings: SessionSettings) -> ort.InferenceSession:
    """An onnxruntime session over a package's graph file (its external weights resolved beside it)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.threads:
        so.intra_op_num_threads = settings.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    so.log_severity_level = 3
    try:
        session = create_session(graph, so, settings.provider)
    except EdgekitError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types, with multi-line messages
        if settings.provider != CPU_PROVIDER:  # the graph may be sound and the provider unable to compile it
            cpu = make_session(graph, replace(settings, provider=CPU_PROVIDER))
            print(f"edgekit: {settings.provider} could not take this graph ({first_line(exc)}); running it on "
                  f"{CPU_PROVIDER}", file=sys.stderr)
            return cpu
        raise EdgekitError(f"corrupt package: onnxruntime cannot load this graph ({first_line(exc)})", graph) from exc
    report_coverage(graph, settings.provider)
    return session


@contextmanager
def graph_failures(total: int) -> Iterator[None]:
    """onnxruntime's own error types, raised by a graph at odds with its manifest (damaged), as one line."""
    try:
        yield
    except Exception as exc:
        raise EdgekitError(f"corrupt package: the graph failed at {total} tokens ({first_line(exc)})") from exc


def check_room(total: int, max_length: int) -> None:
    if total > max_length:
        raise EdgekitError(f"context full: {total} tokens exceed the maximum length {max_length}")


def cache_shapes(session: ort.InferenceSession) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) of each layer's cache, read from the graph's `past_key_values.{i}.key` inputs."""
    shapes = {i.name: i.shape for i in session.get_inputs()}
    out = []
    while f"past_key_values.{len(out)}.key" in shapes:
        _, heads, _, dim = shapes[f"past_key_values.{len(out)}.key"]
        out.append((int(heads), int(dim)))
    return out


class CacheLength:
    """A KV cache's valid length: rolling back (speculative decoding) only shortens it, and the next step
    overwrites or drops what lay past it."""

    length: int

    def rollback(self, length: int) -> None:
        """Forget cached tokens past `length`."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self.length}")
        self.length = length


class Decoder(CacheLength):
    """forward(ids) appends tokens to the cache and returns logits; `length` is the cache's valid length.

    `wide_session`, if given, runs the passes of more than one token (prompt prefill, speculative verify)
    on the same cache buffers: a session over float32 weights, whose GEMM costs about what one token
    costs, where MatMulNBits' multi-token path costs several one-token passes (runtime.generator)."""

    def __init__(self, session: ort.InferenceSession, max_length: int,
                 wide_session: ort.InferenceSession | None = None):
        self.session = session
        self.max_length = max_length
        self.length = 0
        device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        self.layers = cache_shapes(session)
        # Zero-filled: GQA reads whole cache blocks, and stale NaNs in unused slots would leak in.
        self._cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, max_length, dim), np.float32), device, 0)
                       for heads, dim in self.layers for _ in range(2)]
        self._bindings = [(session, self._bind(session))]
        if wide_session is not None:
            self._bindings.append((wide_session, self._bind(wide_session)))

    def _bind(self, session: ort.InferenceSession) -> ort.IOBinding:
        binding = session.io_binding()
        binding.bind_output("logits")  # bound first so it is output 0; rebinding a name later keeps its place
        for i in range(len(self.layers)):
            for j, kind in enumerate(("key", "value")):
                buf = self._cache[2 * i + j]
                binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", buf)
                binding.bind_ortvalue_output(f"present.{i}.{kind}", buf)
        return binding

    def forward(self, ids: np.ndarray | list[int], n_logits: int = 1) -> np.ndarray:
        """Run `ids` (new tokens) after the cached ones; logits float32 [n_logits, vocab] for the last positions."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        s = ids.shape[1]
        total = self.length + s
        check_room(total, self.max_length)
        session, b = self._bindings[-1] if s > 1 else self._bindings[0]
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        b.bind_cpu_input("logits_from", np.array([s - min(n_logits, s)], np.int64))
        b.bind_output("logits")
        with graph_failures(total):
            session.run_with_iobinding(b)
        self.length = total
        return b.get_outputs()[0].numpy()[0]

    def reset(self) -> None:
        self.length = 0


@dataclass
class SequenceCaches:
    """One sequence's caches: the target's (bound to its wide session too, if any) and the draft model's."""

    target: Decoder
    draft: Decoder | None = None


class StatePool(Generic[State]):
    """Per-sequence states (KV caches with their bindings) handed out one generation at a time.

    A state is made by `make` when none is idle, so as many exist as sequences run at once (there is no
    upper bound: a bound would deadlock two interleaved generators of one thread). When a state comes back,
    at most `max_idle` are kept for the next generations and the rest are freed: SmolLM2-135M's cache at
    max_length 2048 is 30 layers x 2 x 3 heads x 2048 x 64 x 4 B = 94 MB. Thread-safe."""

    def __init__(self, make: Callable[[], State], max_idle: int = 1):
        if max_idle < 0:
            raise ValueError(f"max_idle must be >= 0, got {max_idle}")
        self._make = make
        self.max_idle = max_idle
        self._idle: list[State] = []
        self._lock = threading.Lock()
        self.in_use = 0  # states checked out now
        self.created = 0  # states made so far

    @property
    def idle(self) -> int:
        return len(self._idle)

    def acquire(self) -> State:
        with self._lock:
            self.in_use += 1
            if self._idle:
                return self._idle.pop()
            self.created += 1
        try:
            return self._make()  # outside the lock: allocating a cache takes a while
        except BaseException:
            with self._lock:
                self.in_use -= 1
            raise

    def release(self, state: State) -> None:
        with self._lock:
            self.in_use -= 1
            if len(self._idle) < self.max_idle:
                self._idle.append(state)

    @contextmanager
    def checkout(self) -> Iterator[State]:
        state = self.acquire()
        try:
            yield state
        finally:
            self.release(state)
