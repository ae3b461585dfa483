"""Text-only instructions: simple facts with one short answer that a small instruct LLM
likely already knows.

They are mixed into stage 2 to keep the LLM's text skills, and scored before and after
tuning to see whether it lost them. Facts are split into train and eval by a stable hash
of their key (about one in five held out), so eval questions are never trained on.
Questions never contain their own answer (checked when the pool is built), which the
``contains`` scorer relies on.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from functools import cache

from owl.world.items import WorldItem, contains, say
from owl.world.scorers import normalize

NUMBERS = [str(n) for n in range(26)]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
ANIMAL_NAMES = ["cow", "dog", "cat", "duck", "pig", "sheep", "horse", "owl", "snake", "lion"]
OPPOSITE_PAIRS = [
    ("hot", "cold"), ("wet", "dry"), ("day", "night"), ("full", "empty"), ("happy", "sad"), ("push", "pull"),
    ("up", "down"), ("black", "white"), ("early", "late"), ("win", "lose"), ("left", "right"), ("true", "false"),
    ("inside", "outside"), ("north", "south"), ("east", "west"), ("summer", "winter"),
]  # fmt: skip
OPPOSITE_WORDS = sorted({w for pair in OPPOSITE_PAIRS for w in pair})


@dataclass(frozen=True)
class TextFact:
    key: str
    task: str
    frames: tuple[str, ...]
    answer: str
    choices: tuple[str, ...]

    @property
    def split(self) -> str:
        return "eval" if zlib.crc32(self.key.encode()) % 5 == 0 else "train"


SIDES = {"triangle": 3, "square": 4, "rectangle": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
MIXES = [("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
         ("red", "white", "pink"), ("black", "white", "gray")]  # fmt: skip
COLOUR_OF = {"the sky on a clear day": "blue", "grass": "green", "snow": "white", "a ripe banana": "yellow",
             "coal": "black", "a ripe tomato": "red", "a carrot": "orange", "chocolate": "brown"}  # fmt: skip
LETTER_WORDS = ("cat", "dog", "fish", "bird", "sun", "moon", "tree", "book", "cake", "house", "water", "green",
                "bread", "lemon", "zebra", "king", "queen", "jump", "river", "train", "piano", "window")  # fmt: skip
"""Words for first-letter questions; none starts with "a", which normalisation drops as an article."""
SOUNDS = {"moo": "cow", "woof": "dog", "meow": "cat", "quack": "duck", "oink": "pig", "baa": "sheep",
          "neigh": "horse", "hoot": "owl", "hiss": "snake", "roar": "lion"}  # fmt: skip
NUMBER_FACTS = {
    "How many days are there in a week?": 7,
    "How many legs does a spider have?": 8,
    "How many legs does a dog have?": 4,
    "How many legs does a bird have?": 2,
    "How many months are there in a year?": 12,
    "How many wheels does a bicycle have?": 2,
    "How many wheels does a tricycle have?": 3,
    "How many hours are there in a day?": 24,
    "How many fingers are there on one hand?": 5,
    "How many legs does an insect have?": 6,
}


def _facts() -> list[TextFact]:
    facts: list[TextFact] = []

    def add(key: str, task: str, frames: tuple[str, ...], answer: object, choices: list[str]) -> None:
        facts.append(TextFact(key, task, frames, str(answer), tuple(choices)))

    for a in range(1, 11):
        for b in range(1, 11):
            plus = (f"What is {a} plus {b}?", f"What is {a} + {b}?", f"How much is {a} plus {b}?")
            add(f"add:{a}:{b}", "text_arithmetic", plus, a + b, NUMBERS)
            if a > b:
                minus = (f"What is {a} minus {b}?", f"What is {a} - {b}?")
                add(f"sub:{a}:{b}", "text_arithmetic", minus, a - b, NUMBERS)
            if 2 <= a <= 5 and 2 <= b <= 5:
                times = (f"What is {a} times {b}?", f"What is {a} multiplied by {b}?")
                add(f"mul:{a}:{b}", "text_arithmetic", times, a * b, NUMBERS)
    for shape, sides in SIDES.items():
        frames = (f"How many sides does a {shape} have?", f"A {shape} has how many sides?")
        add(f"sides:{shape}", "text_sides", frames, sides, NUMBERS)
    for a, b, mix in MIXES:
        frames = (f"What colour do you get when you mix {a} and {b}?", f"Which color do {a} and {b} make when mixed?")
        add(f"mix:{mix}", "text_colour_mixing", frames, mix, COLOURS)
    for thing, colour in COLOUR_OF.items():
        add(
            f"colour_of:{thing}",
            "text_colour_of",
            (f"What colour is {thing}?", f"What color is {thing}?"),
            colour,
            COLOURS,
        )
    for a, b in OPPOSITE_PAIRS:
        for word, opposite in ((a, b), (b, a)):
            frames = (f'What is the opposite of "{word}"?', f"What is the opposite of the word {word}?")
            add(f"opposite:{word}", "text_opposite", frames, opposite, OPPOSITE_WORDS)
    for word in LETTER_WORDS:
        frames = (f'What is the first letter of the word "{word}"?', f'Which letter does the word "{word}" start with?')
        add(f"letter:{word}", "text_first_letter", frames, word[0], LETTERS)
    for sound, animal in SOUNDS.items():
        frames = (f'Which animal says "{sound}"?', f'What animal makes the sound "{sound}"?')
        add(f"sound:{sound}", "text_animal_sound", frames, animal, ANIMAL_NAMES)
    for question, answer in NUMBER_FACTS.items():
        add(f"number:{question}", "text_numbers", (question,), answer, NUMBERS)

    def leaks(fact: TextFact) -> bool:
        return any(f" {normalize(fact.answer)} " in f" {normalize(q, first_sentence=False)} " for q in fact.frames)

    return [f for f in facts if not leaks(f)]


@cache
def text_pool(split: str) -> dict[str, tuple[TextFact, ...]]:
    """Facts of one split ("train" or "eval"), grouped by task."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}; expected 'train' or 'eval'")
    pool: dict[str, list[TextFact]] = {}
    for fact in _facts():
        if fact.split == split:
            pool.setdefault(fact.task, []).append(fact)
    return {task: tuple(facts) for task, facts in pool.items()}


class TextSampler:
    """Draws text-only items: a task uniformly among those with unused facts, then an unused fact.

    Facts are not repeated until every fact of the split has been used, so a small eval
    split covers many different questions instead of repeating the few of a small task.
    """

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng = rng
        self.pool = text_pool(split)
        self.unused: dict[str, list[TextFact]] = {}

    def draw(self) -> WorldItem:
        if not any(self.unused.values()):
            self.unused = {task: list(facts) for task, facts in sorted(self.pool.items())}
        task = self.rng.choice([t for t, facts in self.unused.items() if facts])
        facts = self.unused[task]
        fact = facts.pop(self.rng.randrange(len(facts)))
        question = self.rng.choice(fact.frames)
        return WorldItem("text", fact.task, [(question, say(fact.answer))], fact.answer, contains(fact.choices), [])
