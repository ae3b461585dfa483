"""The training data stream: sources -> weighted mixture -> this rank's encoded micro-batches.

Determinism is the design constraint, because a killed run must resume
*exactly*: every random choice comes from a generator whose state is saved
(the mixture) or is derived from (seed, epoch) or (seed, global sample index)
(shuffling, augmentation). A source's position is (epoch, items emitted);
resuming replays the source up to that point (reading records is cheap next to
decoding images, which replay skips).

Distributed: every rank draws the same global batch from the mixture and keeps
the slice ``rank::world``, so a 2-process run trains on the same samples per
step as a 1-process run with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from owl.conversation import Sample, SampleError
from owl.data import Skipped, SkipStats, SourceSpec, iter_source
from owl.processing import Encoded, OwlProcessor

SHUFFLE_BUFFER = 1000


def _shuffled(items: Iterator[Sample | Skipped], rng: np.random.Generator, size: int) -> Iterator[Sample | Skipped]:
    """A shuffle buffer (as in webdataset): random order within a window, streaming; Skipped pass through."""
    buf: list[Sample] = []
    for item in items:
        if isinstance(item, Skipped):
            yield item
            continue
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        buf[j], item = item, buf[j]
        yield item
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[j]


class SourceStream:
    """Endless epochs over one source, shuffled per epoch, with a resumable position."""

    def __init__(
        self, spec: SourceSpec, index: int, seed: int, count_skips: bool, shuffle: int = SHUFFLE_BUFFER
    ) -> None:
        self.spec = spec
        self.index = index
        self.seed = seed
        self.count_skips = count_skips
        self.shuffle = shuffle
        self.epoch = 0
        self.emitted = 0  # items (samples and skips) taken from the current epoch
        self._it: Iterator[Sample | Skipped] | None = None
        self._samples_this_epoch = 0

    def _open(self) -> None:
        rng = np.random.default_rng([self.seed, self.index, self.epoch])
        it = iter_source(self.spec)
        self._it = _shuffled(it, rng, self.shuffle) if self.shuffle > 1 else it
        for _ in range(self.emitted):  # replay to the saved position
            if isinstance(next(self._it), Sample):
                self._samples_this_epoch += 1

    def next(self, stats: SkipStats) -> Sample:
        while True:
            if self._it is None:
                self._open()
            try:
                item = next(self._it)
            except StopIteration:
                if self._samples_this_epoch == 0:
                    raise ValueError(
                        f"data source {self.spec.name!r} ({self.spec.path}) has no usable records; "
                        f"see the skip summary: {stats.by_reason(self.spec.name)}"
                    ) from None
                self.epoch, self.emitted, self._it, self._samples_this_epoch = self.epoch + 1, 0, None, 0
                continue
            self.emitted += 1
            if isinstance(item, Skipped):
                if self.count_skips:
                    stats.add(item, first=self.epoch == 0)
                continue
            self._samples_this_epoch += 1
            return item

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "emitted": self.emitted}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.emitted, self._it, self._samples_this_epoch = state["epoch"], state["emitted"], None, 0


class Mixture:
    """Weighted mixture of sources.

    ``sample``: each draw picks a source with probability proportional to its
    weight. ``per_batch``: every batch holds fixed shares (largest remainder of
    weight x batch size), in random order; the paper's stage 2 is half
    text-only, half multimodal per step.
    """

    def __init__(self, streams: list[SourceStream], mode: str, seed: int) -> None:
        self.streams = streams
        w = np.array([s.spec.weight for s in streams], dtype=np.float64)
        self.p = w / w.sum()
        self.mode = mode
        self.rng = np.random.default_rng([seed, 7919])
        self.drawn = 0

    def _counts(self, n: int) -> list[int]:
        exact = self.p * n
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
            counts[i] += 1
        return counts.tolist()

    def draw(self, n: int, stats: SkipStats) -> list[tuple[int, Sample, bool]]:
        """``n`` samples, each with its global index (seeds its augmentation) and whether its source is in its
        first epoch (a record met then is met for the first time: how skips are counted once)."""
        if self.mode == "per_batch":
            picks = [i for i, c in enumerate(self._counts(n)) for _ in range(c)]
            picks = [picks[j] for j in self.rng.permutation(n)]
        else:
            picks = self.rng.choice(len(self.streams), size=n, p=self.p).tolist()
        out = []
        for src in picks:
            stream = self.streams[src]
            sample = stream.next(stats)
            out.append((self.drawn, sample, stream.epoch == 0))
            self.drawn += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "drawn": self.drawn,
            "streams": {s.spec.name: s.state_dict() for s in self.streams},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.drawn = state["drawn"]
        for s in self.streams:
            if s.spec.name in state["streams"]:
                s.load_state_dict(state["streams"][s.spec.name])


class TrainData:
    """One optimizer step's worth of this rank's micro-batches at a time."""

    def __init__(
        self,
        sources: list[SourceSpec],
        mix: str,
        processor: OwlProcessor,
        seed: int,
        rank: int,
        world: int,
        batch_size: int,
        grad_accum: int,
        group_by_length: bool,
    ) -> None:
        self.processor = processor
        self.seed = seed
        self.rank, self.world = rank, world
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.group_by_length = group_by_length
        self.stats = SkipStats()
        streams = [SourceStream(s, i, seed, count_skips=rank == 0) for i, s in enumerate(sources)]
        self.mixture = Mixture(streams, mix, seed)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    def _encode(self, index: int, sample: Sample, first: bool) -> Encoded | None:
        try:
            enc = self.processor.encode(sample, rng=np.random.default_rng([self.seed, index]))
        except SampleError as e:
            self.stats.add(Skipped(sample.source, e.reason, sample.id or f"sample {index}", str(e)), first=first)
            return None
        self.stats.add_ok(sample.source)
        return enc

    def next_step(self) -> list[list[Encoded]]:
        """``grad_accum`` lists of encoded samples (a list may be short or empty if samples were skipped)."""
        drawn = self.mixture.draw(self.global_batch, self.stats)
        mine = [e for e in (self._encode(*d) for d in drawn[self.rank :: self.world]) if e is not None]
        if self.group_by_length:
            mine.sort(key=lambda e: len(e.input_ids))
        n = self.batch_size
        return [mine[k * n : (k + 1) * n] for k in range(self.grad_accum)]

    def state_dict(self) -> dict[str, Any]:
        return {"mixture": self.mixture.state_dict(), "stats": self.stats.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mixture.load_state_dict(state["mixture"])
        self.stats = SkipStats.from_dict(state["stats"])
