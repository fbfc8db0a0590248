"""Shared fixtures: tiny models built once per session, and their exported packages."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import tiny_gguf, tiny_hf_model, tiny_optimum_decoder, tiny_sentence_encoder


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_hf_model(tmp_path_factory.mktemp("tiny_hf") / "model")


@pytest.fixture(scope="session")
def tiny_gguf_file(tmp_path_factory: pytest.TempPathFactory, tiny_hf: Path) -> Path:
    return tiny_gguf(tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf", tiny_hf)


@pytest.fixture(scope="session")
def tiny_gguf_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_file: Path) -> Path:
    from edgekit.exporters.pipeline import export

    out = tmp_path_factory.mktemp("pkgs") / "tiny_gguf_pkg"
    export(str(tiny_gguf_file), out)
    return out


@pytest.fixture(scope="session")
def tiny_hf_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_hf: Path) -> Path:
    from edgekit.exporters.pipeline import export

    out = tmp_path_factory.mktemp("pkgs") / "tiny_hf_pkg"
    export(str(tiny_hf), out)
    return out


@pytest.fixture(scope="session")
def draft_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_hf: Path) -> Path:
    """The tiny target with a different tiny model (same tokenizer) as its draft."""
    from edgekit.exporters.pipeline import export

    root = tmp_path_factory.mktemp("draft_pkg")
    draft_src = tiny_hf_model(root / "draft_src", seed=1, num_hidden_layers=1)
    export(str(tiny_hf), root / "pkg", draft=str(draft_src))
    return root / "pkg"


@pytest.fixture(scope="session")
def auto_draft_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny target whose draft is `--draft auto`: 2 of its layers, distilled from it (on a text file: the
    target's own text, the default, costs more time than tests need)."""
    from edgekit.exporters.pipeline import export

    from edgekit.evaltext import default_text

    root = tmp_path_factory.mktemp("auto_draft_pkg")
    src = tiny_hf_model(root / "src", num_hidden_layers=4)
    calib = root / "calib.txt"
    calib.write_text(default_text()[:12_000])
    export(str(src), root / "pkg", draft="auto", draft_layers=2, draft_steps=30, calib=str(calib))
    return root / "pkg"


@pytest.fixture(scope="session")
def tiny_encoder_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sentence_encoder(tmp_path_factory.mktemp("tiny_encoder") / "model")


@pytest.fixture(scope="session")
def tiny_encoder_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_src: Path) -> Path:
    """The tiny sentence encoder exported in float."""
    from edgekit.exporters.pipeline import export

    out = tmp_path_factory.mktemp("pkgs") / "tiny_encoder_pkg"
    export(str(tiny_encoder_src), out)
    return out


@pytest.fixture(scope="session")
def tiny_encoder_int8_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_src: Path) -> Path:
    from edgekit.exporters.pipeline import export
    from edgekit.exporters.quantize.spec import quant_config_from_options

    out = tmp_path_factory.mktemp("pkgs") / "tiny_encoder_int8_pkg"
    export(str(tiny_encoder_src), out, quant=quant_config_from_options("int8", group_size=16))
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (no native builder) exported through optimum at int4."""
    from edgekit.exporters.pipeline import export
    from edgekit.exporters.quantize.spec import quant_config_from_options

    root = tmp_path_factory.mktemp("tiny_gpt2")
    export(str(tiny_optimum_decoder(root / "src", "gpt2")), root / "pkg", quant=quant_config_from_options("int4", 32))
    return root / "pkg"
