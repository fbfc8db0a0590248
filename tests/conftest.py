"""Shared fixtures: tiny models built once per session, and their exported packages."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import tiny_gguf, tiny_hf_model


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
