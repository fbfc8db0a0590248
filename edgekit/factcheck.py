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
    # The 138 below widen the check: at 60 prompts it cannot tell 10 points lost from none (paired_drop). Their
    # subjects and answers (everyday words aside: knowledge.COMMON_ANSWERS) never occur in SmolLM2-135M's default
    # calibration text, so that text, and every model pruned with it, did not change when they came.
    ("The capital of Brazil is", "Brasilia|Brasília"),
    ("The capital of New Zealand is", "Wellington"),
    ("The capital of Taiwan is", "Taipei"),
    ("The capital of Wales is", "Cardiff"),
    ("The capital of Northern Ireland is", "Belfast"),
    ("The capital of North Korea is", "Pyongyang"),
    ("The capital of Albania is", "Tirana"),
    ("The capital of Zambia is", "Lusaka"),
    ("The capital of Angola is", "Luanda"),
    ("The capital of Yemen is", "Sanaa|Sana"),  # Sana'a
    ("The capital of Moldova is", "Chisinau"),
    ("The capital of the Bahamas is", "Nassau"),
    ("The capital of Fiji is", "Suva"),
    ("The capital of Liechtenstein is", "Vaduz"),
    ("The capital of Texas is", "Austin"),
    ("The capital of California is", "Sacramento"),
    ("The capital of New York State is", "Albany"),
    ("The capital of Florida is", "Tallahassee"),
    ("The capital of Massachusetts is", "Boston"),
    ("The capital of Illinois is", "Springfield"),
    ("The capital of Hawaii is", "Honolulu"),
    ("The capital of Arizona is", "Phoenix"),
    ("The capital of Washington State is", "Olympia"),
    ("The chemical symbol for mercury is", "Hg"),
    ("The chemical symbol for boron is", "B"),
    ("The chemical symbol for chromium is", "Cr"),
    ("The chemical symbol for manganese is", "Mn"),
    ("The chemical symbol for bromine is", "Br"),
    ("The chemical symbol for krypton is", "Kr"),
    ("The chemical symbol for arsenic is", "As"),
    ("The chemical symbol for plutonium is", "Pu"),
    ("The largest animal on Earth is the blue", "whale"),
    ("The fastest land animal is the", "cheetah"),
    ("The number of legs a spider has is", "eight|8"),
    ("The number of legs an insect has is", "six|6"),
    ("The number of planets in the solar system is", "eight|8"),
    ("The gas that humans need to breathe is", "oxygen"),
    ("The force that pulls objects toward the Earth is called", "gravity"),
    ("The process by which plants make food from sunlight is called", "photosynthesis"),
    ("The largest organ of the human body is the", "skin"),
    ("The insect that makes honey is the", "bee|honeybee"),
    ("A baby cat is called a", "kitten"),
    ("A baby dog is called a", "puppy"),
    ("A baby cow is called a", "calf"),
    ("The tallest animal in the world is the", "giraffe"),
    ("The largest bird in the world is the", "ostrich"),
    ("Frogs belong to the animal group called", "amphibians"),
    ("Water is made of hydrogen and", "oxygen"),
    ("The center of an atom is called the", "nucleus"),
    ("The study of the stars and planets is called", "astronomy"),
    ("The instrument used to measure temperature is a", "thermometer"),
    ("The color of the sky on a clear day is", "blue"),
    ("The color of fresh grass is", "green"),
    ("The season after summer is", "autumn|fall"),
    ("The day after Monday is", "Tuesday"),
    ("The number of hours in a day is", "24|twenty"),
    ("The number of minutes in an hour is", "60|sixty"),
    ("The number of months in a year is", "12|twelve"),
    ("The number of sides of a triangle is", "three|3"),
    ("The number of sides of a hexagon is", "six|6"),
    ("The square root of 81 is", "9|nine"),
    ("Ice is the solid form of", "water"),
    ("The opposite of hot is", "cold"),
    ("The Kremlin is located in", "Moscow"),
    ("Big Ben is located in", "London"),
    ("The Acropolis is located in", "Athens"),
    ("The pyramids of Giza are located in", "Egypt"),
    ("The Golden Gate Bridge is located in San", "Francisco"),
    ("The Sydney Opera House is located in", "Sydney|Australia"),
    ("The Leaning Tower of Pisa is located in", "Italy|Pisa"),
    ("The author of Harry Potter is J.K.", "Rowling"),
    ("The creator of Mickey Mouse was Walt", "Disney"),
    ("The telephone was invented by Alexander Graham", "Bell"),
    ("Hamlet was written by William", "Shakespeare"),
    ("The Odyssey was written by", "Homer"),
    ("War and Peace was written by Leo", "Tolstoy"),
    ("The Sistine Chapel ceiling was painted by", "Michelangelo"),
    ("The founder of Microsoft is Bill", "Gates"),
    ("The founder of Apple is Steve", "Jobs"),
    ("The founder of Facebook is Mark", "Zuckerberg"),
    ("The game with a king, queen, rooks and bishops is", "chess"),
    ("The sport played at Wimbledon is", "tennis"),
    ("The Olympic Games began in ancient", "Greece"),
    ("The ship that sank in 1912 after hitting an iceberg was the", "Titanic"),
    ("The year the Second World War ended was", "1945"),
    ("The wall that divided Berlin fell in", "1989"),
    ("The capital of Nevada is", "Carson"),
    ("The capital of Oregon is", "Salem"),
    ("The capital of Pennsylvania is", "Harrisburg"),
    ("The capital of Michigan is", "Lansing"),
    ("The capital of Virginia is", "Richmond"),
    ("The capital of Louisiana is", "Baton"),
    ("The capital of Indiana is", "Indianapolis"),
    ("The capital of Wisconsin is", "Madison"),
    ("The capital of Maryland is", "Annapolis"),
    ("The capital of Minnesota is", "Saint|St"),
    ("The capital of Kansas is", "Topeka"),
    ("The capital of Ontario is", "Toronto"),
    ("The capital of Alberta is", "Edmonton"),
    ("The capital of Queensland is", "Brisbane"),
    ("The capital of Bavaria is", "Munich"),
    ("The capital of Catalonia is", "Barcelona"),
    ("The author of The Hobbit is J.R.R.", "Tolkien"),
    ("The author of Sherlock Holmes is Arthur Conan", "Doyle"),
    ("The author of Don Quixote is Miguel de", "Cervantes"),
    ("The composer of The Four Seasons is Antonio", "Vivaldi"),
    ("The founder of Amazon is Jeff", "Bezos"),
    ("Penicillin was discovered by Alexander", "Fleming"),
    ("The polio vaccine was developed by Jonas", "Salk"),
    ("The heliocentric model was proposed by Nicolaus", "Copernicus"),
    ("The ancient Greek who shouted Eureka was", "Archimedes"),
    ("The first person in space was Yuri", "Gagarin"),
    ("The first woman to fly solo across the Atlantic was Amelia", "Earhart"),
    ("The World Wide Web was invented by Tim Berners", "Lee"),
    ("The King of Pop is Michael", "Jackson"),
    ("The chemical formula for water is", "H2O"),
    ("The powerhouse of the cell is the", "mitochondria|mitochondrion"),
    ("The planet with the Great Red Spot is", "Jupiter"),
    ("The metal that is liquid at room temperature is", "mercury"),
    ("The smallest unit of life is the", "cell"),
    ("A person who studies rocks is a", "geologist"),
    ("Rain, snow and hail are forms of", "precipitation"),
    ("A group of lions is called a", "pride"),
    ("A group of wolves is called a", "pack"),
    ("Giant pandas mainly eat", "bamboo"),
    ("The animal that gives us wool is the", "sheep"),
    ("The largest fish in the world is the whale", "shark"),
    ("Caterpillars turn into", "butterflies|butterfly|moths"),
    ("A dozen is equal to", "twelve|12"),
    ("The number of letters in the English alphabet is", "26|twenty"),
    ("The fruit that keeps the doctor away is an", "apple"),
    ("The number of players on a soccer team on the field is", "eleven|11"),
    ("The color you get by mixing blue and yellow is", "green"),
    ("The color of a ripe banana is", "yellow"),
    ("Cheese is made from", "milk"),
    ("The freezing point of water in Celsius is", "0|zero"),
    ("The currency of China is the", "yuan|renminbi"),
    ("The largest moon in the solar system is", "Ganymede"),
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
    "New Zealand", "Taiwan", "Wales", "Albania", "Zambia", "Angola",
    "Yemen", "Moldova", "Bahamas", "Fiji", "Liechtenstein", "Texas", "California", "New York State", "Florida",
    "Massachusetts", "Illinois", "Hawaii", "Arizona", "Washington State", "mercury", "boron", "chromium",
    "manganese", "bromine", "krypton", "arsenic", "plutonium", "largest animal", "fastest land animal", "spider",
    "insect", "planets in the solar system", "breathe", "pulls objects", "make food from sunlight", "largest organ",
    "makes honey", "baby cat", "baby dog", "baby cow", "tallest animal", "largest bird", "Frogs", "Water is made",
    "center of an atom", "study of the stars", "measure temperature", "clear day", "fresh grass", "after summer",
    "after Monday", "hours in a day", "minutes in an hour", "months in a year", "triangle", "hexagon",
    "square root of 81", "solid form", "opposite of hot", "Kremlin", "Big Ben", "Acropolis", "pyramids",
    "Golden Gate", "Opera House", "Leaning Tower", "Harry Potter", "Mickey Mouse", "telephone", "Hamlet", "Odyssey",
    "War and Peace", "Sistine Chapel", "Microsoft", "Apple", "Facebook", "rooks", "Wimbledon", "Olympic", "iceberg",
    "Second World War", "wall that divided", "Nevada", "Oregon", "Pennsylvania", "Michigan", "Virginia", "Louisiana",
    "Indiana", "Wisconsin", "Maryland", "Minnesota", "Kansas", "Ontario", "Alberta", "Queensland", "Bavaria",
    "Catalonia", "Hobbit", "Sherlock Holmes", "Don Quixote", "Four Seasons", "founder of Amazon", "Penicillin",
    "polio", "heliocentric", "Eureka", "first person in space", "fly solo", "World Wide Web", "King of Pop",
    "formula for water", "powerhouse", "Great Red Spot", "liquid at room temperature", "smallest unit of life",
    "studies rocks", "hail", "group of lions", "group of wolves", "pandas", "wool", "largest fish", "Caterpillars",
    "dozen", "English alphabet", "doctor away", "soccer team", "mixing blue and yellow", "ripe banana", "Cheese",
    "largest moon",
)

# Kinds of fact, to read where a model's facts go (benchmarks/pruning.py: pruning keeps the kinds its calibration
# text rehearses): the first rule whose pattern the prompt matches; else "numbers" where an answer is written in
# digits; else science, nature and everyday facts.
KIND_RULES: tuple[tuple[str, str], ...] = (
    ("capitals", r"^The capital of"),
    ("chemical symbols", r"^The chemical symbol for"),
    ("people", r"\b(written|painted|invented|discovered|developed|proposed) by\b"
               r"|\b(author|founder|creator|composer|President|first person|first woman|King of Pop|Greek who)\b"),
    ("places", r"\blocated in\b|\bbegan in\b"),
)
KINDS: tuple[str, ...] = (*(k for k, _ in KIND_RULES), "numbers", "science, nature, everyday")

MAX_NEW_TOKENS = 6  # enough for any answer's first word after a leading article


def first_word(text: str) -> str:
    """The first word of a continuation, articles and punctuation stripped ("the Pacific Ocean." -> "Pacific")."""
    words = re.findall(r"[^\W_]+", text)  # letters and digits of any script: "Brasília" is one word
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


def kind(prompt: str, answer: str) -> str:
    """The kind (KINDS) of the fact `prompt` -> `answer` (KIND_RULES)."""
    for name, pattern in KIND_RULES:
        if re.search(pattern, prompt):
            return name
    return KINDS[-2] if any(form.isdigit() for form in answer.split("|")) else KINDS[-1]


def right_by_kind(misses: Collection[str]) -> dict[str, tuple[int, int]]:
    """Facts right and facts asked, per kind (in KINDS order), given the prompts a model missed."""
    missed, counts = set(misses), {name: [0, 0] for name in KINDS}
    for prompt, answer in FACTS:
        tally = counts[kind(prompt, answer)]
        tally[0] += prompt not in missed
        tally[1] += 1
    return {name: (right, asked) for name, (right, asked) in counts.items()}
