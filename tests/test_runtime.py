"""Runtime mechanics: KV cache, rollback, sampling, streaming, chat template, context limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgekit.runtime import GenerationConfig, load
from edgekit.runtime.sampling import SamplingParams, token_distribution
from edgekit.runtime.text import StreamDecoder

from edgekit.errors import EdgekitError

IDS = [504, 3575, 282, 4649, 314, 216, 33, 34, 35, 8923]


def test_incremental_decoding_equals_one_pass(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    full = model.logits(IDS)
    model.decoder.reset()
    parts = [model.decoder.forward(IDS[:4], n_logits=4), model.decoder.forward(IDS[4:7], n_logits=3)]
    parts += [model.decoder.forward([t]) for t in IDS[7:]]
    np.testing.assert_allclose(np.concatenate(parts), full, atol=1e-4, rtol=0)


def test_rollback_gives_the_logits_of_a_fresh_run(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    d = model.decoder
    d.reset()
    d.forward(IDS[:6], n_logits=1)
    d.forward([9, 9, 9])  # tokens that are then rejected
    d.rollback(6)
    after = d.forward(IDS[6:], n_logits=len(IDS) - 6)
    np.testing.assert_allclose(after, model.logits(IDS)[6:], atol=1e-4, rtol=0)


def test_sampling_is_reproducible_with_a_seed_and_varies_without(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    gen = GenerationConfig(max_new_tokens=12, sampling=SamplingParams(temperature=1.5), seed=7, stop_token_ids=())
    a = list(model.generate_ids(IDS, gen))
    b = list(model.generate_ids(IDS, gen))
    assert a == b
    others = {tuple(model.generate_ids(IDS, GenerationConfig(12, gen.sampling, s, ()))) for s in range(4)}
    assert len(others) > 1


def test_top_k_and_top_p_restrict_the_distribution() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    p = token_distribution(logits, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])
    p = token_distribution(logits, SamplingParams(temperature=1.0, top_p=0.7))
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])
    p = token_distribution(logits, SamplingParams(temperature=1.0))
    np.testing.assert_allclose(p, [0.5, 0.3, 0.15, 0.05])


def test_invalid_sampling_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(temperature=1.0, top_p=0)


def test_streaming_pieces_join_to_the_full_text(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    text = "naïve café — 東京 🙂 done"
    ids = model.codec.encode(text)
    stream = StreamDecoder(model.codec)
    assert "".join(stream.push(t) for t in ids) == model.codec.decode(ids) == text


def test_stream_and_generate_agree_and_stop_at_stop_tokens(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    gen = GenerationConfig(max_new_tokens=16, stop_token_ids=())
    ids = list(model.generate_ids(IDS[:5], gen))
    stop = ids[3]
    stopped = list(model.generate_ids(IDS[:5], GenerationConfig(16, stop_token_ids=(stop,))))
    assert stopped == ids[:ids.index(stop)]


def test_chat_template_renders_the_user_turn(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg)
    prompt = model.codec.chat_prompt([{"role": "user", "content": "Hi there"}])
    assert "<|im_start|>user\nHi there<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_prompt_longer_than_the_context_is_refused(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg, max_length=16)
    with pytest.raises(EdgekitError, match="prompt has .* tokens; the context holds 16"):
        model.encode("word " * 40)


def test_generation_stops_at_the_context_limit(tiny_gguf_pkg: Path) -> None:
    model = load(tiny_gguf_pkg, max_length=16)
    out = list(model.generate_ids(IDS, GenerationConfig(max_new_tokens=100, stop_token_ids=())))
    assert len(out) == 16 - len(IDS)


def test_unavailable_provider_falls_back_to_cpu_with_a_message(tiny_gguf_pkg: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    model = load(tiny_gguf_pkg, device="openvino")
    assert model.provider == "CPUExecutionProvider"
    assert "falling back to CPUExecutionProvider" in capsys.readouterr().err
