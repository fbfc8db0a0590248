"""Read a GGUF checkpoint: architecture, weights in their low-bit form, and the tokenizer metadata.

The `gguf` package parses the file; this module checks it up front (magic, truncation, architecture,
tensor types, shapes against the metadata) so bad input fails with one line naming the file. The
architecture class (exporters.arch) maps llama.cpp's tensor names and conventions onto edgekit's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.arch import Metadata, architecture_class
from edgekit.exporters.weights import Weight

from edgekit.errors import EdgekitError
from edgekit.formats.gguf import GGUF_TYPES
from edgekit.model_config import ModelConfig

GGUF_MAGIC = b"GGUF"
FLOAT_TYPES = ("F32", "F16", "BF16")
FLOAT16_MAX = 65504.0
_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


class GGUFFile:
    """An opened GGUF file whose header and tensor table are checked: its metadata (what the tokenizer is built
    from) and its tensors, not yet read as a model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _check_header(self.path)
        try:
            self.reader = _bounded_reader_class()(str(self.path))
        except Exception as exc:  # the reader raises bare ValueError/IndexError on damaged files
            raise EdgekitError(f"truncated or corrupt GGUF file ({type(exc).__name__}: {exc})", self.path) from exc
        self._check_tensors_within_file()
        self.metadata = {k: _field_value(f) for k, f in self.reader.fields.items() if k not in _ARRAYS}

    def _check_tensors_within_file(self) -> None:
        size = self.path.stat().st_size
        for t in self.reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise EdgekitError(f"truncated GGUF file: tensor {t.name} ends at byte {end}, file has {size}", self.path)

    def field_array(self, key: str, kind: type = str) -> list[Any]:
        """The array field `key` ([] when absent); each element must be a `kind` (float accepts integers)."""
        if key not in self.reader.fields:
            return []
        value = _field_value(self.reader.fields[key])
        kinds = (int, float) if kind is float else (kind,)
        if not isinstance(value, list) or not all(isinstance(x, kinds) and not isinstance(x, bool) for x in value):
            raise EdgekitError(f"{key} is not an array of {kind.__name__}", self.path)
        return value


class GGUFSource(GGUFFile):
    """A GGUF model: its architecture, config and weights under canonical names (`get(name)`)."""

    kind = "gguf"

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.arch_class = architecture_class(self.metadata.get("general.architecture"), self.path)
        self.tensors = {}
        for t in self.reader.tensors:
            name = self.arch_class.canonical_from_gguf(t.name)
            if name is not None:
                self.tensors[name] = t
        # GGUF lists dimensions innermost first: an [N, K] matrix has shape (K, N) there.
        self.shapes = {name: tuple(int(d) for d in reversed(t.shape)) for name, t in self.tensors.items()}
        self.config = self._config()
        self.arch = self.arch_class(self.config)
        self.arch.check_shapes(self.shapes, self.path)

    def _config(self) -> ModelConfig:
        if any(t.name == "rope_freqs.weight" for t in self.reader.tensors):
            raise EdgekitError("unsupported: per-frequency rope factors (rope_freqs.weight)", self.path)
        for t in self.tensors.values():
            ttype = t.tensor_type.name
            if ttype not in FLOAT_TYPES and ttype not in GGUF_TYPES:
                supported = ", ".join([*FLOAT_TYPES, *GGUF_TYPES])
                raise EdgekitError(f"tensor {t.name} has unsupported quantization type {ttype} (supported: {supported})",
                                   self.path)
        meta = Metadata(self.metadata, self.path, f"{self.metadata['general.architecture']}.")
        return self.arch_class.config_from_gguf(meta, self.shapes)

    # -- weights -------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> Weight:
        if name not in self.tensors:
            raise EdgekitError(f"missing tensor for {name}", self.path)
        t = self.tensors[name]
        ttype = t.tensor_type.name
        n_cols = int(t.shape[0])
        if ttype in FLOAT_TYPES:
            import gguf

            w: Weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            if w.ndim == 2:
                w = w.reshape(-1, n_cols)
        else:
            if len(t.shape) != 2:
                raise EdgekitError(f"tensor {t.name} is {ttype} with {len(t.shape)} dimensions: block types are for "
                                   "matrices", self.path)
            try:
                w = GGUF_TYPES[ttype].to_block_weight(np.asarray(t.data).reshape(int(t.shape[1]), -1), n_cols)
            except ValueError as exc:
                raise EdgekitError(f"tensor {t.name}: {exc}", self.path) from exc
            # GGUF blocks store float16 scales; the graph stores offsets in float16 too (Q4_0's -8·d can overflow it)
            if not all((np.abs(a) <= FLOAT16_MAX).all() for a in (w.scales, w.offsets) if a is not None):
                raise EdgekitError(f"tensor {t.name}: blocks hold scales or offsets that are not finite float16 values "
                                   "(NaN, inf or past ±65504): damaged file", self.path)
        return self.arch.from_gguf(name, w)


def _check_header(path: Path) -> None:
    if not path.exists():
        raise EdgekitError("no such file", path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise EdgekitError(f"not a GGUF file: magic {head!r}, expected {GGUF_MAGIC!r}", path)


def _bounded_reader_class() -> type:
    """gguf-py's reader, refusing reads past the end of the file. The stock reader returns empty views there, so a
    damaged array length (2^40 elements of a number type) loops and grows memory instead of failing."""
    import gguf  # workstation-side dependency

    class BoundedGGUFReader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
            end = int(offset) + np.dtype(dtype).itemsize * int(count)
            if int(count) < 0 or end > len(self.data):
                raise ValueError(f"a field at byte {int(offset)} runs past the end of the file ({len(self.data)} bytes)")
            return super()._get(offset, dtype, count, override_order)

    return BoundedGGUFReader


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 (fields of types the reader cannot render are not needed)
        return None
