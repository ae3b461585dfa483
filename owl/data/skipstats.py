"""Counts of usable and skipped records, per source and per reason.

Skipping bad records keeps a long run alive, but silently dropping 30% of a
dataset is its own failure; these counts make the loss visible (the loop
logs :meth:`SkipStats.summary_lines` and can stop on :meth:`SkipStats.bad_fraction`).
They are saved in checkpoints (:meth:`to_dict`/:meth:`from_dict`) so a resumed
run keeps reporting totals, and :meth:`merge` adds up the counts of
distributed ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from owl.data.source import Skipped
from owl.errors import CheckpointError

_FORMAT_VERSION = 1
_EXAMPLE_CHARS = 200


@dataclass
class SkipStats:
    """Per-source counts: ``ok[source]`` samples used, ``skipped[source][reason]`` records skipped.

    ``examples[source][reason]`` keeps the first skipped record of each kind
    (``"where: detail"``) so the summary can point at a line to look at.
    """

    ok: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, skipped: Skipped) -> None:
        """Count one skipped record."""
        reasons = self.skipped.setdefault(skipped.source, {})
        reasons[skipped.reason] = reasons.get(skipped.reason, 0) + 1
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
        """``{source: {"seen": n, "ok": n, "skipped": n}}`` for every source."""
        return {
            name: {
                "seen": self.seen(name),
                "ok": self.ok.get(name, 0),
                "skipped": self.seen(name) - self.ok.get(name, 0),
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
        """A readable table: one row per source and a total, then the first example of each skip reason."""
        rows = [("source", "seen", "ok", "skipped", "bad", "reasons")]
        for name, counts in self.by_source().items():
            reasons = ", ".join(f"{r} {n}" for r, n in self.by_reason(name).items())
            rows.append((name, *_counts(counts), f"{self.bad_fraction(name):.2%}", reasons or "-"))
        totals = {"seen": self.total_seen, "ok": self.total_ok, "skipped": self.total_skipped}
        rows.append(("total", *_counts(totals), f"{self.bad_fraction():.2%}", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(
                [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:5], widths[1:])] + [row[5]]
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
        for name, reasons in other.skipped.items():
            mine = self.skipped.setdefault(name, {})
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipStats:
        """Restore counts saved by :meth:`to_dict`; CheckpointError (a ValueError) if ``data`` is not such a dict."""
        if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
            raise CheckpointError(f"not a SkipStats dict of version {_FORMAT_VERSION}: {str(data)[:80]}")
        ok, skipped, examples = data.get("ok", {}), data.get("skipped", {}), data.get("examples", {})
        if not (_is_counts(ok) and isinstance(skipped, dict) and all(_is_counts(r) for r in skipped.values())):
            raise CheckpointError(f"SkipStats dict has malformed counts: {str(data)[:80]}")
        if not (isinstance(examples, dict) and all(isinstance(e, dict) for e in examples.values())):
            raise CheckpointError(f"SkipStats dict has malformed examples: {str(data)[:80]}")
        return cls(
            ok=dict(ok),
            skipped={name: dict(reasons) for name, reasons in skipped.items()},
            examples={name: {str(r): str(e) for r, e in ex.items()} for name, ex in examples.items()},
        )


def _counts(counts: dict[str, int]) -> tuple[str, str, str]:
    return str(counts["seen"]), str(counts["ok"]), str(counts["skipped"])


def _is_counts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0 for k, n in value.items()
    )
