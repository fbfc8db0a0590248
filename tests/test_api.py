"""The Python API: generate/stream keywords, chat messages, lists of prompts, stop strings, argument checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from edgekit.runtime import GenerationConfig, load
from edgekit.runtime.generator import Model, StopStrings
from edgekit.runtime.sampling import SamplingParams

NO_STOP = GenerationConfig(stop_token_ids=())  # random tiny weights: never end on <|im_end|> by chance


@pytest.fixture(scope="module")
def model(tiny_gguf_pkg: Path) -> Model:
    return load(tiny_gguf_pkg)


def test_stream_and_generate_take_transformers_keywords(model: Model) -> None:
    nested = GenerationConfig(12, SamplingParams(temperature=0.8, top_k=50, top_p=0.9), seed=3, stop_token_ids=())
    expected = model.generate("the cat", gen=nested)
    flat = {"max_new_tokens": 12, "temperature": 0.8, "top_k": 50, "top_p": 0.9, "seed": 3}
    assert model.generate("the cat", gen=NO_STOP, **flat) == expected
    assert "".join(model.stream("the cat", gen=NO_STOP, **flat)) == expected
    assert len(list(model.generate_ids(model.encode("the cat"), NO_STOP, max_new_tokens=5))) == 5


def test_chat_messages_render_through_the_chat_template(model: Model) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    rendered = model.prompt_text(messages)
    assert "<|im_start|>system\nYou are terse.<|im_end|>" in rendered and rendered.endswith("assistant\n")
    assert model.generate(messages, max_new_tokens=8, gen=NO_STOP) == model.generate(rendered, max_new_tokens=8,
                                                                                     gen=NO_STOP)
    user_only = [{"role": "user", "content": "Hi"}]
    assert model.generate("Hi", chat=True, max_new_tokens=8) == model.generate(user_only, max_new_tokens=8)


def test_a_list_of_prompts_gives_a_list_of_texts(model: Model) -> None:
    prompts = ["the cat", [{"role": "user", "content": "Hi"}], "the dog"]
    out = model.generate(prompts, max_new_tokens=6, gen=NO_STOP)
    assert out == [model.generate(p, max_new_tokens=6, gen=NO_STOP) for p in prompts]
    with pytest.raises(TypeError, match="stream\\(\\) takes one prompt"):
        model.stream(["a", "b"])


def test_stop_strings_end_the_text_before_them(model: Model) -> None:
    full = model.generate("the cat sat", max_new_tokens=40, gen=NO_STOP)
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = full[:full.index(stop)]
    assert model.generate("the cat sat", max_new_tokens=40, gen=NO_STOP, stop=[stop, "\x00never"]) == cut
    stream = model.stream("the cat sat", max_new_tokens=40, gen=NO_STOP, stop=stop)
    assert "".join(stream) == cut
    assert stream.stats.target_passes < 40  # generation ended at the stop string, not at the length limit


def test_streaming_holds_back_only_what_may_start_a_stop_string() -> None:
    stops = StopStrings(["</end>", "STOP"])
    assert stops.push("hello <") == "hello "  # "<" may start "</end>"
    assert stops.push("/e") == ""  # "</e" still may
    assert stops.push("x ST") == "</ex "  # not a stop after all; "ST" may start "STOP"
    assert stops.push("AR") == "STAR"
    assert stops.push("t S") == "t "
    assert stops.flush() == "S" and not stops.found
    stops = StopStrings(["STOP"])
    assert stops.push("abc STO") == "abc " and stops.push("P and more") == "" and stops.found


@pytest.mark.parametrize(("options", "error", "named"), [
    ({"max_new_tokens": -3}, ValueError, "-3"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": 2.5}, ValueError, "2.5"),
    ({"temperature": -0.1}, ValueError, "-0.1"),
    ({"temperature": math.nan}, ValueError, "nan"),
    ({"top_p": 0}, ValueError, "top_p"),
    ({"top_p": 1.5}, ValueError, "1.5"),
    ({"top_p": math.nan}, ValueError, "nan"),
    ({"top_k": -1}, ValueError, "top_k"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, ValueError, "1.5"),
    ({"seed": "7"}, ValueError, "'7'"),
    ({"stop": [""]}, ValueError, "stop"),
    ({"speculative": "magic"}, ValueError, "magic"),
    ({"max_tokens": 5}, TypeError, "max_tokens"),
])
def test_invalid_arguments_are_refused_before_generating(model: Model, options: dict, error: type,
                                                         named: str) -> None:
    with pytest.raises(error, match=named):
        model.stream("the cat", **options)  # at the call, not at the first piece
    with pytest.raises(error, match=named):
        model.generate("the cat", **options)
    assert model._caches.in_use == 0


def test_bad_prompts_are_refused(model: Model) -> None:
    with pytest.raises(TypeError, match="a prompt is a str"):
        model.generate(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="chat message 0"):
        model.generate([{"role": "user"}])
    with pytest.raises(ValueError, match="empty prompt list"):
        model.generate([])


def test_a_chat_reuses_its_cache_between_turns(model: Model) -> None:
    conversation = model.chat("Be brief.", gen=GenerationConfig(max_new_tokens=8))
    assert model._caches.in_use == 1
    first = "".join(conversation.send("Hello"))
    second = conversation.send("And then?")
    reply = "".join(second)
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conversation.messages[2]["content"] == first and conversation.messages[4]["content"] == reply
    fresh = model.stream(conversation.messages[:4], max_new_tokens=8)
    assert "".join(fresh) == reply  # the cached prefix gives what a fresh cache gives
    assert second.stats.prompt_tokens < fresh.stats.prompt_tokens / 2  # only the new turn was run
    conversation.close()
    assert model._caches.in_use == 0
    with pytest.raises(ValueError, match="closed"):
        conversation.send("again")
