"""`edgekit export` as named stages: open source -> build graph -> write package.

Each stage is a function with typed input and output, so a caller or a test can stop after any
of them and look. The package is written to a temporary folder beside the target and renamed at
the end: a failed export never leaves a half-written package.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from edgekit.exporters.draft import DEFAULT_DRAFT_STEPS, auto_draft, check_same_tokenizer, measure_acceptance
from edgekit.exporters.graph_files import save_graphs
from edgekit.exporters.lowering import lower
from edgekit.exporters.prune.quant_aware import check_export_format, recovery_format
from edgekit.exporters.prune.request import PruneRequest
from edgekit.exporters.quantize import QuantConfig, quantize_source
from edgekit.exporters.sources import Source, choose_builder, open_source, resolve_path, source_tokenizer
from edgekit.exporters.static_graph import StaticGraph, StaticShapes, static_decoder_graph, static_shapes
from edgekit.exporters.weights import RecordingSource
from tokenizers import Tokenizer

import edgekit
from edgekit.errors import EdgekitError
from edgekit.package import (
    CONTRACT,
    EMBEDDING_CONTRACT,
    FORMAT_NAME,
    FORMAT_VERSION,
    GRAPH_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Manifest,
    file_entries,
    sha256_of,
)
from edgekit.progress import progress
from edgekit.recipe import Recipe
from edgekit.targets import DEFAULT_TARGETS, Target, target

DEFAULT_MAX_NEW_TOKENS = 256
DRAFT_FOLDER = "draft"


@dataclass
class BuiltGraph:
    model: onnx.ModelProto
    recipe: Recipe
    custom_ops: list[str]
    contract: str = CONTRACT
    builder: str = "native"
    sections: dict[str, Any] = field(default_factory=dict)  # manifest additions (`graph` entries are merged)
    static: dict[str, StaticGraph] = field(default_factory=dict)  # static-shape targets' graphs, by target name


def build_graph(source: Source, static: StaticShapes | None = None,
                targets: tuple[Target, ...] = ()) -> BuiltGraph:
    """Stage 2: the ONNX decoder with the source's weights in their own formats (a quantized source's recipe
    says how they were quantized), and the static-shape graph for each of `targets` that needs one."""
    c = source.config
    recording = RecordingSource(source)
    model, ops = source.arch.build(recording, progress(range(c.num_layers), "building layers"))
    recipe = replace(getattr(source, "recipe", Recipe()), tensor_formats=recording.formats,
                     pruning=getattr(source, "pruning", None))
    graphs = {t.name: static_decoder_graph(source.arch, source, static) for t in targets
              if t.static_shapes and static is not None}
    return BuiltGraph(model, recipe, sorted(ops), static=graphs)


def lower_graphs(built: BuiltGraph, targets: tuple[Target, ...]) -> dict[str, onnx.ModelProto]:
    """Stage 3: graph file name -> graph: the portable graph and each target's lowered graph(s)."""
    exact = frozenset(built.recipe.fast_exact)
    graphs = {GRAPH_FILE: built.model}
    for t in targets:
        if t.static_shapes:
            graphs[t.graph_file()] = built.static[t.name].model
            if built.static[t.name].step is not None:
                graphs[t.graph_file("step")] = built.static[t.name].step
        elif t.provider is not None:
            graphs[t.graph_file()] = lower(built.model, t)
            if t.fast_variant:
                graphs[t.graph_file("fast")] = lower(built.model, t, fast=True, exact_nodes=exact)
    return graphs


def target_entries(targets: tuple[Target, ...], static: dict[str, StaticGraph] | None = None,
                   ) -> dict[str, dict[str, Any]]:
    """The manifest's `graph.targets`: per target, its provider and graph files (and a static-shape target's
    step graph, shapes, quantization and calibration)."""
    static = static or {}
    return {t.name: {"provider": t.provider, "file": t.graph_file(),
                     **({"fast_file": t.graph_file("fast")} if t.fast_variant else {}),
                     **({"step_file": t.graph_file("step")} if t.name in static and static[t.name].step else {}),
                     **(static[t.name].entry if t.name in static else {})}
            for t in targets if t.provider is not None}


@dataclass
class PackageContents:
    """Everything one package (or its draft) is written from."""

    source: Source
    built: BuiltGraph
    tokenizer: Tokenizer
    tok_info: dict[str, Any]
    source_name: str
    targets: tuple[Target, ...]


def int8_everywhere(contents: PackageContents) -> PackageContents:
    """`contents` whose fast graph gives every projection int8 activations: its recipe lists no exact nodes. Opt-in,
    to measure what the measured list buys (benchmarks/fast_mode.py) or to trade more accuracy for speed. The
    graph is a copy, so `contents` can still be written too (writing moves a graph's tensors to the weights file)."""
    model = onnx.ModelProto()
    model.CopyFrom(contents.built.model)
    built = replace(contents.built, model=model, recipe=replace(contents.built.recipe, fast_exact=[]))
    return replace(contents, built=built)


def prepare(src: str, quant: QuantConfig | None = None, targets: tuple[str, ...] = DEFAULT_TARGETS,
            builder: str = "auto", static_length: int | None = None, static_chunk: int | None = None,
            static_context: int | None = None, static_calib: str | None = None) -> PackageContents:
    """Stages 1 and 2 for SRC: open and check the source, quantize it if `quant` says so, build its graph; the
    package will carry graphs lowered for `targets` (names from edgekit.targets). `builder`: native, optimum,
    or auto (native where edgekit has a builder for the architecture, else optimum). Static-shape targets'
    graphs: an encoder's `static_length` tokens per text (exporters.qnn_graph), QDQ ranges calibrated on
    `static_calib` (a text file; None: --calib's file of `quant`, else held-out text); a native decoder's
    `static_chunk` tokens per run over `static_context` cache slots (exporters.static_graph); None: defaults."""
    chosen = tuple(target(t) for t in dict.fromkeys(targets))
    static = [t.name for t in chosen if t.static_shapes]
    if not static and (static_length, static_chunk, static_context) != (None, None, None):
        raise EdgekitError("--static-length, --static-chunk and --static-context are for static-shape targets "
                           "(--target qnn)")
    if choose_builder(resolve_path(src), builder) == "optimum":
        if (static_chunk, static_context) != (None, None):
            raise EdgekitError("--static-chunk and --static-context shape a native decoder's static graph "
                               "(an encoder's takes --static-length)", src)
        return _prepare_optimum(src, quant, chosen, static_length, static_calib)
    if static_calib is not None:
        raise EdgekitError("--calib calibrates an encoder's QDQ graph for --target qnn, or --method gptq, "
                           "--tune-steps, --target-bpw, --prune or --draft auto: a decoder's static graph has float "
                           "activations, nothing to calibrate", src)
    if static_length is not None:
        raise EdgekitError("--static-length is for encoders (a decoder's static graph takes --static-chunk and "
                           "--static-context)", src)
    source = open_source(src)
    check_export_format(getattr(source, "pruning", None), quant, src)
    shapes = static_shapes(source.config, static_chunk, static_context, src) if static else None
    tokenizer, tok_info = source_tokenizer(source)
    if quant is not None:
        source = quantize_source(source, quant, tokenizer)
    return PackageContents(source, build_graph(source, shapes, chosen), tokenizer, tok_info, src, chosen)


def _prepare_optimum(src: str, quant: QuantConfig | None, targets: tuple[Target, ...],
                     static_length: int | None, static_calib: str | None) -> PackageContents:
    """prepare() through optimum's exporter (exporters.optimum_build); static-shape targets' graphs are made from
    its float graph (exporters.qnn_graph)."""
    from edgekit.exporters.hf_source import hf_tokenizer
    from edgekit.exporters.optimum_build import OptimumBuild

    path = resolve_path(src)
    tokenizer, tok_info = hf_tokenizer(path)
    build = OptimumBuild(path)
    calib = static_calib or (quant.calibration.file if quant is not None else None)
    static = _static_graphs(build, targets, tokenizer, Path(calib) if calib else None, static_length)
    if quant is not None:
        build.quantize(quant, tokenizer)
    built = BuiltGraph(build.finish(), build.recipe, build.custom_ops, build.contract, "optimum",
                       build.manifest_sections(), static)
    return PackageContents(build, built, tokenizer, tok_info, src, targets)


def _static_graphs(build: Any, targets: tuple[Target, ...], tokenizer: Tokenizer, calib: Path | None,
                   length: int | None) -> dict[str, StaticGraph]:
    """Static-shape targets' graphs, made from the build's float graph (exporters.qnn_graph), by target name."""
    static = [t for t in targets if t.static_shapes]
    if not static:
        return {}
    if build.sentence is None:
        raise _needs_encoder(static[0].name, build.path)
    from edgekit.exporters.qnn_graph import qnn_encoder_graph, static_length

    checked = static_length(build, length)
    return {t.name: qnn_encoder_graph(build, t, tokenizer, calib, checked) for t in static}


def _needs_encoder(name: str, src: str | Path) -> EdgekitError:
    return EdgekitError(f"--target {name} needs a sentence-embedding encoder or a decoder built by edgekit's native "
                        "builder (optimum's decoders have no static graph yet)", src)


def _write_contents(folder: Path, c: PackageContents, extra: dict[str, Any]) -> Manifest:
    """Graph, weights, tokenizer and manifest into an existing folder (files already there are hashed too)."""
    save_graphs(folder, lower_graphs(c.built, c.targets), WEIGHTS_FILE)
    c.tokenizer.save(str(folder / TOKENIZER_FILE))
    src_path = Path(c.source.path)
    sections = dict(c.built.sections)
    graph_extra = sections.pop("graph", {})
    generation = {} if c.built.contract == EMBEDDING_CONTRACT else {"generation": {
        "stop_token_ids": c.tok_info["stop_token_ids"], "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
        "temperature": 0.0, "top_k": 0, "top_p": 1.0}}
    manifest = Manifest({
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "edgekit_version": edgekit.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"name": c.source_name, "kind": c.source.kind, "file": src_path.name,
                   "sha256": sha256_of(src_path) if src_path.is_file() else None},
        "model": c.source.config.to_dict(),
        "recipe": c.built.recipe.to_dict(),
        "graph": {"contract": c.built.contract, "builder": c.built.builder, "file": GRAPH_FILE,
                  "weights": WEIGHTS_FILE, "custom_ops": c.built.custom_ops,
                  "opsets": {o.domain or "ai.onnx": o.version for o in c.built.model.opset_import},
                  "targets": target_entries(c.targets, c.built.static), **graph_extra},
        "tokenizer": {"file": TOKENIZER_FILE, **c.tok_info},
        **generation,
        **sections,
        **extra,
        "files": file_entries(folder),
    })
    manifest.write(folder)
    for f in folder.iterdir():  # onnx writes external data owner-only; a package is meant to be shared
        if f.is_file():
            f.chmod(0o644)
    folder.chmod(0o755)
    return manifest


def sweep_stale_partials(out: Path) -> None:
    """Remove temporary folders of earlier exports to `out` whose process is gone (killed outright: SIGKILL or a
    power cut leave them; Ctrl-C and SIGTERM clean up themselves)."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        pid = partial.name.removeprefix(f".{out.name}.partial-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_package(main: PackageContents, out: Path, draft: PackageContents | None = None) -> Manifest:
    """Stage 4: write the package (and its draft, in draft/) to a temporary folder, then rename it to `out`."""
    out = Path(out)
    if out.exists():
        raise EdgekitError("output already exists (remove it or choose another -o)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(out)
    # Named first and created inside `try`, so an interrupt arriving just after the mkdir still removes it.
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(mode=0o700)
        extra: dict[str, Any] = {}
        if draft is not None:
            (tmp / DRAFT_FOLDER).mkdir()
            d = _write_contents(tmp / DRAFT_FOLDER, draft, {})
            extra["draft"] = {"folder": DRAFT_FOLDER, "source": d.data["source"], "layers": d.model.num_layers}
            training = (d.data["recipe"].get("pruning") or {}).get("recovery")
            if training:  # an auto draft distilled from the target (exporters.draft)
                extra["draft"]["training"] = training
        manifest = _write_contents(tmp, main, extra)
        if draft is not None:  # measured on the written package, then recorded (manifest.json lists no hash of itself)
            manifest.data["draft"]["measured"] = measure_acceptance(tmp)
            manifest.write(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def export(src: str, out: str | Path, draft: str | None = None, quant: QuantConfig | None = None,
           targets: tuple[str, ...] = DEFAULT_TARGETS, builder: str = "auto", static_length: int | None = None,
           static_chunk: int | None = None, static_context: int | None = None, prune: PruneRequest | None = None,
           recover_steps: int = 0, calib: str | None = None, calib_prompts: str = "knowledge", fast_exact: bool = True,
           draft_layers: int | None = None, draft_steps: int | None = None) -> Manifest:
    """SRC (GGUF file, HF folder or built-in name) -> edgekit package folder `out`.

    `quant`: quantize the weights on export (exporters.quantize); None keeps them as the source has them.

    `draft`: a draft model's SRC for speculative decoding (its tokenizer must equal the target's), or
    "auto" to build one from the target itself: `draft_layers` of its layers (None: a third), distilled for
    `draft_steps` steps (None: DEFAULT_DRAFT_STEPS) on calibration text `calib` (exporters.draft).

    `targets`: names from edgekit.targets; each adds graph(s) lowered for its execution provider.

    `builder`: how the graph is made (prepare()); `static_length`, `static_chunk`, `static_context`: static-shape
    targets' shapes (prepare()).

    `prune`: prune SRC first (exporters.prune; `recover_steps` of distillation, calibration text `calib`, else the
    model's own continuations of `calib_prompts`; through `quant`'s rounding where recovery_format() gives one),
    into a temporary Hugging Face folder the package is then exported from (quantized as `quant` says).

    `fast_exact`: the fast graph keeps the projections a data-aware export measured as sensitive at exact
    activations (`recipe.fast_exact`); False gives every projection int8 activations (see int8_everywhere).
    """
    if Path(out).exists():
        raise EdgekitError("output already exists (remove it or choose another -o)", out)
    if draft != "auto" and (draft_layers is not None or draft_steps is not None):
        raise EdgekitError("--draft-layers and --draft-steps shape the auto draft: give --draft auto too")
    static = [name for name in targets if target(name).static_shapes]
    if draft is not None and static:
        raise EdgekitError(f"--draft needs dynamic shapes (speculative passes of varying length): not with "
                           f"--target {static[0]}")
    # --calib that nothing else reads calibrates the static-shape graphs (prepare() refuses it where none takes it)
    calib_used = prune is not None or draft == "auto" or (quant is not None and quant.data_aware)
    # prepare()'s options, for the source or its pruned folder
    options = {"targets": targets, "builder": builder, "static_length": static_length, "static_chunk": static_chunk,
               "static_context": static_context, "static_calib": None if calib_used or not static else calib}
    drafting = DraftOptions(draft, draft_layers, DEFAULT_DRAFT_STEPS if draft_steps is None else draft_steps, calib)
    if prune is None:
        return _export(src, src, out, drafting, quant, options, fast_exact)
    if builder == "optimum":
        raise EdgekitError("--prune makes per-layer shapes that only edgekit's native builder exports", src)
    from edgekit.exporters.prune import prune as prune_model

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.pruned-", dir=Path(out).parent) as tmp:
        pruned = prune_model(src, Path(tmp) / "pruned", prune, calib, recover_steps, calib_prompts=calib_prompts,
                             recover_for=recovery_format(quant) if recover_steps else None)
        return _export(str(pruned.folder), f"{src} (pruned: {prune.describe()})", out, drafting, quant, options,
                       fast_exact)


@dataclass(frozen=True)
class DraftOptions:
    """export()'s draft options: a draft SRC or "auto" (then its layers, distillation steps, calibration text)."""

    src: str | None
    layers: int | None
    steps: int
    calib: str | None


def _export(src: str, name: str, out: str | Path, draft: DraftOptions, quant: QuantConfig | None,
            options: dict[str, Any], fast_exact: bool) -> Manifest:
    """export() of a source that needs no pruning, recorded in the manifest as `name`."""
    main = replace(prepare(src, quant, **options), source_name=name)
    if not fast_exact:
        main = int8_everywhere(main)
    if draft.src is not None and main.built.builder != "native":
        raise EdgekitError("--draft needs a decoder built by edgekit's native builder (this one came from optimum)",
                           src)
    if draft.src == "auto":
        with auto_draft(main, src, name, draft.layers, draft.steps, draft.calib) as contents:
            return write_package(main, Path(out), contents)
    draft_contents = None
    if draft.src is not None:
        draft_contents = prepare(draft.src, targets=options["targets"])
        check_same_tokenizer(main.tokenizer, draft_contents.tokenizer, draft.src)
    return write_package(main, Path(out), draft_contents)


def describe(manifest: Manifest) -> str:
    """One line for the CLI: what was written."""
    m = manifest.model
    size = sum(f["size"] for f in manifest.files.values()) / 1e6
    graph = manifest.data["graph"]
    kind = "sentence-embedding encoder" if graph["contract"] == EMBEDDING_CONTRACT else "decoder"
    line = (f"{m.architecture} {kind}, {graph['builder']} builder, {m.num_layers} layers, weights "
            f"{json.dumps(manifest.data['recipe']['summary'])}, {size:.1f} MB")
    draft = manifest.data.get("draft")
    if draft:
        measured = draft["measured"]
        line += f"; draft: {draft['layers']} layers"
        if draft.get("training"):
            t = draft["training"]
            line += (f", distilled {t['steps']} steps (KL to the target {t['kl_before']:.2f} -> {t['kl_after']:.2f} "
                     "nats/token on held-out text)")
        line += (f", measured acceptance {measured['acceptance_rate']:.0%} "
                 f"({measured['accepted_per_pass']:.2f} tokens accepted per pass at k={measured['draft_len']})")
    return line
