"""`owl chat`: multi-turn, multi-image chat in the terminal, through the shared processor and generator.

Type a message and press enter. ``/image PATH`` attaches an image to your next
message (several may be attached), ``/save FILE`` appends the conversation so
far to FILE as one JSON line, ``/reset`` starts over, ``/quit`` exits. With
``message=...`` it answers once and returns (scripts, tests).

Answers stream to the terminal as they are generated (``stream=False``: each
answer when complete); what is printed is exactly the answer either way.

``/save`` writes a LLaVA record (``id``, ``image``: absolute paths,
``conversations``: ``from`` human/gpt, ``value``), the format training reads
(``format: llava``) and ``owl generate`` runs (the last answer becomes its
``reference``), so a good session becomes data or an eval case.

Generation settings start from the model's own ``generation_config.json``
(if it has one) and owl's defaults; ``options`` overrides any of them.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import torch

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.errors import InputError, InputNotFound, OwlError
from owl.generation import GenerationOptions, generate, load_generation_defaults


def _check_images(paths: list[str]) -> list[str]:
    for p in paths:
        if not Path(p).is_file():
            raise InputNotFound(f"image not found: {p}")
    return list(paths)


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_device(device: str, dtype: str) -> tuple[str, torch.dtype]:
    """``auto`` -> a GPU with bf16 when there is one, else the CPU with fp32; named values are checked."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    if dtype not in _DTYPES:
        raise InputError(f"--dtype {dtype!r} is unknown; use auto, {', '.join(_DTYPES)}")
    return device, getattr(torch, _DTYPES[dtype])


def chat(
    model_dir: str,
    images: list[str] | None = None,
    message: str | None = None,
    options: GenerationOptions | None = None,
    show_settings: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    stream: bool = True,
) -> list[Message]:
    """Run the chat loop; returns the conversation.

    ``options``: the caller's explicit settings (unset fields come from the model's generation_config.json, then
    owl's defaults). ``show_settings`` prints the resolved settings to stderr first. ``device``: ``auto`` (a GPU
    when there is one), ``cpu``, ``cuda``, ``cuda:1``...; ``dtype``: ``auto`` (bf16 on a GPU, fp32 on a CPU),
    ``fp32``, ``bf16`` or ``fp16`` -- a 7B model needs ~15 GB in bf16, ~29 GB in fp32. ``stream``: print answers
    as they are generated.
    """
    from owl.models import load_model
    from owl.processing import OwlProcessor

    options = (options or GenerationOptions()).resolve(load_generation_defaults(model_dir))
    pending = _check_images(images or [])
    dev, dt = resolve_device(device, dtype)
    model, proc = load_model(model_dir, dtype=dt).to(dev).eval(), OwlProcessor.from_pretrained(model_dir)
    if show_settings:
        print(f"owl chat: {options.describe()}", file=sys.stderr)
    messages: list[Message] = []
    all_images: list[str] = []
    interactive = message is None
    if interactive:
        print("owl chat: type a message; /image PATH attaches an image, /save FILE, /reset, /quit", file=sys.stderr)
    while True:
        if interactive:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
        else:
            line = message
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            messages, all_images, pending = [], [], []
            continue
        if line.startswith("/image "):
            try:
                pending += _check_images([line[len("/image ") :].strip()])
            except InputNotFound as e:  # a typo in a path must not end the conversation
                print(f"owl: {e}", file=sys.stderr)
            continue
        if line == "/save" or line.startswith("/save "):
            _save_command(line[len("/save") :].strip(), messages, all_images)
            continue
        if not line:
            continue
        content = "".join(IMAGE_TOKEN + "\n" for _ in pending) + line
        turn = Sample([*messages, Message("user", content)], [*all_images, *pending])
        printer = _Printer("owl> " if interactive else "")
        try:
            answer = generate(model, proc, [turn], options, on_text=printer if stream else None)[0].text.strip()
        except OwlError as e:  # e.g. an unreadable image, or the talk outgrew max_length: say so, keep the session
            if not interactive:
                raise
            printer.abort()
            print(f"owl: {e} (or /reset)", file=sys.stderr)
            continue
        messages, all_images, pending = [*turn.messages, Message("assistant", answer)], list(turn.images), []
        printer.finish(answer)
        if not interactive:
            break
    return messages


class _Printer:
    """Prints one streamed answer as ``prefix + answer + newline``, exactly what ``finish(answer)`` is given.

    The pieces are the raw answer; the answer shown is stripped, so leading whitespace is dropped as it comes and
    the end (trailing whitespace) waits for :meth:`finish`.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix, self.raw, self.shown, self.started = prefix, "", "", False

    def __call__(self, _index: int, piece: str) -> None:
        self.raw += piece
        text = self.raw.lstrip()
        text = text[: len(text.rstrip())]
        if len(text) > len(self.shown):
            self._write(text[len(self.shown) :])
            self.shown = text

    def _write(self, text: str) -> None:
        if not self.started:
            text, self.started = self.prefix + text, True
        sys.stdout.write(text)
        sys.stdout.flush()

    def finish(self, answer: str) -> None:
        if answer.startswith(self.shown):
            self._write(answer[len(self.shown) :] + "\n")
        else:  # cannot happen with owl's streamer (pieces join to the answer); show the answer whole
            self._write("\n" + answer + "\n")

    def abort(self) -> None:
        if self.started:
            self._write("\n")


def save_conversation(path: str | Path, messages: list[Message], images: list[str]) -> dict:
    """Append the conversation to ``path`` as one LLaVA JSON line (see the module docstring); returns the record."""
    record = {
        "id": f"chat-{uuid.uuid4().hex[:12]}",
        "image": [os.path.abspath(p) for p in images],
        "conversations": [
            {"from": {"user": "human", "assistant": "gpt"}.get(m.role, m.role), "value": m.content} for m in messages
        ],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record


def _save_command(arg: str, messages: list[Message], images: list[str]) -> None:
    if not arg:
        print("owl: /save needs a file name, e.g. /save chats.jsonl", file=sys.stderr)
    elif not messages:
        print("owl: nothing to save yet", file=sys.stderr)
    else:
        try:
            save_conversation(arg, messages, images)
        except OSError as e:
            print(f"owl: cannot write {arg}: {e.strerror or e}", file=sys.stderr)
            return
        print(f"owl chat: appended the conversation ({len(messages)} turns) to {arg}", file=sys.stderr)
