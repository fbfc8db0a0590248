"""The decoder adapter for static-shape graphs (`--target qnn`, exporters.static_graph): chunks of C tokens
over a cache of L slots.

The graph takes fixed shapes: C new tokens with their positions, the whole cache [1, kv_heads, L, head_dim]
per layer, and an additive attention mask [1, 1, C, L + C]; it returns the chunk's logits and its own new
keys and values. Here a prompt is cut into chunks of C (the last one padded, its padding masked), each
chunk's keys and values are written into numpy cache buffers at its positions, and the mask lets each query
see the valid cache slots and the chunk's tokens up to itself. Behind the interface of runtime.decoder's
`Decoder` (forward, rollback, reset, length, max_length), so generation, sampling and speculative decoding
are the same code. Rolling back only shortens the valid length: slots past it are masked.

With the package's step graph (C = 1, exporters.static_graph), a few tokens run one at a time on it instead
of padded into a chunk: a chunk run costs about a chunk's work however few of its rows are real.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from edgekit.runtime.decoder import CacheLength, cache_shapes, check_room, graph_failures

# The most negative float16: large enough to silence a score, and it survives a graph run in float16 on an NPU.
MASKED = np.float32(-65504.0)


class StaticDecoder(CacheLength):
    """forward(ids) appends tokens to the cache and returns logits; `length` is the cache's valid length, at
    most `max_length` (the graph's context L, or less). `step_session`: the package's one-token graph; pieces
    of fewer than `step_below` tokens run on it token by token. The default, C/8 (at least 2: single tokens
    always step), is about where steps stop paying on the CPU: SmolLM2-135M at C = 32 takes 134 ms per chunk
    run and 39 ms per step, measured. The rule is fixed, not timed, so the same tokens take the same graphs."""

    def __init__(self, session: ort.InferenceSession, max_length: int,
                 step_session: ort.InferenceSession | None = None, step_below: int | None = None):
        shapes = {i.name: i.shape for i in session.get_inputs()}
        self.session, self.step_session = session, step_session
        self.chunk = int(shapes["input_ids"][1])
        self.context = int(shapes["past_key_values.0.key"][2])
        self.step_below = (max(2, self.chunk // 8) if step_below is None else step_below) if step_session else 0
        self.max_length = min(max_length, self.context)
        self.layers = cache_shapes(session)
        self._past_names = [f"past_key_values.{i}.{kind}" for i in range(len(self.layers)) for kind in ("key", "value")]
        self._outputs = ["logits", *(n.replace("past_key_values.", "present.") for n in self._past_names)]
        self._cache = [np.zeros((1, heads, self.context, dim), np.float32) for heads, dim in self.layers
                       for _ in range(2)]
        self.length = 0

    def forward(self, ids: np.ndarray | list[int], n_logits: int = 1) -> np.ndarray:
        """Run `ids` (new tokens) after the cached ones; logits float32 [n_logits, vocab] for the last positions."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        s = ids.size
        check_room(self.length + s, self.max_length)
        first = s - min(n_logits, s)  # the first position whose logits are returned
        kept = []
        start = 0
        while start < s:
            stepping = s - start < self.step_below
            piece = ids[start:start + (1 if stepping else self.chunk)]
            logits = self._run(self.step_session if stepping else self.session, 1 if stepping else self.chunk, piece)
            if start + piece.size > first:
                kept.append(logits[max(first - start, 0):piece.size])
            start += piece.size
        return np.concatenate(kept)

    def _run(self, session: ort.InferenceSession, c: int, piece: np.ndarray) -> np.ndarray:
        """One run of a graph of `c` rows over up to c tokens; logits [c, vocab] (rows past the piece are padding)."""
        n, r = self.length, piece.size
        ids = np.zeros((1, c), np.int64)
        ids[0, :r] = piece
        # Padding rows may run past the last slot: their positions are clipped into the rotary table.
        positions = np.minimum(np.arange(n, n + c, dtype=np.int64), self.context - 1)[None]
        mask = np.full((1, 1, c, self.context + c), MASKED, np.float32)
        mask[..., :n] = 0
        # Within the chunk each query sees itself and the tokens before it (padding rows too: no row is all masked).
        mask[0, 0, :, self.context:] = np.triu(np.full((c, c), MASKED, np.float32), 1)
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask,
                 **dict(zip(self._past_names, self._cache))}
        with graph_failures(n + r):
            logits, *present = session.run(self._outputs, feeds)
        for buffer, new in zip(self._cache, present):
            buffer[:, :, n:n + r] = new[:, :, :r]
        self.length = n + r
        return logits[0]

    def reset(self) -> None:
        self.length = 0
