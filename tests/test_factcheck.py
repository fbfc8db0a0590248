"""The factual check's paired comparison (edgekit.factcheck.paired_drop): what the pruning benchmark's
"facts lost" column and its interval rest on."""

from __future__ import annotations

import pytest

from edgekit.factcheck import FACTS, first_word, paired_drop

PROMPTS = [p for p, _ in FACTS]


def test_paired_drop_counts_the_prompts_the_models_disagree_on() -> None:
    """Reference right on 143 of 198; the other model loses 23 of those and gains 3 it missed: 20 fewer right.
    The interval, worked by hand from Agresti and Min's formula: (23.5 - 3.5) / 200 -/+ 1.96 * sqrt((27 / 200 -
    (20 / 200)^2) / 200) = 0.1 -/+ 0.049."""
    assert len(PROMPTS) == 198
    reference = PROMPTS[:55]
    other = PROMPTS[3:55] + PROMPTS[100:123]  # gains 3 (PROMPTS[:3]), loses 23 (PROMPTS[100:123])
    drop, lo, hi = paired_drop(reference, other)
    assert drop == pytest.approx(20 / 198)
    assert (lo, hi) == pytest.approx((0.051, 0.149), abs=1e-9)


def test_paired_drop_is_narrower_when_the_models_disagree_less() -> None:
    """The same 20 prompts lost net, lost on 20 and gained on none, is surer than 23 lost and 3 gained."""
    drop, lo, hi = paired_drop([], PROMPTS[:20])
    assert drop == pytest.approx(20 / 198) and 0 < lo < drop < hi
    assert hi - lo < 0.098
    same, lo0, hi0 = paired_drop(PROMPTS[:17], list(reversed(PROMPTS[:17])))
    assert same == 0 and lo0 < 0 < hi0 and hi0 - lo0 < 0.07


def test_first_word_keeps_letters_of_any_script() -> None:
    """An accented answer is one word: split at "í", "Brasília" was once read as "Bras" and counted wrong."""
    assert first_word(" Brasília, the capital") == "Brasília"
    assert first_word(" Sana'a.") == "Sana"
    assert first_word(" the Pacific Ocean.") == "Pacific"


def test_every_fact_has_one_kind_by_its_wording() -> None:
    """Kinds follow the prompt's wording, then a numeric answer: "by which plants" is not a person's work."""
    from edgekit.factcheck import KINDS, kind, right_by_kind

    assert kind("The process by which plants make food from sunlight is called", "photosynthesis") == KINDS[-1]
    assert kind("Hamlet was written by William", "Shakespeare") == "people"
    assert kind("The wall that divided Berlin fell in", "1989") == "numbers"
    assert kind("The capital of Texas is", "Austin") == "capitals"
    counts = right_by_kind([PROMPTS[0], "The founder of Apple is Steve"])
    assert list(counts) == list(KINDS) and sum(asked for _, asked in counts.values()) == len(FACTS)
    assert counts["capitals"][1] - counts["capitals"][0] == 1 and counts["people"][1] - counts["people"][0] == 1
