"""Sentence-embedding packages at run time: Encoder.embed against a torch reference, batching, padding, threads,
load() by contract, and the wrong kind of package refused in one line (API and CLI)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from edgekit.runtime import Encoder, Model, load
from factories import ENCODER_MAX_SEQ_LENGTH

from edgekit.errors import EdgekitError

TEXTS = ["A cat sat on the mat.", "Hello", "The quick brown fox jumps over the lazy dog near the quiet river bank.",
         "word " * 100, "", "Déjà vu: naïve café crème.", "1 2 3"]


def reference_embeddings(src: Path, texts: list[str]) -> np.ndarray:
    """transformers' BertModel on each text alone (no padding), mean pooling and L2 normalization, as
    sentence-transformers computes them; texts cut at the folder's max_seq_length."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(ENCODER_MAX_SEQ_LENGTH)
    model = transformers.AutoModel.from_pretrained(str(src), local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            out.append(torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def encoder(tiny_encoder_pkg: Path) -> Encoder:
    return Encoder(tiny_encoder_pkg)


def test_embed_shapes_dtype_and_norms(encoder: Encoder) -> None:
    assert (encoder.dimension, encoder.max_length, encoder.normalize) == (32, ENCODER_MAX_SEQ_LENGTH, True)
    vectors = encoder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one = encoder.embed("Hello")
    assert one.shape == (1, 32)
    np.testing.assert_allclose(one[0], vectors[1], atol=1e-6)
    assert encoder.embed([]).shape == (0, 32) and encoder.embed(iter(["Hello"])).shape == (1, 32)


def test_float_package_matches_torch(encoder: Encoder, tiny_encoder_src: Path) -> None:
    """Within 1e-4 of the torch model, the 100-word text cut at max_seq_length as in sentence-transformers."""
    np.testing.assert_allclose(encoder.embed(TEXTS), reference_embeddings(tiny_encoder_src, TEXTS), atol=1e-4)


def test_int8_package_is_close_to_float(encoder: Encoder, tiny_encoder_int8_pkg: Path) -> None:
    cosine = (Encoder(tiny_encoder_int8_pkg).embed(TEXTS) * encoder.embed(TEXTS)).sum(axis=1)
    assert cosine.min() > 0.99, cosine


@pytest.mark.parametrize("pkg", ["tiny_encoder_pkg", "tiny_encoder_int8_pkg"])
def test_batch_size_and_padding_do_not_change_vectors(pkg: str, request: pytest.FixtureRequest) -> None:
    model = Encoder(request.getfixturevalue(pkg))
    batched = model.embed(TEXTS, batch_size=32)
    np.testing.assert_allclose(model.embed(TEXTS, batch_size=1), batched, atol=1e-5)
    np.testing.assert_allclose(model.embed(TEXTS, batch_size=3), batched, atol=1e-5)
    # a short text padded to a long one's length in the same batch, and alone
    np.testing.assert_allclose(model.embed(["Hello", "word " * 40])[0], model.embed("Hello")[0], atol=1e-5)


def test_bad_texts_and_batch_sizes_name_the_value(encoder: Encoder) -> None:
    with pytest.raises(TypeError, match="text 1 is not a str: int 3"):
        encoder.embed(["fine", 3])
    with pytest.raises(TypeError, match="takes a str or a sequence of str, got bytes"):
        encoder.embed(b"bytes")
    with pytest.raises(TypeError, match="got int"):
        encoder.embed(5)  # type: ignore[arg-type]
    for size in (0, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            encoder.embed(["x"], batch_size=size)  # type: ignore[arg-type]


def test_threads_share_one_encoder(encoder: Encoder) -> None:
    """Threads embedding different batches at once each get what one thread alone gets."""
    jobs = [TEXTS[i:] + TEXTS[:i] for i in range(6)]
    expected = [encoder.embed(job, batch_size=2) for job in jobs]
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(len(jobs))}

    def work(i: int) -> None:
        for _ in range(5):
            results[i].append(encoder.embed(jobs[i], batch_size=2))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, runs in results.items():
        assert len(runs) == 5
        for got in runs:
            np.testing.assert_allclose(got, expected[i], atol=1e-6)


def test_load_gives_the_package_kind(tiny_encoder_pkg: Path, tiny_gguf_pkg: Path) -> None:
    assert isinstance(load(tiny_encoder_pkg, threads=1), Encoder)
    assert isinstance(load(tiny_gguf_pkg), Model)
    with pytest.raises(TypeError, match=r"a sentence-embedding encoder \(bert\): Encoder takes no max_length"):
        load(tiny_encoder_pkg, max_length=16)


def test_the_other_kind_is_refused_in_one_line(tiny_encoder_pkg: Path, tiny_gguf_pkg: Path) -> None:
    with pytest.raises(EdgekitError, match=r"is a sentence-embedding encoder \(bert\): load it with "
                                           r"edgekit.runtime.load\(\), which gives an Encoder"):
        Model(tiny_encoder_pkg)
    with pytest.raises(EdgekitError, match=r"is a text decoder \(llama\): load it with edgekit.runtime.load\(\), "
                                           r"which gives a Model"):
        Encoder(tiny_gguf_pkg)


def test_graph_inputs_and_outputs_are_checked(tiny_encoder_pkg: Path, tmp_path: Path) -> None:
    """A graph taking an input the runtime cannot fill, or a manifest with other outputs, is refused in one line."""
    import json
    import shutil

    for key, value, words in (("inputs", ["input_ids", "pixel_values"], "takes input(s) ['pixel_values']"),
                              ("outputs", ["last_hidden_state"], "graph.outputs is not ['sentence_embedding']")):
        pkg = tmp_path / key
        shutil.copytree(tiny_encoder_pkg, pkg)
        manifest = json.loads((pkg / "manifest.json").read_text())
        manifest["graph"][key] = value
        (pkg / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(EdgekitError, match=re.escape(words)):
            Encoder(pkg)
