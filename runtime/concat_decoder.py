"""The decoder adapter for graphs whose KV cache grows by concatenation (optimum's export layout).

Such a graph takes the past keys and values as inputs [1, kv_heads, past, head_dim] and returns them with
the new tokens appended, and asks for an attention mask and positions that edgekit's own graphs compute
inside. This adapter feeds those and keeps the returned cache, behind the interface of runtime.decoder's
`Decoder` (forward, rollback, reset, length), so generation, sampling and streaming are the same code for
both layouts. Rolling back only shortens the valid length: the next step feeds a view of the kept prefix.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from edgekit.runtime.decoder import CacheLength, cache_shapes, check_room, graph_failures


class ConcatCacheDecoder(CacheLength):
    """forward(ids) appends tokens to the cache and returns logits; `length` is the cache's valid length."""

    def __init__(self, session: ort.InferenceSession, max_length: int):
        self.session = session
        self.max_length = max_length
        self.length = 0
        self.layers = cache_shapes(session)
        self._past_names = [f"past_key_values.{i}.{kind}" for i in range(len(self.layers)) for kind in ("key", "value")]
        self._outputs = ["logits", *(n.replace("past_key_values.", "present.") for n in self._past_names)]
        self._inputs = {i.name for i in session.get_inputs()}
        self.reset()

    def forward(self, ids: np.ndarray | list[int], n_logits: int = 1) -> np.ndarray:
        """Run `ids` (new tokens) after the cached ones; logits float32 [n_logits, vocab] for the last positions."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        s = ids.shape[1]
        total = self.length + s
        check_room(total, self.max_length)
        feeds = {"input_ids": ids, **{n: p[:, :, : self.length] for n, p in zip(self._past_names, self._past)}}
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = np.ones((1, total), np.int64)
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.arange(self.length, total, dtype=np.int64)[None]
        with graph_failures(total):
            logits, *self._past = self.session.run(self._outputs, feeds)
        self.length = total
        return logits[0, s - min(n_logits, s):]

    def reset(self) -> None:
        self.length = 0
        self._past = [np.zeros((1, heads, 0, dim), np.float32) for heads, dim in self.layers for _ in range(2)]
