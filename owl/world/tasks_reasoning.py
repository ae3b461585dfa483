"""Questions that need more than reading off one attribute: knowledge transfer, reasoning,
multi-turn follow-ups and comparisons across two images.

Knowledge questions ask what an LLM already knows about the recognised thing (sides of
a polygon, the opposite of a read word, whether it names an animal), so the image only
supplies *which* thing. Multi-turn follow-ups say "it"/"them" and are answerable only
from the earlier turns. Yes/no and first/second answers are drawn before the scenes, so
they are balanced.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from owl.world.captions import number_word, plural
from owl.world.config import ANIMALS, POSITIONS, SHAPE_SIDES, WORD_OPPOSITES, WorldConfig
from owl.world.items import WorldItem, exact, say
from owl.world.scene import Scene, SceneSampler, unique_by, where_phrase
from owl.world.tasks_visual import COLOUR_OF, COUNT_ALL, OCR, a_or_an, describe, yes_no_item

SIDES_AT = (
    "How many sides does the shape {where} have?",
    "How many corners does the shape {where} have?",
    "The shape {where} has how many sides?",
)
CORNERS_AT = ("Does the shape {where} have any corners?", "Does the shape {where} have corners?")
OPPOSITE = (
    "What is the opposite of the word in the image?",
    "What is the opposite of the word written in the image?",
    "Give the opposite of the word shown in the image.",
)
ANIMAL = ("Is the word in the image the name of an animal?", "Does the word written in the image name an animal?")
MORE_COLOUR = (
    "Are there more {c1} shapes than {c2} shapes?",
    "Are there more {c1} shapes than {c2} ones?",
    "Is the number of {c1} shapes greater than the number of {c2} shapes?",
)
ADD_COUNT = (
    "If {k} more {shapes} were added, how many shapes would there be?",
    "Imagine adding {k} more {shapes}. How many shapes would there be then?",
)
NOT_COLOUR = ("How many shapes are not {colour}?", "How many of the shapes are not {colour}?")
RELATION = {
    "left": ("Is the {a} to the left of the {b}?",),
    "right": ("Is the {a} to the right of the {b}?",),
    "above": ("Is the {a} above the {b}?", "Is the {a} higher up than the {b}?"),
    "below": ("Is the {a} below the {b}?", "Is the {a} lower down than the {b}?"),
}
SAME_COLOUR = ("Are all the shapes the same colour?", "Do all the shapes have the same color?")
FOLLOW = {
    "position": ("And where is it?", "Where is it in the image?", "Where is it located?"),
    "size": ("Is it large or small?", "And is it small or large?"),
    "sides": ("How many sides does it have?", "And how many corners does it have?"),
    "count": ("How many of them are {colour}?", "And how many of those are {colour}?"),
    "opposite": ("What is its opposite?", "And what is the opposite of that word?"),
    "letter": ("What is its first letter?", "Which letter does it start with?"),
}
MORE_SHAPES = (
    "Which image has more shapes, the first or the second?",
    "Which of the two images shows more shapes: the first or the second?",
)
BOTH_CONTAIN = ("Do both images contain {a} {kind}?", "Is there {a} {kind} in both images?")
WHICH_COLOUR = (
    "Which image contains a {colour} shape, the first or the second?",
    "In which image is there a {colour} shape: the first or the second?",
)
TOTAL_COUNT = (
    "How many shapes are there in the two images altogether?",
    "Counting both images, how many shapes are there?",
)

Generator = Callable[[SceneSampler], WorldItem]


def _yes(rng: random.Random) -> bool:
    return rng.random() < 0.5


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


# --- knowledge ---------------------------------------------------------------------------


def _sides(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scene = s.draw(where=lambda sc: any(o.kind in SHAPE_SIDES for o in sc.objects))
    obj = rng.choice([o for o in scene.objects if o.kind in SHAPE_SIDES])
    question = rng.choice(SIDES_AT).format(where=where_phrase(obj.position))
    answer = str(SHAPE_SIDES[obj.kind])
    choices = sorted({SHAPE_SIDES[k] for k in cfg.shapes if k in SHAPE_SIDES})
    return WorldItem("knowledge", "polygon_sides", [(question, answer)], answer, exact(choices), [scene])


def _corners(s: SceneSampler) -> WorldItem:
    rng = s.rng
    want = _yes(rng)
    scene = s.draw(where=lambda sc: any((o.kind != "circle") == want for o in sc.objects))
    obj = rng.choice([o for o in scene.objects if (o.kind != "circle") == want])
    question = rng.choice(CORNERS_AT).format(where=where_phrase(obj.position))
    return yes_no_item("knowledge", "has_corners", question, _yn(want), [scene])


def _opposite(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scene = s.draw(with_word=True, where=lambda sc: sc.word in WORD_OPPOSITES)
    answer = WORD_OPPOSITES[scene.word]  # type: ignore[index]
    choices = sorted({WORD_OPPOSITES[w] for w in cfg.words if w in WORD_OPPOSITES})
    return WorldItem(
        "knowledge", "word_opposite", [(rng.choice(OPPOSITE), say(answer))], answer, exact(choices), [scene]
    )


def _animal(s: SceneSampler) -> WorldItem:
    want = _yes(s.rng)
    scene = s.draw(with_word=True, where=lambda sc: (sc.word in ANIMALS) == want)
    return yes_no_item("knowledge", "word_is_animal", s.rng.choice(ANIMAL), _yn(want), [scene])


# --- reasoning ---------------------------------------------------------------------------


def _more_colour(s: SceneSampler) -> WorldItem:
    rng = s.rng
    want = _yes(rng)
    c1, c2 = rng.sample(s.config.colours, 2)

    def fits(sc: Scene) -> bool:
        a, b = sc.count(colour=c1), sc.count(colour=c2)
        return a != b and (a > b) == want

    scene = s.draw(where=fits)
    return yes_no_item("reasoning", "more_colour", rng.choice(MORE_COLOUR).format(c1=c1, c2=c2), _yn(want), [scene])


def _add_count(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scene = s.draw()
    k = rng.randint(1, 3)
    question = rng.choice(ADD_COUNT).format(k=number_word(k), shapes=plural(k, "shape"))
    answer = str(len(scene.objects) + k)
    choices = range(cfg.min_objects + k, cfg.max_objects + k + 1)
    return WorldItem("reasoning", "add_count", [(question, answer)], answer, exact(choices), [scene])


def _not_colour(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scene = s.draw()
    present = sorted({o.colour for o in scene.objects})
    colour = rng.choice(present) if rng.random() < 0.7 else rng.choice(cfg.colours)
    answer = str(len(scene.objects) - scene.count(colour=colour))
    question = rng.choice(NOT_COLOUR).format(colour=colour)
    return WorldItem(
        "reasoning", "not_colour", [(question, answer)], answer, exact(range(cfg.max_objects + 1)), [scene]
    )


def _relation(s: SceneSampler) -> WorldItem:
    rng = s.rng
    relation = rng.choice(tuple(RELATION))
    axis = "col" if relation in ("left", "right") else "row"
    want = _yes(rng)

    def pairs(sc: Scene) -> list[tuple]:
        named = [o for o in sc.objects if describe(sc, o)]
        return [(a, b) for a in named for b in named if getattr(a, axis) < getattr(b, axis)]

    scene = s.draw(n_objects=rng.randint(max(2, s.config.min_objects), s.config.max_objects), where=pairs)
    first, second = rng.choice(pairs(scene))  # first is left of / above second
    truth_if_ordered = relation in ("left", "above")
    a, b = (first, second) if truth_if_ordered == want else (second, first)
    question = rng.choice(RELATION[relation]).format(a=describe(scene, a), b=describe(scene, b))
    return yes_no_item("reasoning", "relative_position", question, _yn(want), [scene])


def _same_colour(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    want = _yes(rng)

    def recolour(sc: Scene, _r: random.Random) -> Scene:
        if not want:
            return sc
        colour = sc.objects[0].colour
        return replace(sc, objects=tuple(replace(o, colour=colour) for o in sc.objects))

    n = rng.randint(max(2, cfg.min_objects), cfg.max_objects)
    scene = s.draw(n_objects=n, edit=recolour, where=lambda sc: (len({o.colour for o in sc.objects}) == 1) == want)
    return yes_no_item("reasoning", "same_colour", rng.choice(SAME_COLOUR), _yn(want), [scene])


# --- multi-turn --------------------------------------------------------------------------


def _follow_object(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scene = s.draw(where=lambda sc: any(unique_by(sc, o, "kind") for o in sc.objects))
    obj = rng.choice([o for o in scene.objects if unique_by(scene, o, "kind")])
    turns = [(rng.choice(COLOUR_OF).format(kind=obj.kind), say(obj.colour))]
    options: dict[str, tuple[str, list]] = {"position": (obj.position, list(POSITIONS))}
    if len(cfg.sizes) > 1:
        options["size"] = (obj.size, list(cfg.sizes))
    if obj.kind in SHAPE_SIDES:
        options["sides"] = (
            str(SHAPE_SIDES[obj.kind]),
            sorted({SHAPE_SIDES[k] for k in cfg.shapes if k in SHAPE_SIDES}),
        )
    asked = rng.sample(sorted(options), k=min(len(options), rng.randint(1, 2)))
    for name in asked:
        turns.append((rng.choice(FOLLOW[name]), say(options[name][0])))
    answer, choices = options[asked[-1]]
    return WorldItem("multiturn", f"followup_{asked[-1]}", turns, answer, exact(choices), [scene])


def _follow_count(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scene = s.draw()
    present = sorted({o.colour for o in scene.objects})
    colour = rng.choice(present) if rng.random() < 0.7 else rng.choice(cfg.colours)
    answer = str(scene.count(colour=colour))
    turns = [
        (rng.choice(COUNT_ALL), str(len(scene.objects))),
        (rng.choice(FOLLOW["count"]).format(colour=colour), answer),
    ]
    return WorldItem("multiturn", "followup_count", turns, answer, exact(range(cfg.max_objects + 1)), [scene])


def _follow_word(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scene = s.draw(with_word=True)
    word = scene.word
    assert word is not None
    if word in WORD_OPPOSITES and rng.random() < 0.5:
        name, answer = "opposite", WORD_OPPOSITES[word]
        choices = sorted({WORD_OPPOSITES[w] for w in cfg.words if w in WORD_OPPOSITES})
    else:
        name, answer, choices = "letter", word[0], sorted({w[0] for w in cfg.words})
    turns = [(rng.choice(OCR), word), (rng.choice(FOLLOW[name]), say(answer))]
    return WorldItem("multiturn", f"followup_{name}", turns, answer, exact(choices), [scene])


# --- multi-image -------------------------------------------------------------------------


def _more_shapes(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    low, high = sorted(rng.sample(range(cfg.min_objects, cfg.max_objects + 1), 2))
    answer = rng.choice(("first", "second"))
    counts = (high, low) if answer == "first" else (low, high)
    scenes = [s.draw(n_objects=n) for n in counts]
    return WorldItem("multiimage", "more_shapes", [(rng.choice(MORE_SHAPES), say(answer))], answer,
                     exact(("first", "second")), scenes)  # fmt: skip


def _both_contain(s: SceneSampler) -> WorldItem:
    rng = s.rng
    kind = rng.choice(s.config.shapes)
    want = _yes(rng)
    has = (True, True) if want else rng.choice(((True, False), (False, True), (False, False)))
    scenes = [s.draw(where=lambda sc, h=h: (sc.count(kind=kind) > 0) == h) for h in has]
    return yes_no_item(
        "multiimage", "both_contain", rng.choice(BOTH_CONTAIN).format(a=a_or_an(kind), kind=kind), _yn(want), scenes
    )


def _which_colour(s: SceneSampler) -> WorldItem:
    rng = s.rng
    colour = rng.choice(s.config.colours)
    answer = rng.choice(("first", "second"))
    has = (True, False) if answer == "first" else (False, True)
    scenes = [s.draw(where=lambda sc, h=h: (sc.count(colour=colour) > 0) == h) for h in has]
    question = rng.choice(WHICH_COLOUR).format(colour=colour)
    return WorldItem(
        "multiimage", "which_colour", [(question, say(answer))], answer, exact(("first", "second")), scenes
    )


def _total_count(s: SceneSampler) -> WorldItem:
    rng, cfg = s.rng, s.config
    scenes = [s.draw(), s.draw()]
    answer = str(sum(len(sc.objects) for sc in scenes))
    choices = range(2 * cfg.min_objects, 2 * cfg.max_objects + 1)
    return WorldItem("multiimage", "total_count", [(rng.choice(TOTAL_COUNT), answer)], answer, exact(choices), scenes)


def _has_words(cfg: WorldConfig, pred: Callable[[str], bool]) -> bool:
    """Whether scenes can carry a word that satisfies ``pred``."""
    return cfg.word_prob > 0 and any(pred(w) for w in cfg.words)


TASKS: dict[str, list[tuple[Generator, Callable[[WorldConfig], bool]]]] = {
    "knowledge": [
        (_sides, lambda c: any(k in SHAPE_SIDES for k in c.shapes)),
        (_corners, lambda c: "circle" in c.shapes),
        (_opposite, lambda c: _has_words(c, lambda w: w in WORD_OPPOSITES)),
        (_animal, lambda c: _has_words(c, lambda w: w in ANIMALS) and _has_words(c, lambda w: w not in ANIMALS)),
    ],
    "reasoning": [
        (_more_colour, lambda _c: True),
        (_add_count, lambda _c: True),
        (_not_colour, lambda _c: True),
        (_relation, lambda c: c.max_objects >= 2),
        (_same_colour, lambda c: c.max_objects >= 2),
    ],
    "multiturn": [
        (_follow_object, lambda _c: True),
        (_follow_count, lambda _c: True),
        (_follow_word, lambda c: _has_words(c, lambda _w: True)),
    ],
    "multiimage": [
        (_more_shapes, lambda c: c.max_objects > c.min_objects),
        (_both_contain, lambda _c: True),
        (_which_colour, lambda _c: True),
        (_total_count, lambda _c: True),
    ],
}
"""Per ability: (generator, whether the config can produce it)."""


def generator_for(ability: str, config: WorldConfig) -> Callable[[SceneSampler], WorldItem] | None:
    """A generator that picks uniformly among the ability's tasks this config supports."""
    usable = [gen for gen, ok in TASKS[ability] if ok(config)]
    if not usable:
        return None
    return lambda s: s.rng.choice(usable)(s)
