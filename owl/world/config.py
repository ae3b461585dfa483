"""What the Owl-World can contain: the configuration and the fixed catalogues behind it.

The world is deliberately small and regular so that a ~135M LLM with a small CNN
can learn to see it from a few thousand examples at 128 px: a few big shapes
with distinct silhouettes, saturated colours that are far apart in RGB, two
sizes that differ by ~1.8x, a 3x3 grid so objects never overlap, and short
lower-case words rendered in a large bold font across a whole grid row.

Catalogues (``SHAPE_KINDS``, ``COLOUR_RGB``, word facts) are module constants so
that the question generators and the scorers agree on the answer space; the
:class:`WorldConfig` picks which of them a world uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from owl.errors import ConfigError

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "pentagon")
"""Every shape the renderer can draw; a world uses a subset (``WorldConfig.shapes``)."""

SHAPE_SIDES: dict[str, int] = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6}
"""Side counts of the true polygons; only these are asked about in "how many sides" questions
(a star or a cross has no answer a person would agree on)."""

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 225),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 185),
    "orange": (250, 130, 0),
    "pink": (245, 105, 185),
    "brown": (125, 75, 35),
    "cyan": (0, 185, 215),
}
"""Every colour the renderer can paint; saturated and far apart so a CNN separates them easily."""

BACKGROUND_RGB: tuple[int, int, int] = (245, 245, 240)
TEXT_RGB: tuple[int, int, int] = (20, 20, 20)

SIZES: dict[str, float] = {"small": 0.26, "large": 0.44}
"""Object radius as a fraction of a grid cell's side."""

GRID = 3
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
"""Names of the 3x3 grid cells in row-major order (cell index = row * 3 + column). The grid is
fixed: finer grids make cells too small for legible shapes at 128 px, coarser ones make
position questions trivial."""

WORDS: tuple[str, ...] = (
    "cat", "dog", "fish", "bird", "cow",
    "sun", "moon", "tree", "book", "cake",
    "hot", "cold", "wet", "dry", "day", "night",
    "full", "empty", "happy", "sad", "push", "pull",
)  # fmt: skip
"""Default scene words: 22 common lower-case words of 3-5 letters. Twelve form six opposite
pairs chosen to have one obvious opposite each (not "old": new or young?; not "small": big or
large?), and five are animals, so knowledge questions about the read word have one short answer."""

WORD_OPPOSITES: dict[str, str] = {
    "hot": "cold", "cold": "hot", "wet": "dry", "dry": "wet", "day": "night", "night": "day",
    "full": "empty", "empty": "full", "happy": "sad", "sad": "happy", "push": "pull", "pull": "push",
}  # fmt: skip
ANIMALS: frozenset[str] = frozenset({"cat", "dog", "fish", "bird", "cow"})


@dataclass(frozen=True)
class WorldConfig:
    """Which shapes, colours, sizes and words a world uses, and how scenes are sampled.

    Validated on construction so that a bad preset fails at load time with the value and
    the allowed range, not deep inside rendering.
    """

    image_size: int = 128
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    sizes: tuple[str, ...] = ("small", "large")
    min_objects: int = 1
    max_objects: int = 4
    words: tuple[str, ...] = WORDS
    word_prob: float = 0.4
    font_scale: float = 0.21
    """Font size in pixels as a fraction of ``image_size`` (27 px at 128 px)."""

    def __post_init__(self) -> None:
        # Accept lists (e.g. from YAML/JSON) but store tuples so the config stays hashable.
        for name in ("shapes", "colours", "sizes", "words"):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise ConfigError(f"WorldConfig.{name} must be a list of names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.image_size, int) or not 48 <= self.image_size <= 1024:
            raise ConfigError(f"WorldConfig.image_size={self.image_size!r} must be an int in [48, 1024]")
        _check_subset("shapes", self.shapes, SHAPE_KINDS, minimum=2)
        _check_subset("colours", self.colours, tuple(COLOUR_RGB), minimum=2)
        _check_subset("sizes", self.sizes, tuple(SIZES), minimum=1)
        cells = GRID * GRID - (GRID if self.word_prob > 0 else 0)
        if not isinstance(self.max_objects, int) or not 1 <= self.max_objects <= cells:
            raise ConfigError(
                f"WorldConfig.max_objects={self.max_objects!r} must be an int in [1, {cells}] "
                f"(a word takes a whole grid row when word_prob > 0)"
            )
        if not isinstance(self.min_objects, int) or not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"WorldConfig.min_objects={self.min_objects!r} must be an int in [1, {self.max_objects}]")
        if not 0.0 <= self.word_prob <= 1.0:
            raise ConfigError(f"WorldConfig.word_prob={self.word_prob!r} must be in [0, 1]")
        if self.word_prob > 0 and not self.words:
            raise ConfigError("WorldConfig.words is empty but word_prob > 0; give words or set word_prob=0")
        if len(set(self.words)) != len(self.words):
            raise ConfigError(f"WorldConfig.words has duplicates: {sorted(self.words)}")
        for word in self.words:
            if not (isinstance(word, str) and word.isascii() and word.isalpha() and word.islower()):
                raise ConfigError(f"WorldConfig.words entry {word!r} must be lower-case ASCII letters")
            if not 2 <= len(word) <= 6:
                raise ConfigError(
                    f"WorldConfig.words entry {word!r} has {len(word)} letters; use 2-6 so it stays legible"
                )
        if not 0.08 <= self.font_scale <= 0.3:
            raise ConfigError(f"WorldConfig.font_scale={self.font_scale!r} must be in [0.08, 0.3]")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> WorldConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown WorldConfig keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


def _check_subset(name: str, values: tuple[str, ...], allowed: tuple[str, ...], minimum: int) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"WorldConfig.{name} has unknown entries {bad}; choose from {list(allowed)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"WorldConfig.{name} has duplicates: {list(values)}")
    if not minimum <= len(values) <= len(allowed):
        raise ConfigError(f"WorldConfig.{name} has {len(values)} entries; need {minimum} to {len(allowed)}")


@dataclass
class WorldSpec:
    """The one place for Owl-World build defaults (the CLI's ``owl world build`` flags read them from here)."""

    seed: int = 0
    image_size: int = 128
    n_captions: int = 2000
    n_instructions: int = 2000
    n_text: int = 400
    n_eval: int = 600
    n_captions_single: int = 0  # captions of one-object scenes (captions_single.jsonl), for a stage-1 curriculum
    ability_weights: dict[str, float] = field(default_factory=dict)  # share of each ability in instruct.jsonl
    qa_per_image: int = 1  # questions per instruct.jsonl image for the single-scene abilities (owl.world.generate)
    caption_position_first: float = 0.0  # share of captions naming each object place first (owl.world.captions)
    balance_answers: float = 0.0  # >= 1: cap each answer's share per question type in instruct.jsonl (AnswerBalancer)
    config: dict[str, Any] = field(default_factory=dict)  # extra WorldConfig fields, e.g. {max_objects: 1}
