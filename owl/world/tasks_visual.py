"""Questions about what is in one image: colour, shape, count, position, size, OCR, and
instruction following (the same questions with a required answer form).

Every question refers to an object so that exactly one object fits: by its grid
position (always unique), or by its shape/colour only when no other object shares it.
Yes/no answers are decided before the scene is drawn, so they are balanced 50/50 and
chance really is 1/2.
"""

from __future__ import annotations

from collections.abc import Callable

from owl.world.captions import number_word
from owl.world.config import POSITIONS
from owl.world.items import WorldItem, exact, form, say, yesno
from owl.world.scene import Scene, SceneObject, SceneSampler, unique_by, where_phrase

COLOUR_AT = (
    "What colour is the shape {where}?",
    "What color is the shape {where}?",
    "Which colour is the object {where}?",
    "What is the colour of the shape {where}?",
)
COLOUR_OF = (
    "What colour is the {kind}?",
    "What color is the {kind} in the image?",
    "Which colour does the {kind} have?",
)
SHAPE_AT = ("What shape is {where}?", "Which shape is {where}?", "What kind of shape is {where}?")
SHAPE_OF = (
    "What shape is the {colour} object?",
    "Which shape is {colour}?",
    "What is the shape of the {colour} object?",
)
COUNT_ALL = (
    "How many shapes are there?",
    "How many shapes are in the image?",
    "Count the shapes in the image.",
    "How many shapes can you see?",
)
COUNT_COLOUR = ("How many {colour} shapes are there?", "How many shapes are {colour}?", "Count the {colour} shapes.")
POSITION = (
    "Where is the {desc}?",
    "Where is the {desc} in the image?",
    "In which part of the image is the {desc}?",
    "Where can you find the {desc}?",
)
SIZE_AT = (
    "Is the shape {where} large or small?",
    "Is the object {where} small or large?",
    "What size is the shape {where}?",
)
SIZE_OF = ("Is the {desc} large or small?", "Is the {desc} small or large?", "How large is the {desc}: small or large?")
OCR = (
    "What word is written in the image?",
    "What does the text in the image say?",
    "Read the word in the image.",
    "Which word can you see in the image?",
)
PRESENCE = ("Is there {a} {colour} {kind} in the image?", "Does the image contain {a} {colour} {kind}?")

FORM_SUFFIX: dict[str, tuple[str, ...]] = {
    "caps": ("Answer in capital letters.", "Reply in upper case."),
    "lower": ("Answer in lower case letters.", "Use only lowercase letters."),
    "digit": ("Give the number as a digit.", "Answer with a digit."),
    "number_word": ("Write the number as a word.", "Spell out the number in letters."),
    "one_word": ("Answer with a single word.", "Reply with one word only."),
    "yesno_only": ("Reply with yes or no only.", "Answer only yes or no."),
}


def a_or_an(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def describe(scene: Scene, obj: SceneObject) -> str | None:
    """Shortest name that picks ``obj`` out: 'star', else 'red star', else None."""
    if unique_by(scene, obj, "kind"):
        return obj.kind
    if unique_by(scene, obj, "colour", "kind"):
        return f"{obj.colour} {obj.kind}"
    return None


def _has_unique(attr: str) -> Callable[[Scene], bool]:
    return lambda scene: any(unique_by(scene, o, attr) for o in scene.objects)


def _unique_objects(scene: Scene, attr: str) -> list[SceneObject]:
    return [o for o in scene.objects if unique_by(scene, o, attr)]


def _attribute_question(s: SceneSampler, attr: str) -> tuple[str, str, str, Scene]:
    """(task, question, answer, scene) asking an object's colour or shape."""
    rng = s.rng
    other = "kind" if attr == "colour" else "colour"
    if rng.random() < 0.5:
        scene = s.draw()
        obj = rng.choice(scene.objects)
        frames = COLOUR_AT if attr == "colour" else SHAPE_AT
        question = rng.choice(frames).format(where=where_phrase(obj.position))
        task = f"{'colour' if attr == 'colour' else 'shape'}_at_position"
    else:
        scene = s.draw(where=_has_unique(other))
        obj = rng.choice(_unique_objects(scene, other))
        frames = COLOUR_OF if attr == "colour" else SHAPE_OF
        question = rng.choice(frames).format(kind=obj.kind, colour=obj.colour)
        task = "colour_of_shape" if attr == "colour" else "shape_of_colour"
    return task, question, getattr(obj, attr), scene


def colour_item(s: SceneSampler) -> WorldItem:
    task, question, answer, scene = _attribute_question(s, "colour")
    return WorldItem("colour", task, [(question, say(answer))], answer, exact(s.config.colours), [scene])


def shape_item(s: SceneSampler) -> WorldItem:
    task, question, answer, scene = _attribute_question(s, "kind")
    return WorldItem("shape", task, [(question, say(answer))], answer, exact(s.config.shapes), [scene])


def _count_question(s: SceneSampler) -> tuple[str, str, str, list[int], Scene]:
    """(task, question, answer, choices, scene) for counting all shapes or those of a colour."""
    rng, cfg = s.rng, s.config
    scene = s.draw()
    if rng.random() < 0.5:
        question = rng.choice(COUNT_ALL)
        return "count_all", question, str(len(scene.objects)), list(range(cfg.min_objects, cfg.max_objects + 1)), scene
    present = sorted({o.colour for o in scene.objects})
    colour = rng.choice(present) if rng.random() < 0.7 else rng.choice(cfg.colours)
    question = rng.choice(COUNT_COLOUR).format(colour=colour)
    return "count_colour", question, str(scene.count(colour=colour)), list(range(cfg.max_objects + 1)), scene


def count_item(s: SceneSampler) -> WorldItem:
    task, question, answer, choices, scene = _count_question(s)
    return WorldItem("count", task, [(question, say(answer))], answer, exact(choices), [scene])


def position_item(s: SceneSampler) -> WorldItem:
    rng = s.rng
    scene = s.draw(where=lambda sc: any(describe(sc, o) for o in sc.objects))
    obj = rng.choice([o for o in scene.objects if describe(scene, o)])
    question = rng.choice(POSITION).format(desc=describe(scene, obj))
    task = "position_of_shape"
    return WorldItem("position", task, [(question, say(obj.position))], obj.position, exact(POSITIONS), [scene])


def size_item(s: SceneSampler) -> WorldItem:
    rng = s.rng
    if rng.random() < 0.5:
        scene = s.draw()
        obj = rng.choice(scene.objects)
        question, task = rng.choice(SIZE_AT).format(where=where_phrase(obj.position)), "size_at_position"
    else:
        scene = s.draw(where=lambda sc: any(describe(sc, o) for o in sc.objects))
        obj = rng.choice([o for o in scene.objects if describe(scene, o)])
        question, task = rng.choice(SIZE_OF).format(desc=describe(scene, obj)), "size_of_shape"
    return WorldItem("size", task, [(question, say(obj.size))], obj.size, exact(s.config.sizes), [scene])


def ocr_item(s: SceneSampler) -> WorldItem:
    scene = s.draw(with_word=True)
    assert scene.word is not None
    question = s.rng.choice(OCR)
    return WorldItem("ocr", "read_word", [(question, scene.word)], scene.word, exact(s.config.words), [scene])


def presence_question(s: SceneSampler) -> tuple[str, str, Scene]:
    """(question, 'yes'/'no', scene) for 'Is there a red star?', answers balanced."""
    rng, cfg = s.rng, s.config
    answer = rng.choice(("yes", "no"))
    scene = s.draw()
    if answer == "yes":
        obj = rng.choice(scene.objects)
        colour, kind = obj.colour, obj.kind
    else:
        absent = [(c, k) for c in cfg.colours for k in cfg.shapes if not scene.count(colour=c, kind=k)]
        colour, kind = rng.choice(absent)
    return rng.choice(PRESENCE).format(a=a_or_an(colour), colour=colour, kind=kind), answer, scene


def instruction_item(s: SceneSampler) -> WorldItem:
    """A visual question plus a required answer form; scored on form and content."""
    rng, cfg = s.rng, s.config
    name = rng.choice(tuple(FORM_SUFFIX))
    suffix = rng.choice(FORM_SUFFIX[name])
    if name in ("digit", "number_word"):
        scene = s.draw()
        question = rng.choice(COUNT_ALL)
        n = len(scene.objects)
        choices: list[str] = [str(k) for k in range(cfg.min_objects, cfg.max_objects + 1)]
        answer = spoken = str(n) if name == "digit" else number_word(n)
    elif name == "yesno_only":
        question, answer, scene = presence_question(s)
        spoken, choices = answer.capitalize(), ["yes", "no"]
    else:
        attr = rng.choice(("colour", "kind"))
        _, question, value, scene = _attribute_question(s, attr)
        choices = list(cfg.colours if attr == "colour" else cfg.shapes)
        answer = spoken = {"caps": value.upper(), "lower": value, "one_word": value.capitalize()}[name]
    return WorldItem(
        "instruction", f"form_{name}", [(f"{question} {suffix}", spoken)], answer, form(name, choices), [scene]
    )


GENERATORS = {
    "colour": colour_item,
    "shape": shape_item,
    "count": count_item,
    "position": position_item,
    "size": size_item,
    "ocr": ocr_item,
    "instruction": instruction_item,
}


def yes_no_item(ability: str, task: str, question: str, answer: str, scene_list: list[Scene]) -> WorldItem:
    """Shared by generators whose answer is yes or no."""
    return WorldItem(ability, task, [(question, say(answer))], answer, yesno(), scene_list)
