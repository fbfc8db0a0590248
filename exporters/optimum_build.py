"""Build a package graph through optimum: its float export, edgekit's weight formats, and the model's contract.

The stages after this are the native ones (lowering, package, validate, bench). What differs is only how
the graph is obtained and how its weights are found: by node (exporters.graph_weights) rather than by an
architecture's name table, so tensors carry their torch module paths (`encoder.layer.0.attention.self.query`),
which `--plan` globs match.

GPTQ here takes each weight's input Hessian from one pass of the float model over the calibration text (not
layer by layer as exporters.quantize.sequential does for native architectures, which needs each
architecture's layer structure).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgekit.exporters.graph_weights import WeightSite, rewrite, weight_sites
from edgekit.exporters.optimum_export import DECODER_TASK, optimum_graph, task_for
from edgekit.exporters.pooling_graph import append_pooling
from edgekit.exporters.quantize.calibration import file_windows
from edgekit.exporters.quantize.plan import load_plan
from edgekit.exporters.quantize.rtn import quantize_rtn
from edgekit.exporters.quantize.spec import HEAD_BITS, CalibrationConfig, QuantConfig, embedding_format
from edgekit.exporters.sentence_config import read_sentence_config
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.evaltext import held_out_text
from edgekit.formats import BlockQuantWeight, GridFormat
from edgekit.jsonfile import read_json_object
from edgekit.model_config import ModelConfig
from edgekit.package import CONCAT_KV_CONTRACT, EMBEDDING_CONTRACT
from edgekit.progress import progress
from edgekit.recipe import Recipe

MIN_SENTENCE_CHARS = 30  # shorter lines of the calibration text are headings and code, not sentences
CALIBRATION_SENTENCES = 1024  # an encoder's GPTQ inputs, one forward pass each


class OptimumBuild:
    """One optimum export of a Hugging Face folder: `graph` (float, or low-bit after `quantize`), `float_graph`,
    `config`, `contract`, and the manifest sections it adds (`manifest_sections`)."""

    kind = "hf"

    def __init__(self, path: Path):
        self.path = path
        self.task = task_for(read_json_object(path / "config.json"))
        self.contract = CONCAT_KV_CONTRACT if self.task == DECODER_TASK else EMBEDDING_CONTRACT
        self.sentence = None if self.task == DECODER_TASK else read_sentence_config(path)
        self.graph = optimum_graph(path, self.task)
        self.float_graph = self.graph  # kept for static-shape targets (exporters.qnn_graph); quantize() copies
        self.config = model_config(path, self.graph, self.task)
        self.sites = weight_sites(self.graph, self.config.vocab_size)
        floats = [t for t in self.graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
        # optimum stores a tied output layer as a second, transposed table: count those weights once.
        self.parameters = (sum(int(np.prod(t.dims)) for t in floats) - sum(s.weight.size for s in self.sites if s.tied))
        self.recipe = Recipe(tensor_formats={s.name: "f32" for s in self.sites if not s.tied})
        self.custom_ops: list[str] = []

    def quantize(self, quant: QuantConfig, tokenizer: Tokenizer) -> None:
        """Replace the weights by quant's formats (RTN or GPTQ; --plan, --target-bpw), in edgekit ops."""
        if quant.tune_steps:
            raise EdgekitError("--tune-steps is not available for graphs built through optimum (native builders "
                               "only)", self.path)
        sites = [s for s in self.sites if not s.tied]
        formats = site_formats(sites, quant)
        for s in sites:
            if s.name in formats:
                formats[s.name].check_width(s.name, s.weight.shape[1])
        calibration, model, rows = "none", None, []
        if quant.data_aware:
            rows, calibration = self._calibration(quant, tokenizer)
            model = torch_model(self.path, self.task)
        if quant.target_bpw is not None:
            formats = self._fill_by_budget(model, rows, sites, formats, quant)
        hessians = input_hessians(model, [s.name for s in sites if s.kind != "gather"], rows) \
            if quant.method == "gptq" else {}
        quantized: dict[str, BlockQuantWeight] = {}
        for s in progress(sites, f"quantizing ({quant.method})"):
            if s.name in hessians:
                from edgekit.exporters.quantize.gptq import gptq_quantize

                quantized[s.name] = gptq_quantize(s.weight, hessians[s.name], formats[s.name],
                                                  act_order=quant.act_order, damp=quant.damp)
            else:
                quantized[s.name] = quantize_rtn(s.weight, formats[s.name])
        self.graph, self.custom_ops = rewrite(self.graph, self.sites, quantized, self.config)
        self.recipe = _recipe(quant, sites, formats, calibration)

    def _calibration(self, quant: QuantConfig, tokenizer: Tokenizer) -> tuple[list[np.ndarray], str]:
        if self.sentence is not None:
            return calibration_sentences(quant.calibration, tokenizer, self.path, self.sentence.max_seq_length)
        windows, said = calibration_windows(quant, tokenizer, self.path, self.config.max_position_embeddings)
        return list(windows), said

    def _fill_by_budget(self, model: Any, rows: list[np.ndarray], sites: list[WeightSite],
                        formats: dict[str, GridFormat], quant: QuantConfig) -> dict[str, GridFormat]:
        """--target-bpw: formats for the matrices no rule pinned, from each one's measured cost."""
        from edgekit.exporters.optimum_sensitivity import measure_sites
        from edgekit.exporters.quantize.allocation import Unit, allocate

        matrices = [s for s in sites if s.kind != "gather"]
        free = [s for s in matrices if s.name not in formats]
        fixed = [s for s in matrices if s.name in formats]
        fixed_bits = sum(formats[s.name].stored_bits(*s.weight.shape) for s in fixed)
        fixed_weights = sum(s.weight.size for s in fixed)
        narrowest = min((s.weight.shape[1] for s in free), default=0)
        decoder = self.sentence is None

        def measure(candidates: list[GridFormat]) -> list[Unit]:
            return measure_sites(model, rows, free, [f for f in candidates if f.group_size <= narrowest], decoder)

        units = measure(quant.candidates())
        try:
            plan = allocate(units, quant.target_bpw, fixed_bits, fixed_weights)
        except EdgekitError:  # below what 3 bits take: 2-bit formats as a last resort, as for native exports
            units = [replace(u, costs={**u.costs, **more.costs}) for u, more in zip(units, measure(quant.last_resort()))]
            plan = allocate(units, quant.target_bpw, fixed_bits, fixed_weights)
        return {**formats, **{names[0]: fmt for names, fmt in plan.items()}}

    def finish(self) -> onnx.ModelProto:
        """The graph with its contract's outputs: an encoder's pooled (and normalized) sentence embedding."""
        if self.sentence is not None:
            self.graph = append_pooling(self.graph, self.sentence.pooling, self.sentence.normalize)
        return self.graph

    def manifest_sections(self) -> dict[str, Any]:
        io = {"inputs": [i.name for i in self.graph.graph.input], "outputs": [o.name for o in self.graph.graph.output]}
        sections: dict[str, Any] = {"graph": {"optimum_task": self.task, "parameters": self.parameters, **io}}
        if self.sentence is not None:
            sections["encoder"] = asdict(self.sentence)
        return sections


def site_formats(sites: list[WeightSite], quant: QuantConfig) -> dict[str, GridFormat]:
    """Per weight: the plan's rule, else --weights (or the plan's default) for matrices and its 8-bit counterpart
    for the token embedding (and a tied output layer, the same table), as for native exports. With
    --target-bpw, matrices left without a format are for the allocation to choose."""
    rules = load_plan(quant.plan, quant.group_size) if quant.plan is not None else None
    default = quant.weights or (rules.default if rules else None)
    pinned = rules.matched([s.name for s in sites]) if rules else {}
    head = embedding_format(default or GridFormat(HEAD_BITS, quant.group_size, quant.symmetric))
    formats: dict[str, GridFormat] = {}
    for s in sites:
        fmt = pinned.get(s.name) or (head if s.kind == "gather" else default)
        if fmt is None and quant.target_bpw is None:
            raise EdgekitError(f"tensor {s.name} has no format: give --weights, a plan `default:` or --target-bpw",
                               quant.plan)
        if fmt is not None:
            formats[s.name] = fmt
    return formats


def _recipe(quant: QuantConfig, sites: list[WeightSite], formats: dict[str, GridFormat], calibration: str) -> Recipe:
    """The manifest's recipe: the formats chosen, and bits per weight over the matrices and over everything."""
    shapes = {s.name: s.weight.shape for s in sites}

    def bits(names: list[str]) -> float:
        stored = sum(formats[n].stored_bits(*shapes[n]) for n in names)
        return round(stored / sum(shapes[n][0] * shapes[n][1] for n in names), 4)

    matrices = [s.name for s in sites if s.kind != "gather"]
    uniform = {formats[n] for n in matrices}
    fmt = next(iter(uniform)) if len(uniform) == 1 else None
    how = ", ".join(p for p in (quant.plan and f"plan {Path(quant.plan).name}",
                                quant.target_bpw and f"target {quant.target_bpw} bpw by measured sensitivity") if p)
    return Recipe(method=quant.method, tensor_formats={n: f.name for n, f in formats.items()},
                  bits=fmt.bits if fmt else None, group_size=fmt.group_size if fmt else None,
                  symmetric=fmt.symmetric if fmt else quant.symmetric,
                  act_order=quant.act_order and quant.method == "gptq", calibration=calibration, plan=how or None,
                  bits_per_weight=bits(matrices), bits_per_weight_all=bits(list(formats)))


def calibration_windows(quant: QuantConfig, tokenizer: Tokenizer, path: Path, longest: int,
                        ) -> tuple[np.ndarray, str]:
    """A decoder's GPTQ calibration tokens in windows of at most `longest`: --calib's file, else held-out text
    of the evaluation corpus (the native builder's self-generated text needs its own decoding loop)."""
    cal = replace(quant.calibration, seq_len=min(quant.calibration.seq_len, longest))
    if cal.file is not None:
        windows = file_windows(str(cal.file), tokenizer, cal)
        return windows, f"{Path(cal.file).name}, {windows.size} tokens"
    ids = tokenizer.encode(held_out_text(), add_special_tokens=False).ids[: cal.max_tokens]
    n = len(ids) // cal.seq_len
    if n == 0:
        raise EdgekitError("the built-in calibration text is too short for this tokenizer", path)
    return np.asarray(ids[: n * cal.seq_len], np.int64).reshape(n, cal.seq_len), f"held-out text, {n * cal.seq_len} tokens"


def calibration_sentences(cal: CalibrationConfig, tokenizer: Tokenizer, path: Path, longest: int,
                          ) -> tuple[list[np.ndarray], str]:
    """An encoder's GPTQ calibration inputs: one per line of --calib's file (else of the held-out text), with
    the tokenizer's special tokens, truncated at `longest` (keeping the closing special token), as the encoder
    sees text in use. Windows
    cut from running text (no [CLS], lengths it never sees) calibrate it poorly: on all-MiniLM-L6-v2 int4 g32,
    mean cosine to PyTorch on edgekit's validation sentences 0.970 with RTN, 0.974 with GPTQ on 256-token
    windows, 0.983 with GPTQ on 834 sentences (measured)."""
    try:
        text = Path(cal.file).read_text(encoding="utf-8") if cal.file is not None else held_out_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"cannot read the calibration file ({exc})", cal.file) from exc
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) >= MIN_SENTENCE_CHARS]
    whole = Tokenizer.from_str(tokenizer.to_str())  # a copy: an encoder's tokenizer.json may truncate (to 128)
    whole.no_truncation()
    whole.no_padding()
    rows: list[np.ndarray] = []
    for line in lines:
        ids = whole.encode(line).ids
        rows.append(np.asarray([*ids[: longest - 1], ids[-1]] if len(ids) > longest else ids, np.int64))
        if len(rows) == CALIBRATION_SENTENCES:
            break
    tokens = sum(len(r) for r in rows)
    if tokens < cal.min_tokens:
        raise EdgekitError(f"calibration text too short: {tokens} tokens in sentences, need {cal.min_tokens}",
                           cal.file or path)
    name = Path(cal.file).name if cal.file is not None else "held-out text"
    return rows, f"{name}, {len(rows)} sentences, {tokens} tokens"


def torch_model(path: Path, task: str) -> Any:
    """transformers' float32 model of the folder, for calibration (local files only)."""
    import torch
    import transformers

    auto = transformers.AutoModelForCausalLM if task == DECODER_TASK else transformers.AutoModel
    return auto.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()


def input_hessians(model: Any, names: list[str], rows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """XᵀX / T of each named module's input over the calibration rows, from the float torch model (float64). Rows
    run in padded batches of similar length; the Hessians take the real tokens' rows only. Names the model has no
    submodule for (a graph node without a module path) are left out and take RTN."""
    import torch
    from edgekit.exporters.quantize.sequential import InputHessian

    batches = padded_batches(rows)
    current: dict[str, torch.Tensor] = {}
    hooks: dict[str, InputHessian] = {}
    handles = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        hooks[name] = InputHessian(keep=lambda: current["mask"].reshape(-1).bool())
        handles.append(module.register_forward_hook(hooks[name]))
    try:
        with torch.no_grad():
            for ids, mask in progress(batches, "calibration (float model)"):
                current["mask"] = mask
                model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return {name: h.hessian for name, h in hooks.items() if h.rows}


def padded_batches(rows: list[np.ndarray], size: int = 32) -> list[tuple[Any, Any]]:
    """(ids, attention mask) torch batches of `size` rows sorted by length, padded on the right (id 0)."""
    import torch

    ordered = sorted(rows, key=len)
    out = []
    for start in range(0, len(ordered), size):
        group = ordered[start:start + size]
        longest = max(len(r) for r in group)
        ids = torch.zeros((len(group), longest), dtype=torch.long)
        mask = torch.zeros((len(group), longest), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, : len(r)], mask[i, : len(r)] = torch.from_numpy(r), 1
        out.append((ids, mask))
    return out


def model_config(path: Path, graph: onnx.ModelProto, task: str) -> ModelConfig:
    """The manifest's model facts, from transformers' config (which maps each family's own key names) and, for a
    decoder, the cache shapes optimum's graph declares."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    hidden, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    past = {i.name: i.type.tensor_type.shape.dim for i in graph.graph.input if i.name.startswith("past_key_values.")}
    layers = sum(1 for n in past if n.endswith(".key")) if task == DECODER_TASK else int(cfg.num_hidden_layers)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    if task == DECODER_TASK and "past_key_values.0.key" in past:
        dims = past["past_key_values.0.key"]
        kv_heads, head_dim = dims[1].dim_value or kv_heads, dims[3].dim_value or head_dim
    eps = next((getattr(cfg, k) for k in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
                if getattr(cfg, k, None) is not None), 1e-5)
    return ModelConfig(
        architecture=cfg.model_type, num_layers=layers, hidden_size=hidden, num_heads=heads,
        num_kv_heads=int(kv_heads), head_dim=int(head_dim),
        intermediate_size=int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden),
        vocab_size=int(cfg.vocab_size), rope_theta=float(getattr(cfg, "rope_theta", None) or 0.0),
        rms_norm_eps=float(eps), max_position_embeddings=int(cfg.max_position_embeddings),
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)))

