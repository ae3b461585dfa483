"""One generated question (or conversation) about zero, one or two scenes.

Generators in ``tasks_*.py`` return a :class:`WorldItem`; :mod:`owl.world.build` turns it
into a training :class:`~owl.conversation.Sample` / reference-format line or into an eval
line. Keeping the gold answer and the scoring rule next to the questions is what lets the
eval split be scored without knowing how it was generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from owl.conversation import IMAGE_TOKEN, ImageSource, Message, Sample
from owl.world.scene import Scene
from owl.world.scorers import chance

ABILITIES: tuple[str, ...] = (
    "instruction", "colour", "shape", "count", "position", "size",
    "ocr", "knowledge", "reasoning", "multiturn", "multiimage", "text",
)  # fmt: skip
"""Every ability an item can test; each is scored separately."""

OWLEVAL_GROUP: dict[str, str] = {
    "instruction": "instruction understanding",
    "colour": "visual understanding",
    "shape": "visual understanding",
    "count": "visual understanding",
    "position": "visual understanding",
    "size": "visual understanding",
    "ocr": "optical character recognition",
    "knowledge": "knowledge transfer",
    "reasoning": "reasoning",
    "multiturn": "multi-turn conversation",
    "multiimage": "multi-image",
    "text": "text-only",
}
"""Which OwlEval ability (or extra) each Owl-World ability stands for."""


@dataclass
class WorldItem:
    """Questions and answers plus the scenes they are about.

    ``turns`` are (question, answer-as-taught) pairs; ``answer`` is the gold answer of the
    last turn in canonical form (what the scorer compares against) and ``scorer`` holds the
    rule and its parameters (see :mod:`owl.world.scorers`).
    """

    ability: str
    task: str
    turns: list[tuple[str, str]]
    answer: str
    scorer: dict
    scenes: list[Scene] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.ability in ABILITIES, self.ability
        assert self.turns, "an item needs at least one turn"

    @property
    def chance(self) -> float:
        return chance({"scorer": self.scorer})

    def messages(self, *, include_last_answer: bool) -> list[Message]:
        """User/assistant turns; the first user turn starts with one ``<image>`` line per scene."""
        prefix = "".join(f"{IMAGE_TOKEN}\n" for _ in self.scenes)
        out: list[Message] = []
        for i, (question, answer) in enumerate(self.turns):
            out.append(Message("user", (prefix if i == 0 else "") + question))
            if include_last_answer or i < len(self.turns) - 1:
                out.append(Message("assistant", answer))
        return out

    def to_sample(self, images: Sequence[ImageSource], *, id: str = "", source: str = "owl_world") -> Sample:
        """A training sample (every assistant turn present) with ``images`` in scene order."""
        meta = {"ability": self.ability, "task": self.task, "answer": self.answer, "scorer": self.scorer}
        return Sample(self.messages(include_last_answer=True), list(images), source=source, id=id, meta=meta).validate()

    def to_eval(self, id: str, image_paths: Sequence[str]) -> dict:
        """An eval line: messages end with the user question to answer; earlier answers are gold."""
        return {
            "id": id,
            "image": list(image_paths),
            "messages": [{"role": m.role, "content": m.content} for m in self.messages(include_last_answer=False)],
            "answer": self.answer,
            "ability": self.ability,
            "task": self.task,
            "scorer": self.scorer,
            "chance": self.chance,
        }


def say(answer: str) -> str:
    """How the assistant says a canonical answer in training: 'top left' -> 'Top left.', '3' -> '3'."""
    if answer.isdigit():
        return answer
    return answer[:1].upper() + answer[1:] + "."


def exact(choices: Sequence[object]) -> dict:
    return {"rule": "exact", "choices": [str(c) for c in choices]}


def yesno() -> dict:
    return {"rule": "yesno", "choices": ["yes", "no"]}


def form(name: str, choices: Sequence[object]) -> dict:
    return {"rule": "form", "form": name, "choices": [str(c) for c in choices]}


def contains(choices: Sequence[object]) -> dict:
    return {"rule": "contains", "choices": [str(c) for c in choices]}
