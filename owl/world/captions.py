"""Stage-1 captions: one sentence that names everything in a scene.

Every caption states the object count, then each object's size, colour, shape and
position (in reading order: top-left to bottom-right), then the word and where it is
written, if the scene has one. A few sentence frames are drawn from the caller's
random stream, so captions vary in wording but are fixed for a seed.
"""

from __future__ import annotations

import random

from owl.world.scene import Scene, SceneObject, where_phrase

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(n: int, noun: str) -> str:
    return noun if n == 1 else noun + "s"


def join_and(parts: list[str]) -> str:
    """'a' / 'a and b' / 'a, b and c'."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def object_phrase(obj: SceneObject) -> str:
    """'a large red circle at the top left'."""
    return f"a {obj.size} {obj.colour} {obj.kind} {where_phrase(obj.position)}"


def located_phrase(obj: SceneObject) -> str:
    """'at the top left a large red circle': the position first, so the reader looks up a place, then names it."""
    return f"{where_phrase(obj.position)} a {obj.size} {obj.colour} {obj.kind}"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


_COUNT_FRAMES = (
    "{Count} {shapes}: {list}.",
    "There {be} {count} {shapes}: {list}.",
    "This image shows {count} {shapes}: {list}.",
    "{List}. {Count} {shapes} in total.",
)
_WORD_FRAMES = (
    'The word "{word}" is written {where}.',
    'The text "{word}" appears {where}.',
    '{Where}, the word "{word}" is written.',
)


def caption(scene: Scene, rng: random.Random, position_first: float = 0.0) -> str:
    """A caption naming the count, every object (size, colour, shape, position) and the word.

    With probability ``position_first`` each object is named place first ("at the top left a large red circle"):
    a caption read that way asks the visual tokens "what is here?", the lookup a question about a place needs,
    where the usual order only asks "what comes next?". At 0 no extra random draw is made (captions unchanged).
    """
    n = len(scene.objects)
    phrase = located_phrase if position_first > 0 and rng.random() < position_first else object_phrase
    listed = join_and([phrase(o) for o in sorted(scene.objects, key=lambda o: o.cell)])
    frame = rng.choice(_COUNT_FRAMES)
    text = frame.format(
        Count=_capitalise(number_word(n)),
        count=number_word(n),
        shapes=plural(n, "shape"),
        be="is" if n == 1 else "are",
        list=listed,
        List=_capitalise(listed),
    )
    if scene.word is not None and scene.word_position is not None:
        where = where_phrase(scene.word_position)
        word_frame = rng.choice(_WORD_FRAMES)
        text += " " + word_frame.format(word=scene.word, where=where, Where=_capitalise(where))
    return text
