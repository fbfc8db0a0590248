"""A fixed knowledge check: short prompts whose greedy continuation should start with a known one-word answer.

Perplexity hides what pruning costs past moderate sparsity (LLM-KICK, Jaiswal et al., 2023): a model can keep
its perplexity and lose its facts. So pruning is also measured on facts a small model knows unpruned:
capitals, chemical symbols, and common knowledge. Written for edgekit; answers checked by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection

FACTS: tuple[tuple[str, str], ...] = (
    ("The capital of France is", "Paris"),
    ("The capital of Germany is", "Berlin"),
    ("The capital of Italy is", "Rome"),
    ("The capital of Spain is", "Madrid"),
    ("The capital of Japan is", "Tokyo"),
    ("The capital of Russia is", "Moscow"),
    ("The capital of England is", "London"),
    ("The capital of Egypt is", "Cairo"),
    ("The capital of Greece is", "Athens"),
    ("The capital of Portugal is", "Lisbon"),
    ("The capital of Austria is", "Vienna"),
    ("The capital of Ireland is", "Dublin"),
    ("The capital of Norway is", "Oslo"),
    ("The capital of Sweden is", "Stockholm"),
    ("The capital of Poland is", "Warsaw"),
    ("The capital of China is", "Beijing"),
    ("The capital of South Korea is", "Seoul"),
    ("The capital of Thailand is", "Bangkok"),
    ("The capital of Kenya is", "Nairobi"),
    ("The capital of Argentina is", "Buenos"),
    ("The capital of Peru is", "Lima"),
    ("The capital of Cuba is", "Havana"),
    ("The capital of Canada is", "Ottawa"),
    ("The capital of Australia is", "Canberra"),
    ("The capital of Turkey is", "Ankara"),
    ("The capital of Iran is", "Tehran"),
    ("The capital of Hungary is", "Budapest"),
    ("The capital of Finland is", "Helsinki"),
    ("The capital of Denmark is", "Copenhagen"),
    ("The capital of Belgium is", "Brussels"),
    ("The chemical symbol for gold is", "Au"),
    ("The chemical symbol for silver is", "Ag"),
    ("The chemical symbol for iron is", "Fe"),
    ("The chemical symbol for sodium is", "Na"),
    ("The chemical symbol for potassium is", "K"),
    ("The chemical symbol for oxygen is", "O"),
    ("The chemical symbol for hydrogen is", "H"),
    ("The chemical symbol for carbon is", "C"),
    ("The chemical symbol for helium is", "He"),
    ("The chemical symbol for copper is", "Cu"),
    ("The largest planet in our solar system is", "Jupiter"),
    ("The planet closest to the Sun is", "Mercury"),
    ("The Red Planet is", "Mars"),
    ("The largest ocean on Earth is the", "Pacific"),
    ("The longest river in Africa is the", "Nile"),
    ("The author of Romeo and Juliet is William", "Shakespeare"),
    ("Water freezes at a temperature of zero degrees", "Celsius"),
    ("The first President of the United States was George", "Washington"),
    ("The currency of Japan is the", "yen"),
    ("The currency of the United Kingdom is the pound", "sterling"),
    ("The Mona Lisa was painted by Leonardo da", "Vinci"),
    ("The theory of relativity was developed by Albert", "Einstein"),
    ("The tallest mountain in the world is Mount", "Everest"),
    ("The Great Wall is located in", "China"),
    ("The Eiffel Tower is located in", "Paris"),
    ("The primary language spoken in Brazil is", "Portuguese"),
    ("The hardest natural substance on Earth is", "diamond"),
    ("The number of days in a week is", "seven|7"),
    ("The gas that plants absorb from the air is carbon", "dioxide"),
    ("The freezing point of water in Fahrenheit is 32", "degrees"),
)

# What each fact is about, one or more words per fact (a test checks every prompt names one): calibration text
# that must not teach the check (exporters.prune.knowledge) is cut before any of these or any answer.
SUBJECTS: tuple[str, ...] = (
    "France", "Germany", "Italy", "Spain", "Japan", "Russia", "England", "Egypt", "Greece", "Portugal", "Austria",
    "Ireland", "Norway", "Sweden", "Poland", "China", "Korea", "Thailand", "Kenya", "Argentina", "Peru", "Cuba",
    "Canada", "Australia", "Turkey", "Iran", "Hungary", "Finland", "Denmark", "Belgium", "gold", "silver", "iron",
    "sodium", "potassium", "oxygen", "hydrogen", "carbon", "helium", "copper", "largest planet", "closest to the Sun",
    "Red Planet", "largest ocean", "river in Africa", "Romeo", "Juliet", "freezes", "first President",
    "United Kingdom", "Mona Lisa", "relativity", "tallest mountain", "Great Wall", "Eiffel Tower", "Brazil",
    "hardest natural", "days in a week", "plants absorb", "freezing point",
)

MAX_NEW_TOKENS = 6  # enough for any answer's first word after a leading article


def first_word(text: str) -> str:
    """The first word of a continuation, articles and punctuation stripped ("the Pacific Ocean." -> "Pacific")."""
    words = re.findall(r"[A-Za-z0-9]+", text)
    while words and words[0].lower() in ("the", "a", "an", "is", "called"):
        words = words[1:]
    return words[0] if words else ""


def accuracy(complete: Callable[[str, int], str]) -> tuple[float, list[tuple[str, str, str]]]:
    """Exact-match accuracy (case-insensitive first word; an answer may list forms as "seven|7") of `complete(prompt, max_new_tokens)` (greedy) over FACTS,
    and the misses as (prompt, expected, got)."""
    misses = []
    for prompt, answer in FACTS:
        got = first_word(complete(prompt, MAX_NEW_TOKENS))
        if got.lower() not in answer.lower().split("|"):
            misses.append((prompt, answer, got))
    return 1 - len(misses) / len(FACTS), misses


def paired_drop(reference_misses: Collection[str], misses: Collection[str]) -> tuple[float, float, float]:
    """Accuracy lost against a reference model on the same FACTS (fraction, positive = fewer right) and its 95%
    interval, from the prompts each model missed.

    The two models answer the same prompts, so the difference is judged on the prompts where they disagree
    (paired), not as two independent accuracies: at 60 prompts, two models 10 points apart are often within
    sampling noise of each other, and an acceptance line of "within 10 points" must say so. Interval: Agresti and
    Min's adjusted Wald interval for paired proportions (half a count added to each cell; Statistics in Medicine
    24, 2005), written here because it is five lines and numpy/scipy have no paired-proportion interval."""
    n, before, now = len(FACTS), set(reference_misses), set(misses)
    lost, gained = len(now - before), len(before - now)  # right before and missed now; the other way round
    m = n + 2
    p_lost, p_gained = (lost + 0.5) / m, (gained + 0.5) / m
    half = 1.96 * math.sqrt((p_lost + p_gained - (p_lost - p_gained) ** 2) / m)  # never negative: p <= 1
    centre = p_lost - p_gained
    return (lost - gained) / n, centre - half, centre + half
