"""Seeded fuzzing of the input boundaries (tests/fuzzing.py): every mutated GGUF file, Hugging Face folder and
package ends in a one-line EdgekitError or in success, and every accepted export loads and generates.
Long runs: benchmarks/fuzz.py. Below the seeded runs, one regression case per finding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fuzzing
import pytest

from edgekit.errors import EdgekitError

CASES = {"gguf": 300, "hf": 200, "package": 200}
CASE_SECONDS = 20


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> fuzzing.Bases:
    return fuzzing.Bases.build(tmp_path_factory.mktemp("fuzz") / "bases")


@pytest.mark.parametrize("parser", fuzzing.PARSERS)
def test_seeded_cases_fail_cleanly_or_succeed(parser: str, bases: fuzzing.Bases, tmp_path: Path) -> None:
    slots = fuzzing.gguf_slots(bases.gguf)
    bad, kinds = [], {}
    for seed in range(CASES[parser]):
        workdir = tmp_path / str(seed)
        workdir.mkdir()
        result = fuzzing.with_alarm(CASE_SECONDS, lambda s=seed, w=workdir: fuzzing.run_case(parser, s, bases, w, 1,
                                                                                              slots))
        outcome, what = result if isinstance(result, tuple) else (result, "?")
        kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
        if outcome.kind not in (fuzzing.CLEAN, fuzzing.OK):
            bad.append(f"seed {seed} [{what}]: {outcome.kind} {outcome.detail}")
        shutil.rmtree(workdir)
    assert not bad, f"{len(bad)} of {CASES[parser]} {parser} cases ({kinds}):\n" + "\n".join(bad[:10])
    assert kinds.get(fuzzing.OK, 0) > 0 and kinds.get(fuzzing.CLEAN, 0) > 0, kinds  # the mutations reach both


# -- regressions: one per finding of the fuzzer ------------------------------------------------------------------
def _expect_clean(work: object, *texts: str) -> str:
    outcome = fuzzing.with_alarm(CASE_SECONDS, lambda: fuzzing.classify(work))  # type: ignore[arg-type]
    assert outcome.kind == fuzzing.CLEAN, outcome
    for text in texts:
        assert text in outcome.detail, outcome.detail
    return outcome.detail


def _gguf_with(tmp_path: Path, mutate: object) -> Path:
    w = fuzzing.small_gguf_writer(tmp_path / "case.gguf")
    mutate(w.kv_data[0])  # type: ignore[operator]
    fuzzing.write_gguf(w)
    return tmp_path / "case.gguf"


def _parse_gguf(path: Path) -> None:
    from edgekit.exporters.gguf_source import GGUFSource
    from edgekit.exporters.gguf_tokenizer import build_tokenizer

    build_tokenizer(GGUFSource(path))


def test_gguf_array_length_past_the_end_fails_at_once(bases: fuzzing.Bases, tmp_path: Path) -> None:
    # gguf-py read empty views past the end: an array of 2^40 numbers looped (and grew) instead of failing
    at = next(at for name, at, _ in fuzzing.gguf_slots(bases.gguf) if name == "tokenizer.ggml.token_type[4]")
    data = bytearray(bases.gguf.read_bytes())
    data[at:at + 8] = (1 << 40).to_bytes(8, "little")
    (tmp_path / "long.gguf").write_bytes(bytes(data))
    _expect_clean(lambda: _parse_gguf(tmp_path / "long.gguf"), "long.gguf", "past the end of the file")


@pytest.mark.parametrize(("key", "value", "vtype", "expected"), [
    ("tokenizer.ggml.pre", [1.0, 2.0], "ARRAY", "expected text"),
    ("tokenizer.ggml.model", 3, "INT64", "expected text"),
    ("tokenizer.ggml.merges", 2, "INT64", "not an array of str"),
    ("tokenizer.ggml.token_type", 0.5, "FLOAT64", "not an array of int"),
    ("tokenizer.ggml.scores", -1, "INT64", "not an array of float"),
    ("tokenizer.ggml.tokens", True, "BOOL", "not an array of str"),
    ("tokenizer.ggml.eos_token_id", "default", "STRING", "expected int"),
    ("tokenizer.chat_template", 3, "INT64", "expected text"),
    ("llama.vocab_size", float("-inf"), "FLOAT32", "expected an integer"),
    ("llama.rope.freq_base", float("nan"), "FLOAT32", "rope_theta is nan"),
    ("llama.attention.layer_norm_rms_epsilon", -1.0, "FLOAT32", "rms_norm_eps is -1.0"),
    ("llama.context_length", 1 << 40, "UINT64", "max_position_embeddings"),
])
def test_gguf_metadata_of_the_wrong_type(tmp_path: Path, key: str, value: object, vtype: str, expected: str) -> None:
    import gguf

    def mutate(kv: dict) -> None:
        sub = gguf.GGUFValueType.FLOAT32 if vtype == "ARRAY" else None
        kv[key] = gguf.GGUFValue(value=value, type=gguf.GGUFValueType[vtype], sub_type=sub)

    _expect_clean(lambda: _parse_gguf(_gguf_with(tmp_path, mutate)), "case.gguf", expected)


def test_gguf_norm_stored_as_blocks(tmp_path: Path) -> None:
    import gguf

    w = fuzzing.small_gguf_writer(tmp_path / "case.gguf")
    w.tensors[0]["output_norm.weight"].dtype = gguf.GGMLQuantizationType.Q5_0
    fuzzing.write_gguf(w)
    from edgekit.exporters.pipeline import export

    _expect_clean(lambda: export(str(tmp_path / "case.gguf"), tmp_path / "out"), "output_norm.weight", "dimensions")
    assert not list(tmp_path.glob(".out.partial-*")) and not (tmp_path / "out").exists()


def test_gguf_blocks_with_non_finite_scales(tmp_path: Path) -> None:
    import gguf

    w = fuzzing.small_gguf_writer(tmp_path / "case.gguf")
    info = w.tensors[0]["blk.0.ffn_gate.weight"]
    raw = info.tensor.copy()
    raw[:, 0:2] = 0xFF  # the first block's float16 scale: NaN
    info.tensor = raw
    assert info.dtype == gguf.GGMLQuantizationType.Q4_1
    fuzzing.write_gguf(w)
    from edgekit.exporters.pipeline import export

    _expect_clean(lambda: export(str(tmp_path / "case.gguf"), tmp_path / "out"), "blk.0.ffn_gate.weight", "finite")


# Seeds of benchmarks/fuzz.py's long runs that found something (replayed exactly: the seed decides the mutation).
LONG_RUN_FINDINGS = [
    ("gguf", 2723, "float16"),  # attn_k's type Q4_1 -> Q4_0: -8·d past float16 in the fused qkv offsets
    ("gguf", 5652, "float16"),
    ("package", 1261, "outside the package"),  # tokenizer.file "\x00": ValueError (embedded null byte)
]


@pytest.mark.parametrize(("parser", "seed", "expected"), LONG_RUN_FINDINGS)
def test_long_run_findings(bases: fuzzing.Bases, tmp_path: Path, parser: str, seed: int, expected: str) -> None:
    outcome, what = fuzzing.run_case(parser, seed, bases, tmp_path)
    assert outcome.kind == fuzzing.CLEAN and expected in outcome.detail, (what, outcome)


def _hf_with(bases: fuzzing.Bases, tmp_path: Path, name: str, content: str | bytes) -> Path:
    folder = Path(shutil.copytree(bases.hf, tmp_path / "hf"))
    (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


def _parse_hf(folder: Path) -> None:
    from edgekit.exporters.hf_source import HFSource, hf_tokenizer

    HFSource(folder)
    hf_tokenizer(folder)


def _config(bases: fuzzing.Bases, **changes: object) -> str:
    doc = json.loads((bases.hf / "config.json").read_text())
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("config.json", "[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ("config.json", "3", "config.json: not a JSON object"),
    ("generation_config.json", "", "generation_config.json: not valid JSON"),
    ("generation_config.json", b"{\"eos_token_id\": \"\xd8\"}", "not valid JSON"),
    ("generation_config.json", "[1, 2]", "not a JSON object"),
    ("generation_config.json", '{"eos_token_id": [-1, 1]}', "eos_token_id is -1"),
    ("generation_config.json", '{"bos_token_id": 1e30}', "bos_token_id is 1e+30"),
    ("tokenizer_config.json", "null", "not a JSON object"),
    ("tokenizer_config.json", '{"chat_template": 3}', "chat_template is int"),
])
def test_hf_damaged_json(bases: fuzzing.Bases, tmp_path: Path, name: str, content: str | bytes,
                         expected: str) -> None:
    _expect_clean(lambda: _parse_hf(_hf_with(bases, tmp_path, name, content)), name, expected)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"num_hidden_layers": 10 ** 30}, "num_hidden_layers is"),  # mapped names for every layer: hung
    ({"num_key_value_heads": float("-inf")}, "expected an integer"),
    ({"rope_theta": None}, None),  # null is absent: the default applies
    ({"rope_scaling": float("inf")}, "rope_scaling inf cannot be applied"),
    ({"rope_scaling": {"rope_type": "linear"}}, "cannot be applied (KeyError: 'factor')"),
    ({"sliding_window": -5, "use_sliding_window": True}, "sliding_window is -5"),
])
def test_hf_config_values(bases: fuzzing.Bases, tmp_path: Path, changes: dict, expected: str | None) -> None:
    folder = _hf_with(bases, tmp_path, "config.json", _config(bases, **changes))
    if expected is None:
        _parse_hf(folder)
    else:
        _expect_clean(lambda: _parse_hf(folder), "config.json", expected)


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated_zip", "pickle_exec"])
def test_hf_torch_checkpoint_refused_in_one_line(bases: fuzzing.Bases, tmp_path: Path, kind: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import random

    folder = _hf_with(bases, tmp_path, "pytorch_model.bin", fuzzing._torch_bin(kind, random.Random(1)))
    (folder / "model.safetensors").unlink()
    _expect_clean(lambda: _parse_hf(folder), "pytorch_model.bin", "torch checkpoint")
    assert "pickle code ran" not in capsys.readouterr().out


@pytest.fixture
def pkg(bases: fuzzing.Bases, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bases.package, tmp_path / "pkg"))


def _manifest(pkg: Path, change: object) -> None:
    m = json.loads((pkg / "manifest.json").read_text())
    m = change(m)  # type: ignore[operator]
    (pkg / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))


def _section(key: str, value: object) -> object:
    def change(m: dict) -> dict:
        *parents, last = key.split(".")
        node = m
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return m

    return change


@pytest.mark.parametrize(("change", "expected"), [
    (lambda m: 3, "not a JSON object"),
    (lambda m: [m], "not a JSON object"),
    (lambda m: "[" * 200_000 + "]" * 200_000, "nested too deeply"),
    (_section("files", None), "section 'files'"),
    (_section("tokenizer", KeyError), "section 'tokenizer'"),
    (_section("graph", [1]), "section 'graph'"),
    (lambda m: {**m, "files": {**m["files"], "model.onnx": "x"}}, "files['model.onnx']"),
    (lambda m: {**m, "files": {**m["files"], "model.onnx.data": {"sha256": "0"}}}, "files['model.onnx.data']"),
    (_section("graph.custom_ops", True), "graph.custom_ops"),
    (_section("graph.targets", None), "graph.targets"),
    (_section("tokenizer.file", None), "outside the package (None)"),
    (_section("tokenizer.file", "../outside.json"), "outside the package"),
    (_section("tokenizer.file", "/etc/passwd"), "outside the package"),
    (_section("tokenizer.chat_template", 3), "tokenizer.chat_template"),
    (_section("generation.stop_token_ids", "2"), "stop_token_ids"),
    (_section("draft", {"folder": "../.."}), "outside the package ('../..')"),
    (_section("tokenizer.file", "\x00"), "outside the package ('\\x00')"),  # resolve() raised ValueError
    (_section("model.max_position_embeddings", "64"), "model.max_position_embeddings"),
    (_section("model.num_layers", KeyError), "'model' section"),
])
def test_package_manifest_checked_whole(pkg: Path, change: object, expected: str) -> None:
    _manifest(pkg, change)
    _expect_clean(lambda: fuzzing.generate_two(pkg), "corrupt package", expected)


@pytest.mark.parametrize(("change", "expected"), [
    (_section("graph.contract", "causal-lm-v9"), "unknown graph contract 'causal-lm-v9'"),
    (_section("graph.contract", None), "unknown graph contract None"),
    (_section("encoder", None), "section 'encoder'"),
    (_section("encoder.pooling", "weightedmean"), "encoder.pooling"),
    (_section("encoder.normalize", "yes"), "encoder.normalize"),
    (_section("encoder.max_seq_length", 0), "encoder.max_seq_length"),
    (_section("encoder.dimension", 1.5), "encoder.dimension"),
    (_section("graph.outputs", ["last_hidden_state"]), "graph.outputs"),
    (_section("graph.inputs", ["input_ids", "pixel_values"]), "pixel_values"),
])
def test_encoder_manifest_checked_whole(tiny_encoder_pkg: Path, tmp_path: Path, change: object, expected: str) -> None:
    """An encoder package's own sections are checked before anything runs, as a decoder's are."""
    from edgekit.runtime import load

    pkg = Path(shutil.copytree(tiny_encoder_pkg, tmp_path / "enc"))
    _manifest(pkg, change)
    _expect_clean(lambda: load(pkg, threads=1).embed(["hi there"]), expected)


@pytest.mark.parametrize(("name", "damage", "expected"), [
    ("tokenizer.json", lambda raw: raw[: len(raw) // 2], "cannot read the tokenizer"),
    ("tokenizer.json", lambda raw: b"[]", "cannot read the tokenizer"),
    ("model.cpu.onnx", lambda raw: raw[: len(raw) // 3], "onnxruntime cannot load"),
    ("model.onnx.data", lambda raw: raw[: len(raw) // 2], "onnxruntime cannot load"),
])
def test_package_damage_behind_updated_hashes(pkg: Path, name: str, damage: object, expected: str) -> None:
    p = pkg / name
    p.write_bytes(damage(p.read_bytes()))  # type: ignore[operator]
    fuzzing.rehash(pkg, [name])
    _expect_clean(lambda: fuzzing.generate_two(pkg), expected)


def test_run_on_a_gguf_file_says_export_first(bases: fuzzing.Bases) -> None:
    from edgekit.package import read_manifest

    with pytest.raises(EdgekitError, match=r"this is a GGUF file: export it first \(edgekit export .*small.gguf -o PKG\)"):
        read_manifest(bases.gguf)


# -- through the command line: exit status 2 and one line on stderr ------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "edgekit"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgekit.cli"]
    env = {**os.environ, "EDGEKIT_QUIET": "1"}
    return subprocess.run([*command, *args], check=False, capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_cases(bases: fuzzing.Bases, tmp_path: Path) -> None:
    """A handful of findings through the real command: one stderr line, exit 2, nothing left behind."""
    long_array = tmp_path / "long.gguf"
    at = next(at for name, at, _ in fuzzing.gguf_slots(bases.gguf) if name == "tokenizer.ggml.token_type[4]")
    data = bytearray(bases.gguf.read_bytes())
    data[at:at + 8] = (1 << 40).to_bytes(8, "little")
    long_array.write_bytes(bytes(data))
    bad_hf = _hf_with(bases, tmp_path, "generation_config.json", "[")
    pkg = Path(shutil.copytree(bases.package, tmp_path / "pkg"))
    _manifest(pkg, lambda m: [m])
    cases = [
        (["export", str(long_array), "-o", str(tmp_path / "out")], "past the end of the file"),
        (["export", str(bad_hf), "-o", str(tmp_path / "out")], "generation_config.json: not valid JSON"),
        (["run", str(pkg), "--prompt", "hi"], "not a JSON object"),
        (["run", str(bases.gguf), "--prompt", "hi"], "this is a GGUF file: export it first"),
        (["bench", str(bases.gguf)], "this is a GGUF file: export it first"),
    ]
    for args, expected in cases:
        result = _cli(*args)
        err = result.stderr.strip()
        assert result.returncode == 2, (args, result.returncode, err[-2000:])
        assert len(err.splitlines()) == 1 and err.startswith("edgekit: error: ") and expected in err, (args, err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    ok = _cli("run", str(bases.package), "--prompt", "hi", "--max-new-tokens", "2")
    assert ok.returncode == 0, ok.stderr
