"""Where the OwlEval set is: ``$OWL_OWLEVAL_DATA``, else ``../shared/owleval`` beside the checkout, else the
workspace's ``/work/shared/owleval`` (a clean clone elsewhere still finds it). Tests that need it skip without it."""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("OWL_OWLEVAL_DATA", ""),
    str(Path(__file__).resolve().parents[3] / "shared" / "owleval"),
    "/work/shared/owleval",
]


def owleval_dir() -> Path:
    """The first candidate holding ``questions.jsonl`` (else the sibling path, which the skips then report)."""
    for c in _CANDIDATES:
        if c and (Path(c) / "questions.jsonl").is_file():
            return Path(c).resolve()
    return Path(_CANDIDATES[1])
