"""Knowledge-rich calibration text for pruning: the model's own continuations of encyclopedic prompts.

Pruning scores channels by their activations on calibration text and re-fits the output projections to it, so
what the text exercises is what survives. On the neutral prompts quantization uses (calibration.py) a pruned
model keeps its perplexity but loses its facts; measured on SmolLM2-135M at 25% fewer parameters, the factual
check (edgekit.factcheck, its first 60 prompts: kinds this text covers) goes from 3% to 45% with this text
instead, from 8% to 60% after 150 recovery steps (benchmarks/results/pruning-experiments.md). Kinds of fact
it does not cover fare worse: of the check's other 138 prompts, the recovered model answers 26 of the 61 the
unpruned model answers. The whole text is used (34k tokens for SmolLM2): the first 16k tokens alone, as the
text was once capped, left out the elements and the check's chemical symbols with them.

The prompts name countries, elements, people and places that edgekit.factcheck does not ask about, and every
continuation is cut before the first word naming one of its subjects or answers: the check then measures facts
the calibration never stated, not facts it rehearsed.
"""

from __future__ import annotations

import re
from itertools import groupby
from typing import Any

import numpy as np
from edgekit.exporters.quantize.calibration import sampled, text_windows
from edgekit.exporters.quantize.spec import CalibrationConfig
from tokenizers import Tokenizer

from edgekit.factcheck import FACTS, SUBJECTS

COUNTRIES = ["Mexico", "India", "Indonesia", "Nigeria", "Chile", "Colombia", "Venezuela", "Vietnam", "Philippines", "Pakistan", "Iraq", "Israel", "Switzerland", "Netherlands", "Romania", "Bulgaria", "Ukraine", "Morocco", "Ethiopia", "Nepal", "Bangladesh", "Afghanistan", "Syria", "Lebanon", "Jordan", "Croatia", "Serbia", "Estonia", "Latvia", "Lithuania", "Uruguay", "Paraguay", "Bolivia", "Ecuador", "Ghana", "Senegal", "Tanzania", "Uganda", "Zimbabwe", "Algeria", "Tunisia", "Libya", "Sudan", "Mongolia", "Cambodia", "Laos", "Myanmar", "Qatar", "Kuwait", "Jamaica", "Haiti", "Panama", "Honduras", "Guatemala", "Nicaragua", "Slovakia", "Slovenia", "Luxembourg", "Malta", "Cyprus", "Belarus", "Armenia", "Azerbaijan", "Kazakhstan", "Uzbekistan", "Iceland", "Scotland", "Malaysia", "Singapore"]
ELEMENTS = ["nitrogen", "neon", "lead", "tin", "zinc", "calcium", "magnesium", "sulfur", "chlorine", "uranium", "platinum", "lithium", "aluminium", "silicon", "phosphorus", "argon", "nickel", "cobalt", "tungsten", "fluorine", "iodine", "titanium"]
PEOPLE = ("Isaac Newton", "Charles Darwin", "Marie Curie", "Napoleon Bonaparte", "Abraham Lincoln", "Julius Caesar",
          "Ludwig van Beethoven", "Wolfgang Amadeus Mozart", "Galileo Galilei", "Nikola Tesla", "Thomas Edison",
          "Alexander the Great", "Cleopatra", "Mahatma Gandhi", "Nelson Mandela", "Pablo Picasso", "Vincent van Gogh",
          "Charles Dickens", "Jane Austen", "Mark Twain", "Aristotle", "Plato", "Confucius", "Christopher Columbus",
          "Neil Armstrong", "Queen Victoria", "Martin Luther King", "Sigmund Freud", "Karl Marx",
          "Johann Sebastian Bach")
PLACES = ("The Amazon rainforest", "The Sahara Desert", "The Statue of Liberty", "The Taj Mahal", "The Grand Canyon",
          "Mount Kilimanjaro", "The Atlantic Ocean", "The Indian Ocean", "Antarctica", "The Alps", "The Andes",
          "The Mississippi River", "The Danube", "Lake Victoria", "The Himalayas", "Saturn", "Venus", "Neptune",
          "The Moon", "The Milky Way", "The Panama Canal", "Machu Picchu", "The Colosseum", "Stonehenge")
TEMPLATES = (
    (COUNTRIES, ("The capital of {} is", "{} is a country in", "The official language of {} is",
                 "The currency of {} is the", "Here are some facts about {}:")),
    (ELEMENTS, ("The chemical symbol for {} is", "{} is a chemical element with", "The atomic number of {} is")),
    (PEOPLE, ("{} was a famous", "{} is best known for", "{} was born in")),
    (PLACES, ("{} is located in", "Here are some facts about {}:")),
)
# Answers too common to cut text at (their facts' subjects are cut instead): everyday words; answers of one or
# two letters (chemical symbols) likewise.
COMMON_ANSWERS = {"blue", "degrees", "eight", "fall", "green", "pride", "seven", "three", "water", "zero"}
# The cap is above the whole text (34,016 tokens for SmolLM2-135M): at 25% fewer parameters and 150 recovery steps,
# all of it against a 16k sample of it: KL to the unpruned model on general text 1.01 against 1.15 nats/token,
# the factual check 60% against 53%. Past it, knowledge_windows keeps a sample of every kind of prompt.
KNOWLEDGE = CalibrationConfig(new_tokens=64, max_tokens=40_960)


def evaluation_words() -> re.Pattern[str]:
    """Any subject or answer of edgekit.factcheck, as whole words, any case."""
    answers = {a for _, answer in FACTS for a in answer.split("|") if len(a) > 2 and a.lower() not in COMMON_ANSWERS}
    words = sorted(set(SUBJECTS) | answers, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)


def prompts() -> list[str]:
    return [t.format(x) for names, templates in TEMPLATES for x in names for t in templates]


def cut(text: str, banned: re.Pattern[str]) -> str:
    """`text` up to the first evaluation word."""
    found = banned.search(text)
    return (text[:found.start()] if found else text).strip()


def knowledge_windows(model: Any, tokenizer: Tokenizer, cfg: CalibrationConfig = KNOWLEDGE) -> np.ndarray:
    """int64 [n, seq_len]: every prompt continued by `new_tokens` sampled tokens (prompts of one token length in
    one batch), each cut (module docstring), joined by blank lines in a shuffled order and cut into windows.

    The order matters where the text outgrows `max_tokens`: joined by prompt length (as batched), the cap kept
    only the short prompts, and SmolLM2's text held no element, no "best known for", no "facts about" at all."""
    import torch

    banned = evaluation_words()
    generator = torch.Generator().manual_seed(cfg.seed)
    encoded = sorted(enumerate(tokenizer.encode(p, add_special_tokens=False).ids for p in prompts()),
                     key=lambda item: len(item[1]))
    texts = [""] * len(encoded)
    for _, same in groupby(encoded, key=lambda item: len(item[1])):
        index, ids = zip(*same)
        rows = sampled(model, tokenizer, torch.tensor(ids), cfg.new_tokens, generator)
        for i, row in zip(index, rows):
            texts[i] = cut(tokenizer.decode(row.tolist()), banned)
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    return text_windows("\n\n".join(texts[i] for i in order), tokenizer, cfg, "knowledge prompts",
                        "knowledge calibration text")
