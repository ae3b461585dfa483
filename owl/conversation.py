"""The one in-memory form of a training or inference example.

Every data format owl reads (captions, webdataset, the reference's instruction
lines, LLaVA, Alpaca, ShareGPT, Owl-World, API requests) is turned into a
:class:`Sample`; everything downstream (template, tokenisation, collate,
generation, serving, evaluation) consumes only this type. Keeping the format
zoo at the edge is what lets training and inference tokenise identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from PIL import Image

from owl.errors import DataError

IMAGE_TOKEN = "<image>"
"""Marker for one image inside message text; expanded to the visual tokens."""

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

ImageSource = Union[str, Path, bytes, Image.Image]
"""A path (resolved against an image root by the loader), raw bytes, or a PIL image."""


class SampleError(DataError):
    """A sample that cannot be used; ``reason`` is a short key used for skip counts (training skips and counts it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Message:
    """One turn. ``content`` may hold ``<image>`` markers (user turns only)."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SampleError("bad_role", f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise SampleError("bad_type", f"message content must be a string, got {type(self.content).__name__}")
        if not self.content.isascii():
            try:
                self.content.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON allows "\ud800"; a tokenizer given one raises a TypeError
                raise SampleError(
                    "bad_text",
                    f"{self.role} text holds a lone surrogate {e.object[e.start : e.end]!r} at character {e.start}, "
                    "which is not valid Unicode (a broken \\ud800-style escape in the data?)",
                ) from None
        if self.role != "user" and IMAGE_TOKEN in self.content:
            article = "an" if self.role == "assistant" else "a"
            raise SampleError(
                "image_in_non_user_turn",
                f"{IMAGE_TOKEN} may only appear in user turns, found in {article} {self.role} turn",
            )


@dataclass
class Sample:
    """A conversation plus the images its ``<image>`` markers refer to, in marker order.

    ``source`` names the dataset the sample came from (for per-source counts and
    losses); ``meta`` carries anything a scorer needs (e.g. Owl-World answers).
    """

    messages: list[Message]
    images: list[ImageSource] = field(default_factory=list)
    source: str = ""
    id: str = ""
    meta: dict = field(default_factory=dict)
    template: str | None = None  # render with this template instead of the model's (a data source's ``template``)

    def num_image_markers(self) -> int:
        return sum(m.content.count(IMAGE_TOKEN) for m in self.messages)

    def validate(self) -> Sample:
        """Check the invariants every consumer relies on; raise SampleError otherwise."""
        if not self.messages:
            raise SampleError("empty", "sample has no messages")
        n = self.num_image_markers()
        if n != len(self.images):
            raise SampleError(
                "image_count_mismatch",
                f"{n} {IMAGE_TOKEN} placeholders but {len(self.images)} images given",
            )
        return self

    @property
    def is_multimodal(self) -> bool:
        return bool(self.images)
