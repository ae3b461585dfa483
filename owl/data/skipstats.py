"""Counts of usable and skipped records, per source and per reason.

Skipping bad records keeps a long run alive, but silently dropping 30% of a
dataset is its own failure; these counts make the loss visible (the loop
logs :meth:`SkipStats.summary_lines` and can stop on :meth:`SkipStats.bad_fraction`).
They are saved in checkpoints (:meth:`to_dict`/:meth:`from_dict`) so a resumed
run keeps reporting totals, and :meth:`merge` adds up the counts of
distributed ranks.

A run longer than one epoch meets each bad record once per epoch, so two
numbers are kept: how often skips happened (``skipped``: what the bad-data
abort compares with records seen) and how many *distinct* bad records there
are (``distinct``: skips met during their source's first epoch, when every
record is met for the first time). Counting them this way needs no memory per
record, survives resume and adds up across ranks, which each see their own
records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from owl.data.source import Skipped
from owl.errors import CheckpointError

_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1 (before distinct counts): distinct is taken to equal skipped
_EXAMPLE_CHARS = 200


@dataclass
class SkipStats:
    """Per-source counts: ``ok[source]`` samples used, ``skipped[source][reason]`` skips (each time a bad
    record was met), ``distinct[source][reason]`` bad records counted once.

    ``examples[source][reason]`` keeps the first skipped record of each kind
    (``"where: detail"``) so the summary can point at a line to look at.
    """

    ok: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, dict[str, str]] = field(default_factory=dict)
    distinct: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, skipped: Skipped, first: bool = True) -> None:
        """Count one skip; ``first``: the record is met for the first time (its source's first epoch)."""
        reasons = self.skipped.setdefault(skipped.source, {})
        reasons[skipped.reason] = reasons.get(skipped.reason, 0) + 1
        if first:
            once = self.distinct.setdefault(skipped.source, {})
            once[skipped.reason] = once.get(skipped.reason, 0) + 1
        self.examples.setdefault(skipped.source, {}).setdefault(
            skipped.reason, f"{skipped.where}: {skipped.detail}"[:_EXAMPLE_CHARS]
        )

    def add_ok(self, source: str, count: int = 1) -> None:
        """Count ``count`` usable samples of ``source``."""
        self.ok[source] = self.ok.get(source, 0) + count

    @property
    def total_ok(self) -> int:
        return sum(self.ok.values())

    @property
    def total_skipped(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.skipped.values())

    @property
    def total_distinct(self) -> int:
        """Distinct bad records (each counted once however many epochs met it)."""
        return sum(sum(reasons.values()) for reasons in self.distinct.values())

    @property
    def total_seen(self) -> int:
        """Records seen so far, usable or not."""
        return self.total_ok + self.total_skipped

    def sources(self) -> list[str]:
        """Every source seen, sorted."""
        return sorted(set(self.ok) | set(self.skipped))

    def seen(self, source: str) -> int:
        return self.ok.get(source, 0) + sum(self.skipped.get(source, {}).values())

    def by_reason(self, source: str | None = None) -> dict[str, int]:
        """Skip counts per reason, for one source or all of them, most frequent first."""
        counts: dict[str, int] = {}
        for name, reasons in self.skipped.items():
            if source is None or name == source:
                for reason, n in reasons.items():
                    counts[reason] = counts.get(reason, 0) + n
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def by_source(self) -> dict[str, dict[str, int]]:
        """``{source: {"seen": n, "ok": n, "skipped": n, "distinct": n}}`` for every source."""
        return {
            name: {
                "seen": self.seen(name),
                "ok": self.ok.get(name, 0),
                "skipped": self.seen(name) - self.ok.get(name, 0),
                "distinct": sum(self.distinct.get(name, {}).values()),
            }
            for name in self.sources()
        }

    def bad_fraction(self, source: str | None = None) -> float:
        """Fraction of records skipped, for one source or overall; 0.0 before any record is seen."""
        if source is None:
            seen, bad = self.total_seen, self.total_skipped
        else:
            seen, bad = self.seen(source), sum(self.skipped.get(source, {}).values())
        return bad / seen if seen else 0.0

    def summary_lines(self) -> list[str]:
        """A readable table: one row per source and a total, then the first example of each skip reason.

        ``bad records`` counts each bad record once; ``skipped`` counts every time one was met (once per
        epoch), so over 1.2 epochs 8 bad records can be skipped 14 times. Reasons read ``reason records``,
        with ``(met n)`` beside when a record was met more than once.
        """
        rows = [("source", "seen", "ok", "skipped", "bad records", "bad", "reasons")]
        for name, counts in self.by_source().items():
            once = self.distinct.get(name, {})
            reasons = ", ".join(
                f"{r} {once.get(r, 0)}" + (f" (met {n})" if n != once.get(r, 0) else "")
                for r, n in self.by_reason(name).items()
            )
            rows.append((name, *_counts(counts), f"{self.bad_fraction(name):.2%}", reasons or "-"))
        totals = {"seen": self.total_seen, "ok": self.total_ok, "skipped": self.total_skipped,
                  "distinct": self.total_distinct}  # fmt: skip
        rows.append(("total", *_counts(totals), f"{self.bad_fraction():.2%}", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = [
            "  ".join(
                [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:6], widths[1:])] + [row[6]]
            ).rstrip()
            for row in rows
        ]
        for name in sorted(self.examples):
            for reason, example in sorted(self.examples[name].items()):
                lines.append(f"  e.g. {name} {reason}: {example}")
        return lines

    def merge(self, other: SkipStats) -> SkipStats:
        """Add ``other``'s counts into this one (e.g. from another rank); returns self."""
        for name, n in other.ok.items():
            self.add_ok(name, n)
        for mine_all, theirs in ((self.skipped, other.skipped), (self.distinct, other.distinct)):
            for name, reasons in theirs.items():
                mine = mine_all.setdefault(name, {})
                for reason, n in reasons.items():
                    mine[reason] = mine.get(reason, 0) + n
        for name, examples in other.examples.items():
            for reason, example in examples.items():
                self.examples.setdefault(name, {}).setdefault(reason, example)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, for checkpoints."""
        return {
            "version": _FORMAT_VERSION,
            "ok": dict(self.ok),
            "skipped": {name: dict(reasons) for name, reasons in self.skipped.items()},
            "examples": {name: dict(examples) for name, examples in self.examples.items()},
            "distinct": {name: dict(reasons) for name, reasons in self.distinct.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipStats:
        """Restore counts saved by :meth:`to_dict` (this version or the one before, whose checkpoints did not
        count distinct records: there each skip counts as distinct); CheckpointError (a ValueError) otherwise."""
        if not isinstance(data, dict) or data.get("version") not in _READABLE_VERSIONS:
            raise CheckpointError(f"not a SkipStats dict of version {_READABLE_VERSIONS}: {str(data)[:80]}")
        ok, skipped, examples = data.get("ok", {}), data.get("skipped", {}), data.get("examples", {})
        distinct = data.get("distinct", skipped if data["version"] == 1 else {})
        if not (
            _is_counts(ok)
            and all(isinstance(d, dict) and all(_is_counts(r) for r in d.values()) for d in (skipped, distinct))
        ):
            raise CheckpointError(f"SkipStats dict has malformed counts: {str(data)[:80]}")
        if not (isinstance(examples, dict) and all(isinstance(e, dict) for e in examples.values())):
            raise CheckpointError(f"SkipStats dict has malformed examples: {str(data)[:80]}")
        return cls(
            ok=dict(ok),
            skipped={name: dict(reasons) for name, reasons in skipped.items()},
            examples={name: {str(r): str(e) for r, e in ex.items()} for name, ex in examples.items()},
            distinct={name: dict(reasons) for name, reasons in distinct.items()},
        )


def _counts(counts: dict[str, int]) -> tuple[str, str, str, str]:
    return str(counts["seen"]), str(counts["ok"]), str(counts["skipped"]), str(counts["distinct"])


def _is_counts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0 for k, n in value.items()
    )
