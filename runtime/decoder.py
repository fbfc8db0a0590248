"""One onnxruntime session over the decoder graph, with the KV cache kept in place.

The cache is one preallocated buffer per layer ([1, kv_heads, max_length, head_dim]) bound as
both the past input and the present output of GroupQueryAttention, which writes the new keys and
values into it: no step copies the cache. Its valid length is just a number here, so rolling
back (speculative decoding) costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgekit.errors import EdgekitError
from edgekit.model_config import ModelConfig


@dataclass(frozen=True)
class SessionSettings:
    provider: str = "CPUExecutionProvider"
    threads: int = 0  # 0: onnxruntime's default (one per physical core)
    spinning: bool = True  # turn off when several sessions take turns on few cores


def _hand_over_initializers(model: onnx.ModelProto, so: ort.SessionOptions) -> list[np.ndarray]:
    """Move large initializers out of the protobuf into OrtValues given to the session directly.

    Serializing the model with its weights would hold a second full copy in memory at load time (and
    stop at protobuf's 2 GB limit). The returned arrays back the OrtValues and must outlive the session."""
    names, values, arrays = [], [], []
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) >= 1024:
            a = numpy_helper.to_array(t)
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for key, value in (("location", "edgekit-in-memory"), ("offset", "0"), ("length", str(a.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(a))
            arrays.append(a)
    so.add_external_initializers(names, values)
    return arrays


def make_session(model: onnx.ModelProto, settings: SessionSettings) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.threads:
        so.intra_op_num_threads = settings.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    so.log_severity_level = 3
    arrays = _hand_over_initializers(model, so)
    session = ort.InferenceSession(model.SerializeToString(), so, providers=[settings.provider])
    session.edgekit_weights = arrays  # type: ignore[attr-defined]  # keeps the OrtValues' memory alive
    return session


class Decoder:
    """forward(ids) appends tokens to the cache and returns logits; `length` is the cache's valid length.

    `wide_session`, if given, runs the passes of more than one token (prompt prefill, speculative verify)
    on the same cache buffers: a session over float32 weights, whose GEMM costs about what one token
    costs, where MatMulNBits' multi-token path costs several one-token passes (runtime.generator)."""

    def __init__(self, session: ort.InferenceSession, config: ModelConfig, max_length: int,
                 wide_session: ort.InferenceSession | None = None):
        self.session = session
        self.config = config
        self.max_length = max_length
        self.length = 0
        device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        shape = [1, config.num_kv_heads, max_length, config.head_dim]
        # Zero-filled: GQA reads whole cache blocks, and stale NaNs in unused slots would leak in.
        self._cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), device, 0)
                       for _ in range(2 * config.num_layers)]
        self._bindings = [(session, self._bind(session))]
        if wide_session is not None:
            self._bindings.append((wide_session, self._bind(wide_session)))

    def _bind(self, session: ort.InferenceSession) -> ort.IOBinding:
        binding = session.io_binding()
        binding.bind_output("logits")  # bound first so it is output 0; rebinding a name later keeps its place
        for i in range(self.config.num_layers):
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
        if total > self.max_length:
            raise EdgekitError(f"context full: {total} tokens exceed the maximum length {self.max_length}")
        session, b = self._bindings[-1] if s > 1 else self._bindings[0]
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        b.bind_cpu_input("logits_from", np.array([s - min(n_logits, s)], np.int64))
        b.bind_output("logits")
        session.run_with_iobinding(b)
        self.length = total
        return b.get_outputs()[0].numpy()[0]

    def rollback(self, length: int) -> None:
        """Forget cached tokens past `length` (their slots are overwritten by later steps)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self.length}")
        self.length = length

    def reset(self) -> None:
        self.length = 0
