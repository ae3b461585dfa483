"""Fit a run's step count to a wall-clock budget, measured on the run's own first steps.

Why: the same recipe runs at 1 s a step on one CPU and 3 s on another (bf16 units or not), and for stage-1
alignment more samples is the lever that keeps paying (benchmarks/NOTES.md §18-20). A fixed ``max_steps`` either
wastes a fast machine's budget or overruns a slow one's. ``train.time_budget_min`` keeps ``max_steps`` as the cap
and lowers the step count to what fits: after ``train.time_budget_measure`` steps (the first step after a start or
resume is not timed: it pays for allocation and warm-up) it takes the mean time of those steps, image-gain
measurements and all (the window is rounded up to whole image-gain periods), and fixes the run's step count once,
rounded down to a multiple of 10. That count is saved in every later checkpoint, so a resumed run ends where the
uninterrupted one would; a run killed before the decision measures again after resuming, against what is left of
its budget. It is an estimate from the first steps: on the long Owl-World stage 1 the later steps ran ~6% slower
than the first twenty (NOTES.md §20), so a budget is a target within a few percent, not a deadline; leave margin.

Lightning's ``Trainer(max_time=...)`` stops on the clock instead; deciding once, early, is what lets the progress
bar, the lr schedule (its horizon is the decided count) and a rerun on the same machine agree on where it ends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

ROUND_TO = 10


@dataclass
class TimeBudget:
    """The clock of one run's budget. ``seconds_before``: training time of earlier runs this one resumes."""

    minutes: float
    measure: int
    seconds_before: float = 0.0
    _started: float = field(default_factory=lambda: time.perf_counter())  # looked up at run time
    _window_start: float | None = None
    _window_steps: int = 0

    def elapsed(self) -> float:
        """Training seconds so far, earlier runs included."""
        return self.seconds_before + time.perf_counter() - self._started

    def after_step(self) -> bool:
        """Count one finished step; True once the measuring window is complete (the step count is due)."""
        if self._window_start is None:  # the first step of this process is warm-up: the window starts after it
            self._window_start = time.perf_counter()
            return False
        self._window_steps += 1
        return self._window_steps >= self.measure

    def seconds_per_step(self) -> float:
        """Mean wall time of the steps in the window."""
        assert self._window_start is not None and self._window_steps > 0
        return (time.perf_counter() - self._window_start) / self._window_steps


def window(measure: int, every: int) -> int:
    """The steps to time: ``measure`` rounded up to a whole number of image-gain periods (a probe ``every`` steps,
    0: none), so the probe's share of the time is what it will be over the run (20 steps with a probe every 15
    would hold one probe instead of 1.33, and underestimate a long-profile step by 2-3%)."""
    return -(-measure // every) * every if every else measure


def fitted_steps(step: int, cap: int, seconds_left: float, seconds_per_step: float) -> int:
    """The run's step count: what fits in ``seconds_left`` after ``step``, rounded down to a multiple of 10,
    at least ``step`` (the run ends now) and at most ``cap`` (``max_steps``)."""
    more = max(0.0, seconds_left) / max(seconds_per_step, 1e-9)
    n = (step + math.floor(more)) // ROUND_TO * ROUND_TO
    return min(cap, max(step, n))


def describe(minutes: float, seconds_per_step: float, measured: int, total: int, cap: int) -> str:
    """The one line a run prints when it fixes its step count."""
    capped = " (the cap, train.max_steps)" if total == cap else f" of at most {cap}"
    return f"time budget {minutes:g} min: {seconds_per_step:.2f} s/step over {measured} steps -> {total} steps{capped}"


def state(total: int, decided: bool, seconds: float) -> dict[str, Any]:
    """What a checkpoint keeps of the budget."""
    return {"total": total, "decided": decided, "seconds": seconds}
