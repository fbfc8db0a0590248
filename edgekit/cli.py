"""The `edgekit` command: thin click commands over the library (export, run, embed, validate, bench)."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from edgekit.errors import EdgekitError

DEVICES = click.Choice(["cpu", "cuda", "qnn", "openvino", "auto"])
EXECUTION_PROVIDERS = click.Choice(["cpu", "cuda", "qnn", "openvino"])


def _calib_prompts_option(default: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Pruning's --calib-prompts (`edgekit prune`, `edgekit export --prune`)."""
    return click.option("--calib-prompts", type=click.Choice(["knowledge", "neutral"]), default=default,
                        help="Pruning without --calib: what the model's own calibration text continues, "
                             "encyclopedic prompts (keeps more facts) or neutral ones (lower KL on general text) "
                             "[knowledge].")


class Interrupted(BaseException):
    """SIGTERM, raised where the process is, so cleanup (an export's temporary folder) runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


# Workstation-side packages, by the extra that installs them (pyproject.toml): a device install has none.
EXTRA_OF = {"torch": "export", "transformers": "export", "accelerate": "export", "gguf": "export",
            "safetensors": "export", "yaml": "export", "onnx": "export", "plotly": "report"}


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one line on stderr and exit status 2, never a traceback; an interrupted command exits
    130 (Ctrl-C) or 143 (SIGTERM) after its cleanup ran."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            return fn(*args, **kwargs)
        except EdgekitError as exc:
            click.echo(f"edgekit: error: {exc}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in EXTRA_OF:
                raise
            click.echo(f"edgekit: error: `edgekit {click.get_current_context().info_name}` needs the workstation "
                       f"packages ({top} is not installed): pip install 'edgekit[{EXTRA_OF[top]}]'", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("edgekit: interrupted", err=True)
            sys.exit(128 + signal.SIGINT)
        except Interrupted as exc:
            click.echo(f"edgekit: interrupted ({signal.Signals(exc.signum).name})", err=True)
            sys.exit(128 + exc.signum)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


@click.group()
@click.version_option(package_name="edgekit")
def main() -> None:
    """Export compressed language models to ONNX packages and run them on device."""


@main.command()
@click.argument("src")
@click.option("-o", "--output", "out", required=True, help="Package folder to create (must not exist).")
@click.option("--draft", default=None, help="Draft model SRC for speculative decoding, or `auto` (from the target).")
@click.option("--draft-layers", type=click.IntRange(1), default=None,
              help="--draft auto: how many of the target's layers the draft keeps [a third].")
@click.option("--draft-steps", type=click.IntRange(0), default=None,
              help="--draft auto: steps of distillation from the target on the calibration text (0: untrained) "
                   "[200: minutes on CPU for 135M].")
@click.option("--weights", default=None, help="Quantize to int8|int4|int3|int2 (or a full name like int4g128sym).")
@click.option("--group-size", type=int, default=None, help="Weights per scale and offset along K [64].")
@click.option("--symmetric", is_flag=True, help="Zero point in the middle of the code range, no per-group minimum.")
@click.option("--method", default=None, help="rtn (round to nearest, default) or gptq (calibrated).")
@click.option("--calib", default=None,
              help="Calibration text file for gptq, --tune-steps, --target-bpw, --prune, --draft auto and an "
                   "encoder's --target qnn ranges [text the model writes itself; held-out text for qnn].")
@click.option("--act-order/--no-act-order", default=None,
              help="gptq: quantize columns by decreasing input energy [on].")
@click.option("--plan", default=None, help="YAML file of per-layer formats (layer-name globs; see docs/cli.md).")
@click.option("--target-bpw", type=float, default=None,
              help="Bits per projection weight to reach, formats chosen per layer by measured sensitivity.")
@click.option("--target", "targets", multiple=True, default=("cpu",), show_default=True,
              help="Lower the graph at export for: cpu, cuda, qnn (static shapes, for NPUs), portable (repeat for "
                   "several; the portable graph is always written).")
@click.option("--static-length", type=int, default=None,
              help="Tokens per text of an encoder's static-shape graph (--target qnn; texts are padded or cut to it) "
                   "[min(max_seq_length, 128)].")
@click.option("--static-chunk", type=int, default=None,
              help="Tokens per run of a decoder's static-shape graph (--target qnn) [64, or the context if less].")
@click.option("--static-context", type=int, default=None,
              help="Most tokens a sequence holds in a decoder's static-shape graph (--target qnn) [512, or the "
                   "model's maximum if less].")
@click.option("--builder", type=click.Choice(["auto", "native", "optimum"]), default="auto", show_default=True,
              help="How the graph is made: edgekit's own builder, optimum-onnx's exporter, or native where one exists.")
@click.option("--tune-steps", type=int, default=0,
              help="After rtn/gptq, distil group scales and norm weights end to end for N steps on the "
                   "calibration text (100: a few minutes on CPU for 135M) [0].")
@click.option("--prune", "prune_spec", default=None,
              help="Prune first: a ratio of parameters to remove (0.25) or a pruning plan YAML (see `edgekit prune`).")
@click.option("--recover-steps", type=click.IntRange(0), default=0,
              help="With --prune: steps of distillation from the unpruned model; with --weights and method rtn, "
                   "through that format's rounding [0].")
@_calib_prompts_option(None)
@_one_line_errors
def export(src: str, out: str, draft: str | None, draft_layers: int | None, draft_steps: int | None,
           weights: str | None, group_size: int | None, symmetric: bool,
           method: str | None, calib: str | None, act_order: bool | None, plan: str | None,
           target_bpw: float | None, targets: tuple[str, ...], static_length: int | None, static_chunk: int | None,
           static_context: int | None, builder: str, tune_steps: int, prune_spec: str | None,
           recover_steps: int, calib_prompts: str | None) -> None:
    """Export SRC (a GGUF file, a Hugging Face folder, or `smollm2-135m`) to the package folder OUT."""
    from edgekit.exporters.pipeline import describe
    from edgekit.exporters.pipeline import export as run_export
    from edgekit.exporters.prune.request import request_from_spec
    from edgekit.exporters.quantize.spec import quant_config_from_options
    from edgekit.targets import target

    quant = quant_config_from_options(weights, group_size, symmetric, method, calib, act_order, plan, target_bpw,
                                      tune_steps, calib_elsewhere=prune_spec is not None or draft == "auto"
                                      or any(target(t).static_shapes for t in targets))
    if (recover_steps or calib_prompts) and prune_spec is None:
        raise EdgekitError(f"{'--recover-steps' if recover_steps else '--calib-prompts'} is for a pruned model: "
                           "give --prune too")
    prune = request_from_spec(prune_spec) if prune_spec is not None else None
    manifest = run_export(src, out, draft=draft, quant=quant, targets=targets, builder=builder,
                          static_length=static_length, static_chunk=static_chunk, static_context=static_context,
                          prune=prune, recover_steps=recover_steps, calib=calib,
                          calib_prompts=calib_prompts or "knowledge", draft_layers=draft_layers,
                          draft_steps=draft_steps)
    click.echo(f"wrote {out}: {describe(manifest)}")


@main.command()
@click.argument("src")
@click.option("-o", "--output", "out", required=True, help="Hugging Face folder to create (must not exist).")
@click.option("--ratio", type=float, default=None, help="Fraction of all parameters to remove, e.g. 0.25.")
@click.option("--plan", default=None, help="Pruning plan YAML: ratio, depth, importance and per-layer rules "
                                           "(layer-name globs; see docs/cli.md).")
@click.option("--depth", type=float, default=None,
              help="Share of the removal taken as whole layers, least important first [0: width only].")
@click.option("--attention-share", type=float, default=None,
              help="Attention's part of the ratio, as a share of an even spread (1: heads and channels alike) [0: "
                   "MLP channels first].")
@click.option("--importance", type=click.Choice(["activation", "taylor"]), default=None,
              help="How heads, groups and channels are scored: activations (forward only) or gradients "
                   "[activation].")
@click.option("--calib", default=None, help="Calibration text file [the model writes its own].")
@_calib_prompts_option("knowledge")
@click.option("--recover-steps", type=click.IntRange(0), default=0,
              help="Steps of distillation from the unpruned model on the calibration text [0].")
@click.option("--recover-for", default=None,
              help="Recover through the rounding of the weight format the folder will be exported to (int4, "
                   "int4g32, ...: then export it with that --weights, method rtn) [float recovery].")
@_one_line_errors
def prune(src: str, out: str, ratio: float | None, plan: str | None, depth: float | None,
          attention_share: float | None, importance: str | None, calib: str | None, calib_prompts: str,
          recover_steps: int, recover_for: str | None) -> None:
    """Remove attention heads, key/value groups, MLP channels and layers of SRC by measured importance; write a
    smaller Hugging Face folder OUT (export it with `edgekit export OUT`)."""
    from edgekit.exporters.prune import prune as run_prune
    from edgekit.exporters.prune import request_from_options
    from edgekit.formats import GridFormat

    request = request_from_options(ratio, plan, depth, importance, attention_share)
    fmt = GridFormat.parse(recover_for) if recover_for is not None else None
    result = run_prune(src, out, request, calib, recover_steps, calib_prompts=calib_prompts, recover_for=fmt)
    click.echo(f"wrote {out}: {result.describe()}")


SPECULATIVE = click.Choice(["ngram", "draft"])


FLOAT_PASSES_HELP = ("Exact mode: prefill and speculative verify passes on float32 copies of the weights "
                     "(more memory, cheaper multi-token passes).")


def _load(pkg: str, device: str, fast: bool, max_length: int | None = None, threads: int = 0,
          draft: bool = False, float_passes: bool = False) -> Any:
    """A text decoder package as a Model (commands check its kind first, with _require_kind)."""
    from edgekit.runtime import Model

    return Model(pkg, device=device, fast=fast, max_length=max_length, threads=threads, draft=draft,
                 float_passes=float_passes)


def _require_kind(pkg: str, encoder: bool) -> None:
    """Refuse a package of the other kind with the command that serves it."""
    from edgekit.package import read_manifest
    from edgekit.runtime.loader import require_kind

    instead = f"use `edgekit run {pkg} --prompt TEXT`" if encoder else f"use `edgekit embed {pkg} TEXT...`"
    require_kind(pkg, read_manifest(pkg), encoder, instead)


@main.command()
@click.argument("pkg")
@click.option("--prompt", default=None, help="Text to continue (the user message with --chat or --system); - reads "
              "stdin. With --chat and no prompt: an interactive chat, one user message per stdin line.")
@click.option("-f", "--file", "prompt_file", type=click.Path(dir_okay=False), default=None,
              help="Read the prompt from this UTF-8 file.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the package's chat template.")
@click.option("--system", default=None, help="System prompt (implies --chat).")
@click.option("--stop", multiple=True, help="Stop before this text (repeat for several).")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="onnxruntime threads (0: its default).")
@click.option("--fast", is_flag=True, help="int8 activations: faster, not exact (opt-in).")
@click.option("--max-length", type=click.IntRange(2), default=None, help="KV cache length (tokens).")
@click.option("--speculative", type=SPECULATIVE, default=None,
              help="Draft with prompt lookup (ngram) or the package's draft model; output as without.")
@click.option("--draft-len", type=click.IntRange(1, 16), default=4, show_default=True, help="Most drafted tokens.")
@click.option("--float-passes", is_flag=True, help=FLOAT_PASSES_HELP)
@_one_line_errors
def run(pkg: str, prompt: str | None, prompt_file: str | None, chat: bool, system: str | None,
        stop: tuple[str, ...], max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int | None,
        device: str, threads: int, fast: bool, max_length: int | None, speculative: str | None, draft_len: int,
        float_passes: bool) -> None:
    """Generate from PKG, streaming text to stdout; a timing line goes to stderr."""
    from edgekit.runtime import GenerationConfig
    from edgekit.runtime.sampling import SamplingParams

    _require_kind(pkg, encoder=False)
    try:  # the library checks every value; here a bad one is a one-line error like any other
        gen = GenerationConfig(max_new_tokens, SamplingParams(temperature, top_k, top_p), seed,
                               speculative=speculative, draft_len=draft_len, stop=stop)
    except ValueError as exc:
        raise EdgekitError(str(exc)) from None
    text = _prompt_text(prompt, prompt_file)
    chat = chat or system is not None
    if text is None and not chat:
        raise EdgekitError("give --prompt TEXT, --prompt - (stdin) or -f FILE; or --chat for an interactive chat")
    model = _load(pkg, device, fast, max_length, threads, draft=speculative == "draft", float_passes=float_passes)
    if text is None:
        _interactive_chat(model, system, gen)
        return
    messages = [{"role": "system", "content": system}] if system else []
    stream = model.stream([*messages, {"role": "user", "content": text}] if chat else text, gen=gen)
    _echo_stream(stream)


def _prompt_text(prompt: str | None, prompt_file: str | None) -> str | None:
    """The prompt from --prompt, stdin (--prompt -) or -f FILE, checked to be UTF-8 text."""
    if prompt is not None and prompt_file is not None:
        raise EdgekitError("give either --prompt or -f FILE, not both")
    if prompt_file is not None:
        return _read_text(prompt_file, "prompt")
    if prompt == "-":
        return _read_text("-", "prompt")
    if prompt is not None:
        _check_utf8_argument(prompt, "--prompt")
    return prompt


def _read_text(source: str, what: str) -> str:
    """The UTF-8 text of a file, or of stdin for `-`; `what` names it in errors (prompt, text)."""
    if source == "-":
        return _utf8(sys.stdin.buffer.read(), "stdin", what)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise EdgekitError(f"cannot read the {what} file ({exc.strerror})", source) from None
    return _utf8(raw, source, what)


def _check_utf8_argument(value: str, name: str) -> None:
    try:
        value.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
    except UnicodeEncodeError:
        raise EdgekitError(f"{name} is not valid UTF-8 text") from None


def _utf8(raw: bytes, origin: str, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"the {what} is not valid UTF-8 text (byte {exc.start})", origin) from None


def _echo_stream(stream: Any) -> None:
    """Print text pieces as they come, then the stream's timing line on stderr."""
    for piece in stream:
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo()
    click.echo(stream.stats.timing_line(), err=True)


def _interactive_chat(model: Any, system: str | None, gen: Any) -> None:
    """One user message per stdin line until EOF or an empty line; the KV cache is kept between turns."""
    conversation = model.chat(system, gen)
    stdin = sys.stdin
    try:
        while True:
            if stdin.isatty():
                click.echo("> ", nl=False, err=True)
            line = stdin.readline()
            if not line.strip():
                return
            _echo_stream(conversation.send(line.rstrip("\n")))
    finally:
        conversation.close()


EMBED_SHOWN = 6  # components printed per vector without --json


@main.command()
@click.argument("pkg")
@click.argument("texts", nargs=-1)
@click.option("-f", "--file", "text_file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Also embed each line of this UTF-8 file (- reads stdin), blank lines included.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Texts per graph run.")
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="onnxruntime threads (0: its default).")
@click.option("--fast", is_flag=True, help="int8 activations: faster, not exact (opt-in).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"model": PKG, "dimension": N, "embeddings": [[...], ...]} with the full vectors.')
@_one_line_errors
def embed(pkg: str, texts: tuple[str, ...], text_file: str | None, batch_size: int, device: str, threads: int,
          fast: bool, as_json: bool) -> None:
    """Embed each TEXT (then each line of -f FILE) with the sentence-embedding package PKG.

    Prints one line per text, in order: the vector's first 6 components, its L2 norm (1 when the package
    normalizes) and the text. --json prints the full vectors; a timing line goes to stderr."""
    import time

    import numpy as np

    from edgekit.runtime import Encoder

    _require_kind(pkg, encoder=True)
    for text in texts:
        _check_utf8_argument(text, "TEXT")
    items = [*texts, *(_read_text(text_file, "text").splitlines() if text_file is not None else [])]
    if not items:
        raise EdgekitError("give the texts to embed: TEXT arguments, or -f FILE (one text per line, - for stdin)")
    encoder = Encoder(pkg, device=device, fast=fast, threads=threads)
    t0 = time.perf_counter()
    vectors = encoder.embed(items, batch_size=batch_size)
    ms = (time.perf_counter() - t0) * 1e3
    if as_json:
        click.echo(json.dumps({"model": pkg, "dimension": encoder.dimension, "embeddings": vectors.tolist()}))
    else:
        for text, vector, norm in zip(items, vectors, np.linalg.norm(vectors, axis=1)):
            click.echo(f"{_vector_preview(vector)}  norm {norm:.4f}  {text}")
    click.echo(f"edgekit: {len(items)} text{'s' if len(items) != 1 else ''}, {encoder.dimension} dimensions, "
               f"{ms:.0f} ms", err=True)


def _vector_preview(vector: Any) -> str:
    """`[+0.0123 -0.0456 ... ]`: the first EMBED_SHOWN components."""
    shown = " ".join(f"{x:+.4f}" for x in vector[:EMBED_SHOWN])
    return f"[{shown}{' ...' if len(vector) > EMBED_SHOWN else ''}]"


@main.command()
@click.argument("pkg")
@click.option("--reference", "reference_src", required=True, help="The source the package was exported from.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True,
              help="Where the PyTorch reference runs (auto: CUDA when present).")
@click.option("--runtime-device", type=DEVICES, default="cpu", show_default=True,
              help="Where the package runs (as run's --device, CPU fallback included).")
@click.option("--tokens", type=click.IntRange(1), default=64, show_default=True, help="Greedy tokens compared.")
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Evaluation text for perplexity (default: Python's pydoc topics).")
@click.option("--min-greedy", type=click.IntRange(0), default=None, help="Identical greedy tokens needed [all].")
@click.option("--max-ppl-delta", type=float, default=0.001, show_default=True, help="Relative perplexity limit.")
@click.option("--min-top1", type=float, default=0.99, show_default=True)
@click.option("--max-kl", type=float, default=None)
@click.option("--min-mean-cosine", type=float, default=0.98, show_default=True,
              help="Encoders: mean cosine similarity to the reference needed.")
@click.option("--min-cosine", type=float, default=0.90, show_default=True,
              help="Encoders: cosine similarity needed on every sentence.")
@click.option("--max-abs-error", type=float, default=None, help="Encoders: largest embedding element error allowed.")
@click.option("--fast", is_flag=True, help="Validate the fast (int8 activation) mode.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_one_line_errors
def validate(pkg: str, reference_src: str, device: str, runtime_device: str, tokens: int, text_file: str | None, min_greedy: int | None,
             max_ppl_delta: float, min_top1: float, max_kl: float | None, min_mean_cosine: float, min_cosine: float,
             max_abs_error: float | None, fast: bool, as_json: bool) -> None:
    """Compare PKG's runtime with the PyTorch reference; exit 1 when a threshold fails.

    Decoders: logit error, top-1 agreement, identical greedy tokens, perplexity and KL on --text. Encoders:
    cosine similarity per sentence on a built-in set of 126 varied sentences (or --text, one per line)."""
    from edgekit.runtime import Encoder, load

    model = load(pkg, device=runtime_device, fast=fast)
    text = Path(text_file).read_text(encoding="utf-8") if text_file else None
    if isinstance(model, Encoder):
        from edgekit.exporters.encoder_reference import TorchEncoderReference
        from edgekit.exporters.encoder_validate import EncoderThresholds, validate_encoder

        lines = [line for line in text.splitlines() if line.strip()] if text is not None else None
        report = validate_encoder(model, TorchEncoderReference(reference_src, device), lines,
                                  EncoderThresholds(min_mean_cosine, min_cosine, max_abs_error))
    else:
        from edgekit.exporters.reference import TorchReference
        from edgekit.exporters.validate import Thresholds
        from edgekit.exporters.validate import validate as run_validate

        report = run_validate(model, TorchReference(reference_src, device), tokens, text,
                              Thresholds(min_greedy, max_ppl_delta, min_top1, max_kl))
    if as_json:  # the package block lets `edgekit report` match this result with bench results
        from edgekit.runtime.bench_environment import package_identity

        click.echo(json.dumps({**report.to_dict(), "package": package_identity(pkg)}, indent=2))
    else:
        click.echo(report.table())
    if report.failures:
        sys.exit(1)


# bench options that measure or budget only one kind of package (parameter names)
DECODER_BENCH_OPTIONS = ("prompt_lengths", "new_tokens", "max_ttft_ms", "min_tokens_per_s", "speculative",
                         "draft_len", "float_passes")
ENCODER_BENCH_OPTIONS = ("min_sentences_per_s", "max_latency_ms")


def _refuse_options(pkg: str, manifest: Any, names: tuple[str, ...]) -> None:
    """One line naming the options given on the command line that do not apply to PKG's kind."""
    from click.core import ParameterSource

    from edgekit.runtime.loader import describe_kind

    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params
             if p.name in names and ctx.get_parameter_source(p.name) is not ParameterSource.DEFAULT]
    if given:
        raise EdgekitError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to this package: it "
                           f"is {describe_kind(manifest)}", pkg)


def _int_list(option: str, value: str) -> tuple[int, ...]:
    """A comma-separated option (`--threads 1,2,4`) as integers, or one line naming the option and the value."""
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise EdgekitError(f"{option} must be comma-separated integers, got {value!r}") from None


@main.command()
@click.argument("pkg")
@click.option("--prompt-lengths", default="16,128,512", show_default=True, help="Comma-separated TTFT lengths.")
@click.option("--new-tokens", type=click.IntRange(2), default=64, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
@click.option("--threads", default="0", show_default=True,
              help="Comma-separated thread counts, one row each (the package reloaded per count); "
                   "0: onnxruntime's default.")
@click.option("--fast", is_flag=True, help="int8 activations: faster, not exact (opt-in).")
@click.option("--max-ttft-ms", type=float, default=None, help="Budget: fail if any TTFT is above.")
@click.option("--min-tokens-per-s", type=float, default=None, help="Budget: fail if decode is slower.")
@click.option("--max-rss-mb", type=float, default=None, help="Budget: fail if peak memory is above.")
@click.option("--min-sentences-per-s", type=float, default=None,
              help="Encoders, budget: fail if embedding at batch 32 is slower.")
@click.option("--max-latency-ms", type=float, default=None,
              help="Encoders, budget: fail if the p90 latency at batch 1 is above.")
@click.option("--speculative", type=SPECULATIVE, default=None,
              help="Also measure speculative decoding (acceptance, speedup over plain in the same run).")
@click.option("--draft-len", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--float-passes", is_flag=True, help=FLOAT_PASSES_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "md", "csv"]), default=None,
              help="Output format [table]; json holds the raw per-round numbers and the environment.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@_one_line_errors
def bench(pkg: str, prompt_lengths: str, new_tokens: int, rounds: int, device: str, threads: str, fast: bool,
          max_ttft_ms: float | None, min_tokens_per_s: float | None, max_rss_mb: float | None,
          min_sentences_per_s: float | None, max_latency_ms: float | None, speculative: str | None, draft_len: int,
          float_passes: bool, fmt: str | None, as_json: bool) -> None:
    """Measure PKG's latency on this device; exit 1 when a budget is missed (in any row of a sweep).

    A text decoder: time to first token per prompt length, decode tokens/s and per-token latency. A
    sentence-embedding encoder: sentences/s and latency per batch at batch 1 and 32, over 40 built-in sentences
    of 4 to 60 words."""
    from edgekit.package import read_manifest
    from edgekit.runtime.bench import check_budgets, run_sweep
    from edgekit.runtime.bench_encoder import check_encoder_budgets, run_encoder_sweep
    from edgekit.runtime.bench_formats import render
    from edgekit.runtime.loader import is_encoder

    if as_json and fmt not in (None, "json"):
        raise EdgekitError(f"--json and --format {fmt} disagree (--json is --format json)")
    thread_counts = _int_list("--threads", threads)
    if any(t < 0 for t in thread_counts):
        raise EdgekitError(f"--threads: {min(thread_counts)} is not a thread count (0: onnxruntime's default)")
    manifest = read_manifest(pkg)
    encoder = is_encoder(manifest)
    _refuse_options(pkg, manifest, DECODER_BENCH_OPTIONS if encoder else ENCODER_BENCH_OPTIONS)
    if encoder:
        result = run_encoder_sweep(pkg, thread_counts, rounds=rounds, device=device, fast=fast)
        for row in result.rows:
            check_encoder_budgets(row, min_sentences_per_s, max_latency_ms, max_rss_mb)
    else:
        result = run_sweep(pkg, thread_counts, _int_list("--prompt-lengths", prompt_lengths), new_tokens=new_tokens,
                           rounds=rounds, device=device, fast=fast, speculative=speculative, draft_len=draft_len,
                           float_passes=float_passes)
        for row in result.rows:
            check_budgets(row, max_ttft_ms, min_tokens_per_s, max_rss_mb)
    click.echo(render(result, "json" if as_json else fmt or "table"))
    if result.budget_failures:
        sys.exit(1)


@main.command()
@click.argument("pkg")
@click.option("--ep", type=EXECUTION_PROVIDERS, default=None,
              help="Instead: how many of the graph's nodes this execution provider runs, per op type, and which "
                   "fall back to the CPU (creates one session).")
@click.option("--require-full", is_flag=True, help="With --ep: exit 1 when any node falls back.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or the coverage) as JSON.")
@_one_line_errors
def inspect(pkg: str, ep: str | None, require_full: bool, as_json: bool) -> None:
    """Summarize PKG from its manifest alone (source, architecture, recipe, formats per layer, files, graph,
    targets, tokenizer, draft); loads no graph. With --ep: the graph's coverage on that provider, read from
    onnxruntime's own partitioning (the graph lowered for it, and a static target's step graph, else the
    portable graph)."""
    if ep is None:
        if require_full:
            raise EdgekitError("--require-full needs --ep (the execution provider that must run every node)")
        from edgekit.manifest_summary import summarize, summary_table

        summary = summarize(pkg)
        click.echo(json.dumps(summary, indent=2) if as_json else summary_table(summary))
        return
    from edgekit.runtime.coverage import package_coverage

    (graph, coverage), *others = package_coverage(pkg, ep)
    if as_json:
        more = {"other_graphs": [{"graph": g.name, **c.to_dict()} for g, c in others]} if others else {}
        click.echo(json.dumps({"package": pkg, "graph": graph.name, **coverage.to_dict(), **more}, indent=2))
    else:
        click.echo("\n\n".join(f"graph: {g.name}\n{c.table()}" for g, c in [(graph, coverage), *others]))
    if require_full and not all(c.full for _, c in [(graph, coverage), *others]):
        sys.exit(1)


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="HTML file to write (self-contained: plotly.js embedded, works offline).")
@_one_line_errors
def report(results: tuple[str, ...], out: str) -> None:
    """Chart RESULTS (`bench --format json` outputs, and `validate --json` outputs of the same packages) as one
    HTML page: TTFT and per-token latency distributions, and size against speed coloured by perplexity change."""
    from edgekit.report import write_report

    written = write_report(list(results), out)
    for file in written.unmatched:
        click.echo(f"edgekit: {file}: no bench result of the same package; left out", err=True)
    click.echo(f"wrote {out}: {len(written.bench)} bench rows, "
               f"{len(written.validations) - len(written.unmatched)} validate results")


if __name__ == "__main__":
    main()
