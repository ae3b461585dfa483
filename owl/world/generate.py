"""Turn a seed into a list of questions: which ability each item tests, and the item itself.

Abilities are allotted by largest remainder (exact shares, no sampling noise) and then
shuffled, so a split of n items has the same per-ability counts for every seed.
"""

from __future__ import annotations

import random
from collections import Counter
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


class AnswerBalancer:
    """Caps how often one answer may be taught for a question type (training data only).

    Natural scenes make some answers common ("1" is the answer to most "How many red shapes?"), and a
    model can score on them without looking. With ``max_share`` = r, an item whose answer already
    holds more than r times its fair share (1 / number of possible answers) among the items of its task
    is rejected and redrawn; rare answers are never forced (a redraw budget runs out and the item is
    kept), so the cap bounds the prior without distorting the scenes. ``max_share`` <= 0 admits all.
    """

    def __init__(self, max_share: float = 0.0) -> None:
        if not isinstance(max_share, int | float) or max_share < 0 or 0 < max_share < 1:
            raise ConfigError(f"balance_answers={max_share!r}: use 0 (off) or a share cap >= 1, e.g. 1.5")
        self.max_share = float(max_share)
        self.counts: dict[str, Counter[str]] = {}

    def admits(self, item: WorldItem) -> bool:
        choices = item.scorer.get("choices") or []
        if self.max_share <= 0 or len(choices) < 2:
            return True
        seen = self.counts.get(item.task, Counter())
        fair = (sum(seen.values()) + 1) / len(choices)
        return seen[str(item.answer)] + 1 <= self.max_share * fair + 1

    def add(self, item: WorldItem) -> None:
        self.counts.setdefault(item.task, Counter())[str(item.answer)] += 1


def balanced(draw: Callable[[], WorldItem], balancer: AnswerBalancer, tries: int = 200) -> WorldItem:
    """The first of up to ``tries`` draws that ``balancer`` admits (else the last), recorded in it."""
    for _ in range(tries):
        item = draw()
        if balancer.admits(item):
            break
    balancer.add(item)
    return item


class _Unfit(Exception):
    """The pinned scene cannot serve this question (wrong object count, no word, a needed unique object missing)."""


class PinnedSampler(SceneSampler):
    """A sampler whose every draw is one given scene, when the question's constraints allow it."""

    def __init__(self, rng: random.Random, config: WorldConfig, scene: Scene) -> None:
        super().__init__(rng, config)
        self.scene = scene

    def draw(
        self,
        *,
        n_objects: int | None = None,
        with_word: bool | None = None,
        edit: Callable[[Scene, random.Random], Scene] | None = None,
        where: Callable[[Scene], bool] | None = None,
        max_tries: int = 5000,
    ) -> Scene:
        del max_tries  # one candidate only
        s = self.scene
        if edit is not None or (n_objects is not None and len(s.objects) != n_objects):
            raise _Unfit
        if (with_word is True and s.word is None) or (with_word is False and s.word is not None):
            raise _Unfit
        if where is not None and not where(s):
            raise _Unfit
        return s


def packed_item(
    sampler: SceneSampler, weights: Mapping[str, float], k: int, balancer: AnswerBalancer | None = None
) -> WorldItem:
    """Up to ``k`` different questions about one scene as one multi-turn item (training data only).

    Each question costs its own tokens but the image's visual tokens, the system prompt and the first
    turn's markers are paid once, so a step teaches ~``k`` answers for the price of ~2: more supervised
    answers per visual ability within a fixed compute budget. Abilities are drawn by ``weights`` among the
    single-scene ones (:data:`owl.world.tasks_visual.GENERATORS`); a question the scene cannot serve
    (e.g. OCR on a scene without a word) is redrawn, and so is one whose answer ``balancer`` rejects. The scene is
    fixed, so a rejected answer gives its turn to another question type: a type whose natural answers are
    skewed gets fewer turns (capped, ~1/6 as many "How many red shapes?" at 1.5) rather than other scenes.
    """
    rng = sampler.rng
    names = [a for a in weights if a in GENERATORS and weights[a] > 0]
    scene = sampler.draw()
    pinned = PinnedSampler(rng, sampler.config, scene)
    turns: list[tuple[str, str]] = []
    first: WorldItem | None = None
    used: set[str] = set()
    for attempt in range(16 * k):
        if len(turns) == k:
            break
        ability = rng.choices(names, weights=[weights[a] for a in names])[0]
        if ability in used and len(used) < len(names):  # different abilities first: more kinds of reading per image
            continue
        try:
            item = GENERATORS[ability](pinned)
        except _Unfit:
            continue
        if any(q == item.turns[0][0] for q, _ in turns):
            continue
        if balancer is not None:
            if not balancer.admits(item) and (turns or attempt < 12 * k):  # the scene must still get a question
                continue
            balancer.add(item)
        first = first or item
        used.add(ability)
        turns += item.turns
    assert first is not None, "a scene always admits a count question"
    return WorldItem(first.ability, "packed", turns, first.answer, first.scorer, [scene])


def generate_items(
    config: WorldConfig,
    rng: random.Random,
    n: int,
    *,
    weights: Mapping[str, float] | None = None,
    split: str = "train",
    exclude: set[Scene] | None = None,
    qa_per_image: int = 1,
    balance_answers: float = 0.0,
) -> list[WorldItem]:
    """``n`` items, abilities in proportion to ``weights`` (default: every supported ability equally).

    ``split`` picks the text-fact half ("train"/"eval"); ``exclude`` holds scenes no item
    may show (the eval split passes every training scene). ``qa_per_image`` > 1 turns each
    single-scene visual item into a :func:`packed_item` of that many questions about one scene
    (training data; the eval split always has one question per item). ``balance_answers`` > 0 caps each
    answer's share per question type (:class:`AnswerBalancer`; training data only, the eval split keeps
    the world's natural answers).
    """
    if not isinstance(qa_per_image, int) or qa_per_image < 1:
        raise ConfigError(f"qa_per_image={qa_per_image!r} must be an int >= 1")
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
    balancer = AnswerBalancer(balance_answers)
    items = []
    for ability in abilities:
        if ability == "text":
            items.append(texts.draw())
        elif qa_per_image > 1 and ability in GENERATORS:
            items.append(packed_item(sampler, weights, qa_per_image, balancer))
        else:
            generate = _generator(ability, config)
            assert generate is not None
            items.append(balanced(lambda g=generate: g(sampler), balancer))
    return items


def items_by_ability(items: Sequence[WorldItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.ability] = counts.get(item.ability, 0) + 1
    return {a: counts[a] for a in ABILITIES if a in counts}
