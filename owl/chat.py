"""`owl chat`: multi-turn, multi-image chat in the terminal, through the shared processor and generator.

Type a message and press enter. ``/image PATH`` attaches an image to your next
message (several may be attached), ``/reset`` starts over, ``/quit`` exits.
With ``message=...`` it answers once and returns (scripts, tests).

Generation settings start from the model's own ``generation_config.json``
(if it has one) and owl's defaults; ``options`` overrides any of them.
"""

from __future__ import annotations

import sys
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
) -> list[Message]:
    """Run the chat loop; returns the conversation.

    ``options``: the caller's explicit settings (unset fields come from the model's generation_config.json, then
    owl's defaults). ``show_settings`` prints the resolved settings to stderr first. ``device``: ``auto`` (a GPU
    when there is one), ``cpu``, ``cuda``, ``cuda:1``...; ``dtype``: ``auto`` (bf16 on a GPU, fp32 on a CPU),
    ``fp32``, ``bf16`` or ``fp16`` -- a 7B model needs ~15 GB in bf16, ~29 GB in fp32.
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
        print("owl chat: type a message; /image PATH attaches an image, /reset, /quit", file=sys.stderr)
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
        if not line:
            continue
        content = "".join(IMAGE_TOKEN + "\n" for _ in pending) + line
        turn = Sample([*messages, Message("user", content)], [*all_images, *pending])
        try:
            answer = generate(model, proc, [turn], options)[0].text.strip()
        except OwlError as e:  # e.g. an unreadable image, or the talk outgrew max_length: say so, keep the session
            if not interactive:
                raise
            print(f"owl: {e} (or /reset)", file=sys.stderr)
            continue
        messages, all_images, pending = [*turn.messages, Message("assistant", answer)], list(turn.images), []
        print(answer if not interactive else f"owl> {answer}", flush=True)
        if not interactive:
            break
    return messages
