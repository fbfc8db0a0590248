"""The runtime of sentence-embedding packages: texts in, one vector per text out.

Pooling and normalization run inside the graph (exporters.pooling_graph), so the runtime only tokenizes,
pads and batches. Padding is done here, in numpy, rather than by the tokenizer: a package's tokenizer.json
may carry its own padding (MiniLM's pads every text to 128 tokens) and truncation, which are replaced once
at load by right-padding to each batch's longest text and truncation at `encoder.max_seq_length`.

A static-shape graph (an NPU's: the `qnn` target) takes exactly [1, L] tokens: every text runs alone, padded to
L and cut at L (encoders cut long texts anyway; L is recorded in the package and is at most max_seq_length).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from edgekit.runtime.decoder import SessionSettings, make_session
from edgekit.runtime.loader import graph_path, load_manifest, require_kind, target_graph_path
from edgekit.runtime.providers import select_provider
from edgekit.runtime.sampling import check_int
from edgekit.runtime.text import read_tokenizer
from tokenizers import Encoding, Tokenizer

from edgekit.errors import EdgekitError, first_line
from edgekit.package import EMBEDDING_OUTPUT, package_file
from edgekit.targets import target as named_target
from edgekit.targets import target_for_provider

FED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the graph inputs this runtime knows how to fill
PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>")  # tried when tokenizer.json has no padding settings


class Encoder:
    """A loaded sentence-embedding package, safe to share between threads: after loading, the onnxruntime
    session and the tokenizer are only read (each call pads its own arrays)."""

    def __init__(self, path: str | Path, device: str = "cpu", fast: bool = False, threads: int = 0,
                 verify: bool = True, target: str | None = None):
        """`target`: run that target's graph (e.g. `qnn` on the CPU, to check it) instead of the one lowered for
        the device's provider."""
        self.path = Path(path)
        self.provider = select_provider(device)
        self.fast = fast
        self.manifest = load_manifest(self.path, verify=verify)
        require_kind(self.path, self.manifest, True, "load it with edgekit.runtime.load(), which gives a Model "
                     "(generate)")
        self.config = self.manifest.model
        chosen = target_for_provider(self.provider) if target is None else named_target(target)
        graph = (graph_path(self.path, self.manifest, self.provider, fast) if target is None
                 else target_graph_path(self.path, self.manifest, chosen, fast))
        entry = self.manifest.data["graph"].get("targets", {}).get(chosen.name, {})
        self._static: int | None = entry.get("static", {}).get("sequence")  # tokens per run of an NPU graph
        self._encoder = self.manifest.data["encoder"]
        self._inputs: list[str] = self.manifest.data["graph"]["inputs"]
        unknown = [name for name in self._inputs if name not in FED_INPUTS]
        if unknown:
            raise EdgekitError(f"the graph takes input(s) {unknown} that this edgekit does not feed "
                               f"({', '.join(FED_INPUTS)}): a newer edgekit may", self.path)
        self._tokenizer, self._pad_id = _fixed_length_tokenizer(
            package_file(self.path, self.manifest, self.manifest.tokenizer["file"]), self.max_length)
        self._session = make_session(graph, SessionSettings(self.provider, threads))

    @property
    def dimension(self) -> int:
        """Length of an embedding vector."""
        return int(self._encoder["dimension"])

    @property
    def max_length(self) -> int:
        """Tokens per text (special tokens included); longer texts are truncated to it."""
        return self._static or int(self._encoder["max_seq_length"])

    @property
    def normalize(self) -> bool:
        """Whether embeddings come L2-normalized (then a dot product is the cosine similarity)."""
        return bool(self._encoder["normalize"])

    def embed(self, texts: str | Iterable[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings float32 [len(texts), dimension] in the order given ([1, dimension] for one str).

        Texts are tokenized together, sorted by length and run `batch_size` at a time, each batch padded only
        to its own longest text, so short texts do not pay for long ones; a text is cut at `max_length`
        tokens. A static-shape graph runs one text at a time, padded to `max_length`. An item that is not a str
        raises TypeError naming it."""
        items = _text_list(texts)
        check_int("batch_size", batch_size, 1)
        batch_size = 1 if self._static else batch_size
        out = np.empty((len(items), self.dimension), np.float32)
        if not items:
            return out
        encodings = self._tokenizer.encode_batch(items)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._run([encodings[i] for i in rows])
        return out

    def _run(self, encodings: list[Encoding]) -> np.ndarray:
        """One batch through the graph: [len(encodings), dimension]."""
        width = self._static or max(1, max(len(e.ids) for e in encodings))
        arrays = {name: np.zeros((len(encodings), width), np.int64) for name in FED_INPUTS}
        arrays["input_ids"][:] = self._pad_id
        for row, e in enumerate(encodings):
            n = len(e.ids)
            arrays["input_ids"][row, :n] = e.ids
            arrays["attention_mask"][row, :n] = 1
            arrays["token_type_ids"][row, :n] = e.type_ids
        try:
            return self._session.run([EMBEDDING_OUTPUT], {name: arrays[name] for name in self._inputs})[0]
        except Exception as exc:  # onnxruntime's own error types: a graph at odds with its manifest (damaged)
            raise EdgekitError(f"corrupt package: the graph failed on a batch of {len(encodings)} x {width} "
                               f"tokens ({first_line(exc)})", self.path) from exc


def _fixed_length_tokenizer(path: Path, max_length: int) -> tuple[Tokenizer, int]:
    """The package's tokenizer truncating at `max_length` and never padding, and its pad token id."""
    tokenizer = read_tokenizer(path)
    pad_id = pad_token_id(tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer, pad_id


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id texts are padded with: the tokenizer's own padding setting, else a pad token of its vocabulary, else 0
    (padded positions are masked out anyway)."""
    padding = tokenizer.padding
    return padding["pad_id"] if padding else next((i for i in map(tokenizer.token_to_id, PAD_TOKENS) if i is not None),
                                                  0)


def _text_list(texts: object) -> list[str]:
    """`texts` as a list of str: one str, or an iterable of them (TypeError naming the first other item)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"embed() takes a str or a sequence of str, got {type(texts).__name__}")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            shown = repr(item)
            raise TypeError(f"text {i} is not a str: {type(item).__name__} "
                            f"{shown[:60] + '...' if len(shown) > 60 else shown}")
    return items
