"""Bootstrap confidence intervals over questions: how far a score would move on another draw of the benchmark.

Why: a benchmark is a sample of questions; two models 1 point apart on 300 questions are not told apart. The
interval here is the percentile bootstrap: draw the units (questions, or MME's images, or MMBench's circular
question groups) with replacement as many times as ``resamples``, recompute the score on each draw, and take
the middle ``level`` of those scores. Seeded (``seed``), so the same predictions give the same interval.

Scores that add up parts (MME's perception total is the sum of its subtasks) resample each part on its own
(stratified), as the benchmark fixes how many questions each part has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once (VQAv2 val: 214k questions x 1000 draws in chunks)

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps draws ``(B, n, ...)`` (B resamples of the n units' values) to the B scores ``(B,)``."""


def mean_percent(draws: np.ndarray) -> np.ndarray:
    """100 x the mean of each draw: accuracy in percent from per-unit scores in [0, 1]."""
    return 100.0 * draws.mean(axis=1)


def interval(
    parts: Sequence[np.ndarray] | np.ndarray,
    statistic: Statistic = mean_percent,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
) -> list[float] | None:
    """``[low, high]`` of the score ``sum(statistic(part) for part in parts)`` at ``level`` (None: no units).

    ``parts`` is one array of per-unit values (first axis: units) or a list of them, resampled separately.
    """
    if isinstance(parts, np.ndarray):
        parts = [parts]
    parts = [np.asarray(p) for p in parts if len(p)]
    if not parts or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    totals = np.zeros(resamples)
    for values in parts:
        n = len(values)
        step = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, resamples, step):
            b = min(step, resamples - start)
            totals[start : start + b] += statistic(values[rng.integers(0, n, size=(b, n))])
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(totals, [tail, 100.0 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def describe(ci: list[float] | None, digits: int = 2) -> str:
    """``[62.10, 70.35]`` for people ('' when there is no interval)."""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""
