"""Scenes: what an Owl-World image shows, as data, and how scenes are sampled.

A scene is a few objects, each in its own cell of a 3x3 grid (so objects never
overlap and every position has one name), plus an optional word that spans one
whole grid row (a 5-letter word in a legible font is wider than a cell). Scenes
are frozen and hashable: the image is a pure function of the scene, so
"no eval image equals a train image" is checked on scenes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from owl.world.config import GRID, POSITIONS, WorldConfig


@dataclass(frozen=True)
class SceneObject:
    kind: str
    colour: str
    size: str
    cell: int
    """Grid cell index, row-major: 0 = top left ... 8 = bottom right."""

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    word: str | None = None
    word_cell: int | None = None
    """Centre cell of the row the word spans (1 top, 4 center, 7 bottom); no object is in that row."""

    @property
    def word_position(self) -> str | None:
        return None if self.word_cell is None else POSITIONS[self.word_cell]

    def count(self, *, colour: str | None = None, kind: str | None = None, size: str | None = None) -> int:
        """Number of objects matching every given attribute."""
        return sum(
            (colour is None or o.colour == colour)
            and (kind is None or o.kind == kind)
            and (size is None or o.size == size)
            for o in self.objects
        )

    def at(self, cell: int) -> SceneObject | None:
        return next((o for o in self.objects if o.cell == cell), None)


def sample_scene(
    rng: random.Random,
    config: WorldConfig,
    *,
    n_objects: int | None = None,
    with_word: bool | None = None,
) -> Scene:
    """Draw a scene: object count uniform in [min_objects, max_objects], attributes uniform, cells without replacement.

    ``n_objects`` and ``with_word`` pin those choices (question generators use them to
    build scenes a question needs); ``None`` samples them from the config.
    """
    if with_word is None:
        with_word = bool(config.words) and rng.random() < config.word_prob
    if with_word and not config.words:
        raise ValueError("with_word=True but WorldConfig.words is empty")
    if n_objects is None:
        n_objects = rng.randint(config.min_objects, config.max_objects)
    cells = list(range(GRID * GRID))
    word = word_cell = None
    if with_word:
        word = rng.choice(config.words)
        row = rng.randrange(GRID)
        word_cell = row * GRID + GRID // 2
        cells = [c for c in cells if c // GRID != row]
    if not 0 <= n_objects <= len(cells):
        raise ValueError(f"n_objects={n_objects} does not fit: {len(cells)} free grid cells")
    chosen = sorted(rng.sample(cells, n_objects))
    objects = tuple(
        SceneObject(
            kind=rng.choice(config.shapes), colour=rng.choice(config.colours), size=rng.choice(config.sizes), cell=c
        )
        for c in chosen
    )
    return Scene(objects=objects, word=word, word_cell=word_cell)


class SceneSampler:
    """Draws scenes that satisfy a question's needs and are not in an excluded set.

    The eval split passes every train scene as ``exclude`` so that no held-out image is
    pixel-identical to a training image (the world is small: a one-object scene has only
    a few hundred variants, so separate seeds alone would collide).
    """

    def __init__(self, rng: random.Random, config: WorldConfig, exclude: set[Scene] | None = None) -> None:
        self.rng = rng
        self.config = config
        self.exclude = exclude if exclude is not None else set()
        self.drawn: list[Scene] = []

    def draw(
        self,
        *,
        n_objects: int | None = None,
        with_word: bool | None = None,
        edit: Callable[[Scene, random.Random], Scene] | None = None,
        where: Callable[[Scene], bool] | None = None,
        max_tries: int = 5000,
    ) -> Scene:
        """Sample until ``where(edit(scene))`` holds and the scene is not excluded."""
        for _ in range(max_tries):
            scene = sample_scene(self.rng, self.config, n_objects=n_objects, with_word=with_word)
            if edit is not None:
                scene = edit(scene, self.rng)
            if (where is None or where(scene)) and scene not in self.exclude:
                self.drawn.append(scene)
                return scene
        raise RuntimeError(
            f"no scene satisfied the question's constraints in {max_tries} tries; "
            f"the WorldConfig is probably too small for this task ({self.config})"
        )


def unique_by(scene: Scene, obj: SceneObject, *attrs: str) -> bool:
    """True when no other object in the scene shares ``obj``'s values of ``attrs``."""
    key = tuple(getattr(obj, a) for a in attrs)
    return sum(tuple(getattr(o, a) for a in attrs) == key for o in scene.objects) == 1


def where_phrase(position: str) -> str:
    """'top left' -> 'at the top left', 'left' -> 'on the left', 'center' -> 'in the center'."""
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"
