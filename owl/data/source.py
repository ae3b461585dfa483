"""What a data source is, and the pieces every format reader shares.

A source is one entry of a YAML ``data.sources`` list (:class:`SourceSpec`).
Readers turn its records into :class:`~owl.conversation.Sample` objects, or into
:class:`Skipped` markers when a record is unusable: one bad line in a
100-million-record crawl must cost one count, not the run. Only a source that
cannot be read at all (no file matches, a JSON list file that is not a list)
raises, because then no amount of skipping gives the user what they asked for.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from braceexpand import braceexpand

from owl.config import TEMPLATES
from owl.conversation import IMAGE_TOKEN, Message, Sample, SampleError
from owl.errors import ConfigError, DataFileNotFound

FORMATS: tuple[str, ...] = ("captions", "webdataset", "mplug", "llava", "alpaca", "sharegpt")
"""Every value ``SourceSpec.format`` accepts."""

DEFAULT_FIELDS: dict[str, dict[str, str]] = {
    "captions": {"image": "image", "caption": "caption", "id": "id"},
    # Keys inside each sample's ``.json`` member; the ``.txt`` member needs no name.
    "webdataset": {"caption": "caption", "id": "id"},
    "mplug": {"image": "image", "text": "text", "task_type": "task_type", "id": "id"},
    "llava": {"id": "id", "image": "image", "conversations": "conversations", "from": "from", "value": "value"},
    "alpaca": {"id": "id", "instruction": "instruction", "input": "input", "output": "output"},
    "sharegpt": {"id": "id", "conversations": "conversations", "from": "from", "value": "value"},
}
"""Input field names per format; ``SourceSpec.fields`` renames any of them."""

PATH_IMAGE_FORMATS = frozenset({"captions", "mplug", "llava"})
"""Formats whose images are file paths, so ``image_root`` means something."""

CAPTION_FORMATS = frozenset({"captions", "webdataset"})
"""Formats built from bare captions, so ``caption_prompt`` means something."""


@dataclass
class SourceSpec:
    """One training data source: where its files are and how to read them.

    ``path`` is a file, a glob (``data/*.jsonl``) or a brace pattern
    (``shards/{00000..00012}.tar``); relative paths resolve against the current
    directory. ``image_root`` is what relative image paths resolve against
    (default: the folder of the data file that names them). ``fields`` renames
    input field names (keys of :data:`DEFAULT_FIELDS`), e.g.
    ``{"image": "url", "caption": "text"}``. ``caption_prompt`` is the user text
    after ``<image>`` in caption samples (empty: the image alone). ``template``
    renders this source's samples with another template than the model's:
    ``plain`` is the paper's stage 1, image then caption as plain language
    modelling, without the ~18 tokens of system prompt and role markers a chat
    template adds to every sample.
    """

    name: str
    format: str
    path: str
    image_root: str | None = None
    weight: float = 1.0
    fields: dict[str, str] = field(default_factory=dict)
    caption_prompt: str = ""
    template: str | None = None  # "plain": no chat scaffolding (the paper's stage 1); None: the model's template

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"data source name must be a non-empty string, got {self.name!r}")
        where = f"data source {self.name!r}"
        if self.format not in FORMATS:
            raise ConfigError(f"{where}: unknown format {self.format!r}; valid formats: {', '.join(FORMATS)}")
        if isinstance(self.path, os.PathLike):
            self.path = os.fspath(self.path)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"{where}: path must be a file, glob or brace pattern, got {self.path!r}")
        number = isinstance(self.weight, (int, float)) and not isinstance(self.weight, bool)
        if not (number and math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"{where}: weight must be a finite number > 0, got {self.weight!r}")
        # Config mistakes are ConfigErrors (ValueErrors) throughout, type mistakes included, so one except
        # catches them.
        if not isinstance(self.fields, dict):
            raise ConfigError(f"{where}: fields must be a mapping of field renames, got {self.fields!r}")
        valid = DEFAULT_FIELDS[self.format]
        for key, value in self.fields.items():
            if key not in valid:
                raise ConfigError(
                    f"{where}: unknown field {key!r} for format {self.format!r}; valid fields: {', '.join(valid)}"
                )
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: fields[{key!r}] must be a non-empty field name, got {value!r}")
        if self.image_root is not None:
            if isinstance(self.image_root, os.PathLike):
                self.image_root = os.fspath(self.image_root)
            if self.format not in PATH_IMAGE_FORMATS:
                raise ConfigError(
                    f"{where}: image_root does nothing for format {self.format!r} "
                    f"(only {', '.join(sorted(PATH_IMAGE_FORMATS))} read image paths); remove it"
                )
        if not isinstance(self.caption_prompt, str):
            raise ConfigError(f"{where}: caption_prompt must be a string, got {self.caption_prompt!r}")
        if self.caption_prompt and self.format not in CAPTION_FORMATS:
            raise ConfigError(
                f"{where}: caption_prompt only applies to formats {', '.join(sorted(CAPTION_FORMATS))}; "
                f"remove it for format {self.format!r}"
            )

        if self.template is not None and self.template not in TEMPLATES:
            raise ConfigError(f"{where}: template {self.template!r} is unknown; use one of {', '.join(TEMPLATES)}")

    def field_name(self, key: str) -> str:
        """The input field name for ``key`` (one of this format's :data:`DEFAULT_FIELDS`), after renames."""
        return self.fields.get(key, DEFAULT_FIELDS[self.format][key])


@dataclass
class Skipped:
    """A record that could not become a Sample, yielded in its place so it can be counted.

    ``reason`` is a short key (``malformed_json``, ``bad_type``, ``missing_field``,
    ``image_count_mismatch``, ``missing_image``, ``image_outside_root``, ``bad_text``, ``empty``, ...); ``where`` points
    at the record (``file.jsonl:17``, ``file.json[3]``, ``shard-00001.tar:000123``).
    """

    source: str
    reason: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: skipped {self.where} ({self.reason}): {self.detail}"


def resolve_files(spec: SourceSpec) -> tuple[list[str], list[str]]:
    """Expand ``spec.path`` into ``(existing files sorted, named files that are missing)``.

    Brace patterns are expanded first, then each piece is globbed. A piece
    without wildcards that does not exist (one lost shard out of a thousand)
    is reported as missing rather than fatal; the source only fails when
    nothing at all matches.
    """
    found: set[str] = set()
    missing: list[str] = []
    directories: list[str] = []
    for piece in braceexpand(os.path.expanduser(spec.path)):
        if any(c in piece for c in "*?["):
            for match in glob.glob(piece, recursive=True):
                if os.path.isfile(match):
                    found.add(match)
                else:
                    directories.append(match)
        elif os.path.isfile(piece):
            found.add(piece)
        elif os.path.isdir(piece):
            directories.append(piece)
        else:
            missing.append(piece)
    if not found:
        example = (
            os.path.join(directories[0], "*.tar" if spec.format == "webdataset" else "*.jsonl") if directories else ""
        )
        hint = (
            f"{directories[0]!r} is a directory: name the files, e.g. {example!r}"
            if directories
            else f"relative paths resolve against the current directory {os.getcwd()!r}"
        )
        raise DataFileNotFound(
            f"data source {spec.name!r}: no file matches path {spec.path!r}; check data.sources[].path ({hint})"
        )
    return sorted(found), missing


def caption_messages(caption: str, caption_prompt: str = "") -> list[Message]:
    """The conversation for one image-caption pair: the image (plus an optional prompt), then the caption."""
    user = f"{IMAGE_TOKEN}\n{caption_prompt}" if caption_prompt else IMAGE_TOKEN
    return [Message("user", user), Message("assistant", caption)]


def record_id(record: dict, spec: SourceSpec) -> str:
    """The record's own id (string or integer) if it has one, else ``""``."""
    value = record.get(spec.field_name("id"))
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    return str(value)


def build_sample(spec: SourceSpec, where: str, make: Callable[[], Sample]) -> Sample | Skipped:
    """Run one format converter and check the result, turning any :class:`SampleError` into a Skipped.

    Checks, cheapest first: at least one assistant turn and none empty (a
    sample without a target trains nothing and used to give NaN losses), the
    Sample invariants (``validate``), then that every image path exists.
    Images are not opened here: decoding belongs to the processor, which
    counts corrupt images itself.
    """
    try:
        sample = make()
        sample.source = spec.name
        sample.template = spec.template
        sample.id = sample.id or where
        if not sample.messages:
            raise SampleError("empty", "record has no conversation turns")
        answers = [m for m in sample.messages if m.role == "assistant"]
        if not answers:
            raise SampleError("no_target", "no assistant turn to learn from")
        if any(not m.content.strip() for m in answers):
            raise SampleError("empty", "an assistant turn is empty")
        sample.validate()
        for image in sample.images:
            if isinstance(image, str) and not os.path.isfile(image):
                raise SampleError("missing_image", f"image file not found: {image}")
    except SampleError as error:
        return Skipped(spec.name, error.reason, where, str(error))
    return sample
