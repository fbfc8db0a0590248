"""`edgekit inspect PKG`: what a package holds, from its manifest alone (no graph is read, no session made).

`summarize` gives a plain dict (the `--json` output); `summary_table` renders it for a terminal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edgekit.model_config import PER_LAYER, ModelConfig
from edgekit.package import MANIFEST, Manifest, read_manifest, sha256_of

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
_LAYER_TENSOR = re.compile(r"layers\.(\d+)\.(\w+)$")


def layer_formats(tensor_formats: dict[str, str], num_layers: int) -> list[dict[str, Any]]:
    """One entry per layer: {"index": i, "q": format, ..., "down": format} ("-" where the manifest has none)."""
    rows = [{"index": i, **dict.fromkeys(PROJECTIONS, "-")} for i in range(num_layers)]
    for name, fmt in tensor_formats.items():
        m = _LAYER_TENSOR.match(name)
        if m and int(m.group(1)) < num_layers and m.group(2) in PROJECTIONS:
            rows[int(m.group(1))][m.group(2)] = fmt
    return rows


def tensor_groups(tensor_formats: dict[str, str]) -> dict[str, str]:
    """Formats of a graph built through optimum, its tensors (torch module paths) grouped over layer indices:
    `encoder.layer.*.attention.self.query` -> `int4g32` (formats joined when the layers differ)."""
    groups: dict[str, list[str]] = {}
    for name, fmt in tensor_formats.items():
        fmts = groups.setdefault(re.sub(r"\.\d+(?=\.|$)", ".*", name), [])
        if fmt not in fmts:
            fmts.append(fmt)
    return {pattern: ", ".join(fmts) for pattern, fmts in groups.items()}


def parameter_count(model: dict[str, Any]) -> int:
    """Weights of the decoder's matrices and norms, from the architecture (the embedding counted once if tied)."""
    c = ModelConfig.from_dict(model)
    h, hd = c.hidden_size, c.head_dim
    total = h
    for i in range(c.num_layers):
        heads, kv = c.heads_of(i), c.kv_heads_of(i)
        total += h * heads * hd * 2 + h * kv * hd * 2 + (heads * hd + 2 * kv * hd if c.attention_bias else 0)
        total += 3 * h * c.intermediate_size_of(i) + 2 * h
    return total + model["vocab_size"] * h * (1 if model.get("tie_word_embeddings") else 2)


def summarize(folder: str | Path) -> dict[str, Any]:
    """The manifest's facts, grouped as `inspect` shows them (sizes in bytes)."""
    folder = Path(folder)
    manifest: Manifest = read_manifest(folder)
    d = manifest.data
    model = d["model"]
    recipe = d.get("recipe", {})
    formats = recipe.get("tensor_formats", {})
    graph = d.get("graph", {})
    tok = d.get("tokenizer", {})
    files = {name: int(e["size"]) for name, e in manifest.files.items()}
    return {
        "package": str(folder.resolve()),
        "manifest_sha256": sha256_of(folder / MANIFEST),
        "edgekit_version": d.get("edgekit_version"),
        "created": d.get("created"),
        "source": {k: d.get("source", {}).get(k) for k in ("name", "kind", "file", "sha256")},
        "architecture": {**model, "parameters": graph.get("parameters") or parameter_count(model)},
        "recipe": {k: v for k, v in recipe.items() if k != "tensor_formats"},
        "formats": {
            "embed": formats.get("embed"),
            "lm_head": formats.get("lm_head") or ("tied to embed" if model.get("tie_word_embeddings") else None),
            "layers": layer_formats(formats, model["num_layers"]),
            "groups": tensor_groups(formats) if graph.get("builder") == "optimum" else {},
        },
        "encoder": d.get("encoder"),
        "files": files,
        "total_bytes": sum(files.values()),
        "graph": {
            "contract": graph.get("contract"),
            "builder": graph.get("builder", "native"),
            "file": graph.get("file"),
            "weights": graph.get("weights"),
            "custom_ops": graph.get("custom_ops", []),
            "opsets": graph.get("opsets", {}),
            "targets": graph.get("targets", {}),
        },
        "tokenizer": {
            "file": tok.get("file"),
            "bos": [tok.get("bos_token_id"), tok.get("bos_token")],
            "eos": [tok.get("eos_token_id"), tok.get("eos_token")],
            "add_bos_token": tok.get("add_bos_token"),
            "stop_token_ids": tok.get("stop_token_ids"),
            "chat_template": bool(tok.get("chat_template")),
            "chat_template_chars": len(tok.get("chat_template") or ""),
        },
        "generation": d.get("generation", {}),
        "draft": d.get("draft"),
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _layer_ranges(layers: list[dict[str, Any]], keys: tuple[str, ...] = PROJECTIONS) -> list[tuple[str, list[str]]]:
    """Consecutive layers with the same values under `keys` folded into one row ("0-29")."""
    out: list[tuple[int, int, list[str]]] = []
    for row in layers:
        fmts = [row[p] for p in keys]
        if out and out[-1][2] == fmts and out[-1][1] == row["index"] - 1:
            out[-1] = (out[-1][0], row["index"], fmts)
        else:
            out.append((row["index"], row["index"], fmts))
    return [(str(a) if a == b else f"{a}-{b}", fmts) for a, b, fmts in out]


def _grid(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return [indent + "  ".join(f"{c:<{w}}" for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]


def _pruning_lines(p: dict[str, Any]) -> list[str]:
    """How the source was pruned, and each layer's kept shape (runs of equal layers merged)."""
    n = p.get("parameters", {})
    line = (f"pruned        {p.get('request')}: {n.get('before', 0) / 1e6:.1f}M -> {n.get('after', 0) / 1e6:.1f}M "
            f"parameters ({n.get('removed', 0):.1%} removed), {p.get('method')} importance")
    if p.get("dropped_layers"):
        line += f", source layers dropped {p['dropped_layers']}"
    rec = p.get("recovery")
    if isinstance(rec, dict):
        aware = f" through {rec['quantization_aware']} rounding" if rec.get("quantization_aware") else ""
        line += (f", recovered {rec.get('steps')} steps{aware} (KL {rec.get('kl_before', 0):.3f} -> "
                 f"{rec.get('kl_after', 0):.3f})")
    shapes = [{"index": i, "kept": f"{x.get('heads')}/{x.get('kv_heads')} heads, MLP {x.get('intermediate_size')}"}
              for i, x in enumerate(p.get("layers", []))]
    rows = [[idx, *kept] for idx, kept in _layer_ranges(shapes, ("kept",))]
    return [line, *_grid(["layers", "kept (query/key-value heads, MLP channels)"], rows, " " * 14)]


def summary_table(s: dict[str, Any]) -> str:
    a, r, g, t = s["architecture"], s["recipe"], s["graph"], s["tokenizer"]
    src = s["source"]
    lines = [(f"package       {s['package']} (manifest sha256 {s['manifest_sha256'][:12]}, edgekit "
             f"{s['edgekit_version']}, {s['created']})"),
             f"source        {src['name']} ({src['kind']}: {src['file']}"
             + (f", sha256 {src['sha256'][:12]}" if src["sha256"] else "") + ")",
             f"architecture  {a['architecture']}: {a['num_layers']} layers, hidden {a['hidden_size']}, heads "
             f"{a['num_heads']}/{a['num_kv_heads']} kv x {a['head_dim']}, MLP {a['intermediate_size']}"
             + (" (pruned: per-layer shapes)" if any(a.get(k) for k in PER_LAYER) else "")
             + f", vocab {a['vocab_size']}, context {a['max_position_embeddings']}, "
             f"{a['parameters'] / 1e6:.1f}M parameters"
             + (", tied embeddings" if a.get("tie_word_embeddings") else "")
             + (f", sliding window {a['sliding_window']}" if a.get("sliding_window") else "")]
    recipe = [r.get("method", "?")]
    if r.get("bits"):
        recipe.append(f"{r['bits']}-bit, group {r.get('group_size')}" + (" symmetric" if r.get("symmetric") else ""))
    if r.get("bits_per_weight"):
        recipe.append(f"{r['bits_per_weight']:.2f} bits/weight ({r.get('bits_per_weight_all') or 0:.2f} with embed)")
    for key, label in (("plan", "plan"), ("calibration", "calibration")):
        if r.get(key):
            recipe.append(f"{label}: {r[key]}")
    if r.get("tune_steps"):
        recipe.append(f"tuned {r['tune_steps']} steps")
    lines.append("recipe        " + ", ".join(recipe) + f"; formats {json.dumps(r.get('summary', {}))}")
    if isinstance(r.get("pruning"), dict):
        lines += _pruning_lines(r["pruning"])
    f = s["formats"]
    if f["groups"]:
        lines.append("formats       per tensor (torch module paths, * for every layer):")
        lines += _grid(["tensor", "format"], [[k, v] for k, v in f["groups"].items()], " " * 14)
    else:
        lines.append(f"formats       embed {f['embed']}, lm_head {f['lm_head']}; per layer:")
        lines += _grid(["layers", *PROJECTIONS], [[idx, *fmts] for idx, fmts in _layer_ranges(f["layers"])],
                       " " * 14)
    if s["encoder"]:
        e = s["encoder"]
        lines.append(f"encoder       {e.get('pooling')} pooling" + (", normalized" if e.get("normalize") else "")
                     + f", {e.get('dimension')} dimensions, at most {e.get('max_seq_length')} tokens")
    lines.append(f"files         {_mb(s['total_bytes'])} in {len(s['files'])} files:")
    lines += _grid(["file", "size"], [[name, _mb(size)] for name, size in s["files"].items()], " " * 14)
    opsets = ", ".join(f"{k} {v}" for k, v in g["opsets"].items())
    lines.append(f"graph         contract {g['contract']}, {g['builder']} builder, {g['file']} + {g['weights']}, "
                 f"opsets {opsets}")
    lines.append(f"custom ops    {', '.join(g['custom_ops']) or 'none'}")
    targets = [f"{name} ({e.get('provider')}): {e.get('file')}" + (f", fast {e['fast_file']}" if e.get("fast_file")
                                                                    else "")
               + (f", step {e['step_file']}" if e.get("step_file") else "") for name, e in g["targets"].items()]
    lines.append("targets       portable: " + str(g["file"]) + "".join(f"; {x}" for x in targets))
    lines.append(f"tokenizer     {t['file']}, bos {t['bos'][0]} {t['bos'][1]!r}, eos {t['eos'][0]} {t['eos'][1]!r}, "
                 f"stop ids {t['stop_token_ids']}, add bos {t['add_bos_token']}, chat template "
                 + (f"yes ({t['chat_template_chars']} chars)" if t["chat_template"] else "no"))
    draft = s["draft"]
    if draft:
        m = draft.get("measured") or {}
        src_name = draft["source"].get("name") if isinstance(draft.get("source"), dict) else draft.get("source")
        lines.append(f"draft         {draft.get('folder')}/: {src_name}, {draft.get('layers')} layers"
                     + (f", measured acceptance {m['acceptance_rate']:.0%} ({m['accepted_per_pass']:.2f} "
                        f"accepted per pass at k={m['draft_len']})" if m else ""))
    else:
        lines.append("draft         none")
    return "\n".join(lines)
