"""One loaded Model shared by threads and by interleaved generators: every generation runs on KV caches of its
own (checked out of the model's pool), so each output equals what it is when generated alone."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from edgekit.runtime import GenerationConfig, load
from edgekit.runtime.decoder import StatePool
from edgekit.runtime.generator import Model

WORDS = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "to", "the", "park", "while",
         "birds", "sang", "songs", "of", "spring", "1", "2", "3"]
GREEDY = GenerationConfig(max_new_tokens=24, stop_token_ids=())


def prompts(n: int, repeat: bool = False) -> list[str]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 12))))
        out.append(" ".join(words + words if repeat else words))  # repeated text: prompt lookup finds drafts
    return out


def in_threads(jobs: list[Callable[[], object]]) -> list[object]:
    """Run the jobs at once, one thread each, released together by a barrier."""
    barrier = threading.Barrier(len(jobs))

    def start(job: Callable[[], object]) -> object:
        barrier.wait()
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(start, jobs))


def token_ids(model: Model, texts: list[str], gen: GenerationConfig = GREEDY) -> list[list[int]]:
    return [list(model.generate_ids(model.encode(t), gen)) for t in texts]


@pytest.fixture(scope="module")
def model(tiny_gguf_pkg: Path) -> Model:
    return load(tiny_gguf_pkg)


def test_four_threads_of_greedy_prompts_equal_serial_output(model: Model) -> None:
    texts = prompts(32)
    serial = token_ids(model, texts)
    shares = [texts[i::4] for i in range(4)]
    parallel = in_threads([lambda share=share: token_ids(model, share) for share in shares])
    for i, share in enumerate(parallel):
        assert share == serial[i::4]
    assert model._caches.in_use == 0 and model._caches.idle == 1  # the extra caches were freed


def test_interleaved_streams_equal_their_serial_outputs(model: Model) -> None:
    a, b = prompts(2)
    expected = [model.generate(a, gen=GREEDY), model.generate(b, gen=GREEDY)]
    streams = [model.stream(a, gen=GREEDY), model.stream(b, gen=GREEDY)]
    texts, live = ["", ""], [True, True]
    while any(live):
        for i, stream in enumerate(streams):  # one piece from each in turn
            if live[i]:
                piece = next(stream, None)
                live[i] = piece is not None
                texts[i] += piece or ""
    assert texts == expected and texts[0] != texts[1]
    assert model._caches.created >= 2 and model._caches.in_use == 0


def test_an_abandoned_generation_gives_its_cache_back(model: Model) -> None:
    pool = model._caches
    unstarted = model.stream("the cat", gen=GREEDY)
    assert pool.in_use == 0  # caches are taken at the first token, not before
    stream = model.stream("the cat", gen=GREEDY)
    next(stream)
    assert pool.in_use == 1
    stream.close()
    assert pool.in_use == 0 and pool.idle == 1
    tokens = model.generate_ids(model.encode("the dog"), GREEDY)
    next(tokens)
    assert pool.in_use == 1
    del tokens, unstarted  # garbage-collected mid-way
    gc.collect()
    assert pool.in_use == 0 and pool.idle == 1


def test_the_pool_keeps_at_most_max_idle_states() -> None:
    made: list[object] = []
    pool = StatePool(lambda: made.append(object()) or made[-1], max_idle=2)
    states = [pool.acquire() for _ in range(5)]
    assert pool.in_use == 5 and pool.created == 5
    for s in states:
        pool.release(s)
    assert pool.in_use == 0 and pool.idle == 2
    with pool.checkout() as state:
        assert state in states and pool.created == 5  # an idle one is reused


@pytest.mark.parametrize("variant", ["ngram", "ngram+float_passes", "draft"])
def test_speculative_generation_beside_a_plain_one_stays_identical(tiny_gguf_pkg: Path, draft_pkg: Path,
                                                                   variant: str) -> None:
    """Drafts, the draft model's cache, the float-passes session and the shared pass-cost table under threads."""
    if variant == "draft":
        model = load(draft_pkg, draft=True)
    else:
        model = load(tiny_gguf_pkg, float_passes=variant.endswith("float_passes"))
    mode = variant.split("+")[0]
    spec_gen = GenerationConfig(24, stop_token_ids=(), speculative=mode, draft_len=5, draft_min_confidence=0.0)
    spec_texts, plain_texts = prompts(8, repeat=True), prompts(8)
    expected = token_ids(model, spec_texts), token_ids(model, plain_texts)

    def run(texts: list[str], gen: GenerationConfig) -> tuple[list[list[int]], int]:
        out, drafted = [], 0
        for text in texts:
            out.append(list(model.generate_ids(model.encode(text), gen)))
            drafted += model.last_stats.drafted  # this thread's latest generation, whatever the other does
        return out, drafted

    (spec_out, spec_drafted), (plain_out, plain_drafted) = in_threads([lambda: run(spec_texts, spec_gen),
                                                                        lambda: run(plain_texts, GREEDY)])
    assert (spec_out, plain_out) == expected
    assert spec_drafted > 0 and plain_drafted == 0
