"""Readers for the public training-data formats: every record becomes a Sample or a Skipped.

The format zoo (image-caption JSON lines, webdataset shards, the reference's
instruction lines, LLaVA, Alpaca, ShareGPT) ends here; everything downstream
sees only :class:`~owl.conversation.Sample`. Readers never raise for a bad
record: they yield :class:`Skipped` with a short reason so the training loop
can count and report them (see :class:`~owl.data.skipstats.SkipStats`).

Container: files whose first non-blank character is ``[`` are read as one JSON
list, anything else as JSON lines, whatever the format's usual container is
(LLaVA as ``.jsonl`` and captions as a list both work). A list format given a
file that is neither (a JSON object, a bare number) raises.

Conversation rules for LLaVA and ShareGPT (one shared converter):

* speakers ``human``/``user`` are the user; ``gpt``/``assistant``/``chatgpt``/
  ``bing``/``bard`` the assistant; ``system`` the system prompt (only before
  the first user or assistant turn). Any other speaker skips the record.
* consecutive turns of the same role are merged into one message, joined by
  a blank line (``"\\n\\n"``), so the template always alternates speakers.
* assistant turns before the first user turn are dropped: with nothing to
  answer they teach the model to talk to itself (ShareGPT scrapes often start
  with the bot's greeting).
* a record needs at least one assistant turn (``no_target``) and no empty one
  (``empty``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from owl.config import MPLUG_SYSTEM_PROMPT
from owl.conversation import IMAGE_TOKEN, Message, Sample, SampleError
from owl.data.source import (
    FORMATS,
    Skipped,
    SourceSpec,
    build_sample,
    caption_messages,
    record_id,
    resolve_files,
)
from owl.data.webdataset import iter_shard
from owl.errors import DataError

__all__ = ["FORMATS", "Skipped", "SourceSpec", "count_records", "iter_source", "parse_mplug_text"]

_LIST_FORMATS = frozenset({"llava", "alpaca", "sharegpt"})
"""Formats published as one JSON list; a file of theirs that is not a list is an unusable source."""

_BOM = b"\xef\xbb\xbf"

SPEAKERS: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
"""LLaVA/ShareGPT ``from`` values (compared lower-cased) and the role each becomes."""

_MPLUG_PREFIXES = (("Human: ", "Human:", "user"), ("AI: ", "AI:", "assistant"))


def iter_source(spec: SourceSpec) -> Iterator[Sample | Skipped]:
    """Yield every record of the source in a deterministic order (files sorted), one pass.

    Raises DataFileNotFound (a FileNotFoundError) when no file matches
    ``spec.path`` and DataError (a ValueError) when a JSON list file is not a
    list; every other problem is a Skipped.
    """
    files, missing = resolve_files(spec)
    for path in missing:
        yield Skipped(spec.name, "missing_file", path, f"{path} does not exist (named by pattern {spec.path!r})")
    for path in files:
        if spec.format == "webdataset":
            yield from iter_shard(spec, path)
        else:
            yield from _iter_json_file(spec, path)


def count_records(spec: SourceSpec) -> int | None:
    """Number of records in the source (non-blank JSON lines, or list lengths); None for tar shards.

    Counts records, not usable samples: skipped records are included. A JSON
    list file is parsed whole to take its length.
    """
    if spec.format == "webdataset":
        return None
    files, _ = resolve_files(spec)
    total = 0
    for path in files:
        if _is_json_list(spec, path):
            total += len(_load_list(spec, path))
        else:
            with open(path, "rb") as f:
                total += sum(1 for line in f if line.strip() and line.strip() != _BOM)
    return total


def parse_mplug_text(text: str) -> list[Message]:
    """Split the reference's whole-conversation text into messages.

    Lines before the first ``Human: `` / ``AI: `` line are the system prompt;
    each ``Human: `` line starts a user message and each ``AI: `` line an
    assistant message (so ``Human: <image>`` is a message of its own, and
    consecutive Human lines stay separate); any other line continues the
    current message. Joining ``[system] + [prefix + content]`` with newlines
    gives back the input exactly (unless the system prompt is blank, which is
    dropped).
    """
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        for prefix, bare, role in _MPLUG_PREFIXES:
            if line.startswith(prefix) or line == bare:
                turns.append((role, [line[len(prefix) :]]))
                break
        else:
            if turns:
                turns[-1][1].append(line)
            else:
                system.append(line)
    messages = [Message("system", "\n".join(system))] if "".join(system).strip() else []
    messages += [Message(role, "\n".join(lines)) for role, lines in turns]  # type: ignore[arg-type]
    return messages


# --- reading JSON files ---------------------------------------------------------------------------------------------


def _first_char(path: str) -> bytes:
    """The first non-whitespace byte of the file (after a UTF-8 BOM), or b"" for a blank file."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        while head:
            stripped = head.removeprefix(_BOM).lstrip()
            if stripped:
                return stripped[:1]
            head = f.read(1 << 16)
    return b""


def _is_json_list(spec: SourceSpec, path: str) -> bool:
    """Whether the file is one JSON list (else JSON lines); raises for list formats given neither."""
    first = _first_char(path)
    if first == b"[":
        return True
    if spec.format in _LIST_FORMATS and first not in (b"{", b""):
        raise DataError(
            f"data source {spec.name!r}: {path} is not a JSON list "
            f"(it starts with {first.decode(errors='replace')!r}); "
            f"{spec.format} files are a JSON list of records [{{...}}, ...] or JSON lines of records"
        )
    if spec.format in _LIST_FORMATS and first == b"{":
        _reject_single_object(spec, path)
    return False


def _reject_single_object(spec: SourceSpec, path: str) -> None:
    """Raise if the file is one (pretty-printed) JSON object rather than JSON lines of records."""
    with open(path, "rb") as f:
        first_line = f.readline().removeprefix(_BOM)
    try:
        json.loads(first_line)
        return  # the first line is a whole record: JSON lines
    except (ValueError, RecursionError):
        pass
    try:
        with open(path, encoding="utf-8-sig") as f:
            whole = json.load(f)
    except (ValueError, RecursionError):
        return  # neither one object nor a clean first line: read as lines, bad ones are skipped
    keys = ", ".join(list(whole)[:5]) if isinstance(whole, dict) else ""
    raise DataError(
        f"data source {spec.name!r}: {path} holds one JSON object (keys: {keys}), not a list of records; "
        f"{spec.format} files are a JSON list [{{...}}, ...]: extract the list into its own file"
    )


def _load_list(spec: SourceSpec, path: str) -> list:
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as error:
        raise DataError(
            f"data source {spec.name!r}: {path} is not valid JSON ({error}); fix the file, or write it as "
            f"JSON lines (one record per line) so that one bad record only skips itself"
        ) from None
    if not isinstance(data, list):
        raise DataError(
            f"data source {spec.name!r}: {path} holds a JSON {type(data).__name__}, not a list of records; "
            f"{spec.format} files are a JSON list [{{...}}, ...] or JSON lines"
        )
    return data


def _iter_records(spec: SourceSpec, path: str) -> Iterator[tuple[str, Any] | Skipped]:
    """Yield ``(where, record)`` for each record of the file, or a Skipped for a line that is not JSON."""
    name = os.path.basename(path)
    if _is_json_list(spec, path):
        for index, record in enumerate(_load_list(spec, path)):
            yield f"{name}[{index}]", record
        return
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, nesting
                yield Skipped(spec.name, "malformed_json", where, f"not a JSON line: {error}")
                continue
            yield where, record


def _iter_json_file(spec: SourceSpec, path: str) -> Iterator[Sample | Skipped]:
    convert = _CONVERTERS[spec.format]
    image_root = os.path.abspath(spec.image_root if spec.image_root is not None else os.path.dirname(path))
    for item in _iter_records(spec, path):
        if isinstance(item, Skipped):
            yield item
            continue
        where, record = item

        def make(record: Any = record) -> Sample:
            if not isinstance(record, dict):
                raise SampleError("bad_type", f"a record must be a JSON object, got {_kind(record)}")
            sample = convert(record, spec, image_root)
            sample.id = record_id(record, spec)
            return sample

        yield build_sample(spec, where, make)


# --- field access ---------------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _get(record: dict, spec: SourceSpec, key: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    """The value of field ``key`` (after renames); SampleError when absent (if required) or of the wrong type."""
    name = spec.field_name(key)
    value = record.get(name)
    if value is None:
        if required:
            raise SampleError("missing_field", f"no {name!r} field (keys: {', '.join(map(str, record)) or 'none'})")
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SampleError("bad_type", f"field {name!r} has the wrong type: {_kind(value)} ({str(value)[:60]!r})")
    return value


def _image_paths(value: str | list | None, spec: SourceSpec, image_root: str) -> list[str]:
    """Absolute image paths from a string or list of strings (relative ones resolve against image_root)."""
    if value is None:
        return []
    name = spec.field_name("image")
    if not isinstance(value, (str, list)):  # the readers check this first; `owl generate` records come here as is
        raise SampleError("bad_type", f"field {name!r} must be an image path or a list of them, got {_kind(value)}")
    items = [value] if isinstance(value, str) else value
    for item in items:
        if not isinstance(item, str) or not item:
            raise SampleError("bad_type", f"field {name!r} must hold image paths, found {_kind(item)} {item!r}")
    return [image_path(item, image_root) for item in items]


def image_path(item: str, image_root: str) -> str:
    """The absolute path of image ``item`` (relative ones resolve against ``image_root``), which must lie inside the
    root once ``..`` and symlinks are resolved: a data file (or an ``owl generate`` line) names images only under
    the folder it was given, so a line like ``../../home/me/.ssh/id_rsa`` reads nothing. To use images elsewhere,
    set the image root to a folder that holds them (``/`` allows any path)."""
    if "\0" in item:  # the OS cannot name such a file, and os.path.realpath raises ValueError on it
        raise SampleError("bad_type", f"image path {item[:80]!r} contains a NUL byte: it cannot name a file")
    path = os.path.abspath(os.path.join(image_root, os.path.expanduser(item)))
    real, root = os.path.realpath(path), os.path.realpath(image_root)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise SampleError(
            "image_outside_root",
            f"image {item!r} resolves to {real}, outside the image root {image_root}; keep images under the root "
            "or set the image root to a folder that holds them (image_root / --image-root)",
        )
    return path


# --- one converter per format ---------------------------------------------------------------------------------------


def _captions(record: dict, spec: SourceSpec, image_root: str) -> Sample:
    images = _image_paths(_get(record, spec, "image", (str, list)), spec, image_root)
    if len(images) != 1:
        raise SampleError("image_count_mismatch", f"a caption record takes exactly one image, got {len(images)}")
    caption = _get(record, spec, "caption", str).strip()
    return Sample(caption_messages(caption, spec.caption_prompt), images=images)


def _mplug(record: dict, spec: SourceSpec, image_root: str) -> Sample:
    text = _get(record, spec, "text", str)
    images = _image_paths(_get(record, spec, "image", (str, list), required=False), spec, image_root)
    task_type = record.get(spec.field_name("task_type"))
    meta = {"task_type": task_type} if task_type is not None else {}
    return Sample(normalize_mplug_messages(parse_mplug_text(text)), images=images, meta=meta)


def normalize_mplug_messages(messages: list[Message]) -> list[Message]:
    """The reference format's conventions, as the conversation they stand for.

    - Its fixed preamble (:data:`owl.config.MPLUG_SYSTEM_PROMPT`, on every line of the released data) means
      "the default system prompt": it is dropped so the model's configured ``processor.system_prompt`` is
      rendered, the one inference uses too. (For the ``mplug-owl-v1`` template that default *is* the
      preamble, so nothing changes.) Any other system text stays.
    - ``Human: <image>`` lines followed by a ``Human:`` question are one user turn, images first (as LLaVA,
      ShareGPT and every inference prompt write it). ``mplug-owl-v1`` renders the two identically; a chat
      template would otherwise put the image in a user turn of its own, a prompt shape no request has.
    """
    out: list[Message] = []
    for m in messages:
        if m.role == "system" and m.content.strip() == MPLUG_SYSTEM_PROMPT:
            continue
        prev = out[-1] if out else None
        if prev is not None and prev.role == m.role == "user" and not prev.content.replace(IMAGE_TOKEN, "").strip():
            out[-1] = Message("user", f"{prev.content.rstrip()}\n{m.content}")
            continue
        out.append(m)
    return out


def _llava(record: dict, spec: SourceSpec, image_root: str) -> Sample:
    images = _image_paths(_get(record, spec, "image", (str, list), required=False), spec, image_root)
    messages = _conversation(_get(record, spec, "conversations", list), spec)
    if images and not any(IMAGE_TOKEN in m.content for m in messages):
        # LLaVA convention: a sample with images but no marker shows them before the first question.
        for i, message in enumerate(messages):
            if message.role == "user":
                messages[i] = Message("user", f"{IMAGE_TOKEN}\n" * len(images) + message.content)
                break
    return Sample(messages, images=images)


def _alpaca(record: dict, spec: SourceSpec, _image_root: str) -> Sample:
    instruction = _get(record, spec, "instruction", str)
    extra = _get(record, spec, "input", str, required=False) or ""
    output = _get(record, spec, "output", str)
    prompt = "\n\n".join(part for part in (instruction, extra) if part.strip())
    if not prompt:
        raise SampleError("empty", "instruction and input are both empty")
    return Sample([Message("user", prompt), Message("assistant", output)])


def _sharegpt(record: dict, spec: SourceSpec, _image_root: str) -> Sample:
    return Sample(_conversation(_get(record, spec, "conversations", list), spec))


def _conversation(turns: list, spec: SourceSpec) -> list[Message]:
    """LLaVA/ShareGPT turns to messages, by the rules in the module docstring."""
    speaker_key, text_key = spec.field_name("from"), spec.field_name("value")
    merged: list[tuple[str, list[str]]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise SampleError("bad_type", f"turn {i} must be an object, got {_kind(turn)}")
        speaker, text = turn.get(speaker_key), turn.get(text_key)
        if speaker is None or text is None:
            missing = speaker_key if speaker is None else text_key
            raise SampleError("missing_field", f"turn {i} has no {missing!r} field")
        if not isinstance(speaker, str) or not isinstance(text, str):
            raise SampleError("bad_type", f"turn {i}: {speaker_key!r} and {text_key!r} must be strings")
        role = SPEAKERS.get(speaker.lower())
        if role is None:
            raise SampleError("unknown_role", f"turn {i}: unknown speaker {speaker!r}; known: {', '.join(SPEAKERS)}")
        if role == "system" and any(r != "system" for r, _ in merged):
            raise SampleError("misplaced_system", f"turn {i}: a system turn after the conversation started")
        if role == "assistant" and not any(r == "user" for r, _ in merged):
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1].append(text)
        else:
            merged.append((role, [text]))
    return [Message(role, "\n\n".join(texts)) for role, texts in merged]  # type: ignore[arg-type]


_CONVERTERS = {
    "captions": _captions,
    "mplug": _mplug,
    "llava": _llava,
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
}
