"""Owl-World's files: the mPLUG-Owl reference instruction line, and the eval split.

Instruction lines follow the reference repository's format exactly, so owl's reference
reader (and the original code) can train on Owl-World unchanged::

    {"image": ["images/000001.png"], "text": "<preamble>\\nHuman: <image>\\nHuman: Q\\nAI: A",
     "task_type": "owl_world_colour_at_position"}

Eval lines keep messages (ending with the user turn to answer), the gold answer, the
scoring rule and the chance level; see :mod:`owl.world.scorers`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from owl.config import MPLUG_SYSTEM_PROMPT
from owl.conversation import Message, Sample
from owl.errors import DataError

PREAMBLE = MPLUG_SYSTEM_PROMPT
"""First line of every reference-format conversation (the mPLUG-Owl instruction template)."""

SPEAKER = {"user": "Human", "assistant": "AI"}

EVAL_FIELDS: tuple[str, ...] = ("id", "image", "messages", "answer", "ability", "task", "scorer", "chance")


def reference_text(messages: Sequence[Message]) -> str:
    """The reference template: preamble, then one ``Human:``/``AI:`` line per content line.

    A user turn ``"<image>\\nWhat colour...?"`` becomes ``Human: <image>`` and ``Human: What
    colour...?``, which is how the reference data writes one image line per image.
    """
    lines = [PREAMBLE]
    for message in messages:
        if message.role not in SPEAKER:
            raise DataError(f"the reference template has no {message.role!r} turns; only user and assistant")
        lines += [f"{SPEAKER[message.role]}: {line}" for line in message.content.split("\n")]
    return "\n".join(lines)


def sample_to_reference(sample: Sample, task_type: str) -> dict:
    """A reference-format instruction line for a sample whose images are file paths."""
    bad = [type(im).__name__ for im in sample.images if not isinstance(im, (str, Path))]
    if bad:
        raise DataError(f"reference lines store image paths; got {bad}")
    return {"image": [str(im) for im in sample.images], "text": reference_text(sample.messages), "task_type": task_type}


def load_eval(path: str | Path) -> list[dict]:
    """Read ``eval.jsonl``; a line missing a field raises ValueError naming the line and the field."""
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        missing = [f for f in EVAL_FIELDS if f not in item]
        if missing:
            raise DataError(f"{path}:{number}: eval item lacks {missing}; an item has {list(EVAL_FIELDS)}")
        if not item["messages"] or item["messages"][-1]["role"] != "user":
            raise DataError(f"{path}:{number}: eval messages must end with the user turn to answer")
        items.append(item)
    return items


def eval_item_to_sample(item: dict, root: str | Path) -> Sample:
    """The item as a Sample to generate from: messages end with the user turn, image paths made absolute.

    ``root`` is the world's directory (the one holding eval.jsonl); ``meta`` carries the
    answer, scorer and chance so a caller can score without the original dict.
    """
    root = Path(root).resolve()
    meta = {k: item[k] for k in ("answer", "ability", "task", "scorer", "chance")}
    sample = Sample(
        messages=[Message(m["role"], m["content"]) for m in item["messages"]],
        images=[str(root / p) for p in item["image"]],
        source="owl_world_eval",
        id=str(item["id"]),
        meta=meta,
    )
    return sample.validate()


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
