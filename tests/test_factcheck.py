"""The factual check's paired comparison (edgekit.factcheck.paired_drop): what the pruning benchmark's
"facts lost" column and its interval rest on."""

from __future__ import annotations

import pytest

from edgekit.factcheck import FACTS, paired_drop

PROMPTS = [p for p, _ in FACTS]


def test_paired_drop_counts_the_prompts_the_models_disagree_on() -> None:
    """Reference right on 43 of 60; the other model loses 9 of those and gains 3 it missed: 37 right, 10 points.
    The interval, worked by hand from Agresti and Min's formula: (9.5 - 3.5) / 62 -/+ 1.96 * sqrt((13 / 62 -
    (6 / 62)^2) / 62) = 0.0968 -/+ 0.1114."""
    reference = PROMPTS[:17]
    other = PROMPTS[3:17] + PROMPTS[20:29]  # gains 3 (PROMPTS[:3]), loses 9 (PROMPTS[20:29])
    drop, lo, hi = paired_drop(reference, other)
    assert drop == pytest.approx(0.1)
    assert (lo, hi) == pytest.approx((-0.0146, 0.2082), abs=1e-4)


def test_paired_drop_is_narrower_when_the_models_disagree_less() -> None:
    """The same 10 points lost on 6 prompts and gained on none is surer than 9 lost and 3 gained."""
    drop, lo, hi = paired_drop([], PROMPTS[:6])
    assert drop == pytest.approx(0.1) and 0 < lo < drop < hi
    assert hi - lo < 0.2228
    same, lo0, hi0 = paired_drop(PROMPTS[:17], list(reversed(PROMPTS[:17])))
    assert same == 0 and lo0 < 0 < hi0 and hi0 - lo0 < 0.07
