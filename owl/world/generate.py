"""Turn a seed into a list of questions: which ability each item tests, and the item itself.

Abilities are allotted by largest remainder (exact shares, no sampling noise) and then
shuffled, so a split of n items has the same per-ability counts for every seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from owl.errors import ConfigError
from owl.world.config import WorldConfig
from owl.world.items import ABILITIES, WorldItem
from owl.world.scene import Scene, SceneSampler
from owl.world.tasks_reasoning import generator_for
from owl.world.tasks_text import TextSampler
from owl.world.tasks_visual import GENERATORS

IMAGE_ABILITIES: tuple[str, ...] = tuple(a for a in ABILITIES if a != "text")


def _generator(ability: str, config: WorldConfig) -> Callable[[SceneSampler], WorldItem] | None:
    if ability in GENERATORS:
        needs_word = ability == "ocr"
        return None if needs_word and (config.word_prob == 0 or not config.words) else GENERATORS[ability]
    return generator_for(ability, config)


def supported_abilities(config: WorldConfig) -> list[str]:
    """Abilities this config can generate questions for (all of them with the defaults)."""
    return [a for a in IMAGE_ABILITIES if _generator(a, config) is not None] + ["text"]


def allocate(n: int, weights: Mapping[str, float]) -> list[str]:
    """``n`` ability names in proportion to ``weights`` (largest remainder, ties by order)."""
    if n < 0:
        raise ConfigError(f"cannot allocate n={n} items; need n >= 0")
    bad = {a: w for a, w in weights.items() if w < 0}
    if bad or not any(weights.values()):
        raise ConfigError(f"ability weights must be >= 0 with a positive sum, got {dict(weights)}")
    total = sum(weights.values())
    exact = {a: n * w / total for a, w in weights.items()}
    counts = {a: int(x) for a, x in exact.items()}
    by_remainder = sorted(weights, key=lambda a: -(exact[a] - counts[a]))
    for a in by_remainder[: n - sum(counts.values())]:
        counts[a] += 1
    return [a for a in weights for _ in range(counts[a])]


def generate_items(
    config: WorldConfig,
    rng: random.Random,
    n: int,
    *,
    weights: Mapping[str, float] | None = None,
    split: str = "train",
    exclude: set[Scene] | None = None,
) -> list[WorldItem]:
    """``n`` items, abilities in proportion to ``weights`` (default: every supported ability equally).

    ``split`` picks the text-fact half ("train"/"eval"); ``exclude`` holds scenes no item
    may show (the eval split passes every training scene).
    """
    supported = supported_abilities(config)
    weights = dict(weights) if weights is not None else {a: 1.0 for a in supported}
    unknown = [a for a in weights if a not in ABILITIES]
    if unknown:
        raise ConfigError(f"unknown abilities {unknown}; known: {list(ABILITIES)}")
    missing = [a for a, w in weights.items() if w > 0 and a not in supported]
    if missing:
        raise ConfigError(f"this WorldConfig cannot generate {missing} questions (e.g. no words, or no polygons)")
    abilities = allocate(n, weights)
    rng.shuffle(abilities)
    sampler = SceneSampler(rng, config, exclude)
    texts = TextSampler(rng, split)
    items = []
    for ability in abilities:
        if ability == "text":
            items.append(texts.draw())
        else:
            generate = _generator(ability, config)
            assert generate is not None
            items.append(generate(sampler))
    return items


def items_by_ability(items: Sequence[WorldItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.ability] = counts.get(item.ability, 0) + 1
    return {a: counts[a] for a in ABILITIES if a in counts}
