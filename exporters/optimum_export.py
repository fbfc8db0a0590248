"""Obtain a float ONNX graph from optimum-onnx, for architectures that have no edgekit builder.

Optimum exports well over a hundred transformers architectures; what it lacks (low-bit weights, the
package, validation, budgets) is added by the stages after this one, unchanged. Its exporter writes a
folder; it runs in a temporary one here and only the graph comes back, in memory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx

from edgekit.errors import EdgekitError, first_line
from edgekit.ops.base import ONNX_OPSET

DECODER_TASK = "text-generation-with-past"
ENCODER_TASK = "feature-extraction"
# transformers' class-name suffixes of causal language models (config.json `architectures`).
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def task_for(hf_config: dict[str, Any]) -> str:
    """optimum's task for a folder: a causal LM generates with a KV cache; anything else is exported as an
    encoder whose last hidden state is pooled into a sentence embedding."""
    archs = hf_config.get("architectures") or []
    return DECODER_TASK if any(str(a).endswith(CAUSAL_SUFFIXES) for a in archs) else ENCODER_TASK


def optimum_graph(folder: Path, task: str) -> onnx.ModelProto:
    """optimum-onnx's float32 export of the Hugging Face folder for `task`, with its weights in memory.

    Exported at edgekit's ONNX opset, so edgekit's op function bodies and the graph share one opset."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as exc:
        raise EdgekitError("this architecture needs the optimum builder: pip install 'edgekit[export]' "
                           f"(optimum-onnx is not installed: {exc})", folder) from exc
    with tempfile.TemporaryDirectory(prefix="edgekit-optimum-") as tmp:
        try:
            with _quiet():
                main_export(str(folder), output=tmp, task=task, library_name="transformers", opset=ONNX_OPSET,
                            no_post_process=True, do_validation=False, local_files_only=True, device="cpu")
        except Exception as exc:  # optimum and torch.onnx raise many types; the first line says what failed
            raise EdgekitError(f"optimum could not export this model for {task} ({first_line(exc)[:300]})",
                               folder) from exc
        graph = Path(tmp) / "model.onnx"
        if not graph.is_file():
            raise EdgekitError(f"optimum wrote no model.onnx for {task}", folder)
        return onnx.load(str(graph), load_external_data=True)


@contextlib.contextmanager
def _quiet() -> Any:
    """optimum and the torch exporter print tracer warnings and progress to the terminal; edgekit says what
    happened in its own words."""
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
