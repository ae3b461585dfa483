"""`owl chat`: multi-turn, multi-image chat in the terminal, through the shared processor and generator.

Type a message and press enter. ``/image PATH`` attaches an image to your next
message (several may be attached), ``/reset`` starts over, ``/quit`` exits.
With ``message=...`` it answers once and returns (scripts, tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.errors import InputNotFound
from owl.generation import GenerationOptions, generate


def _check_images(paths: list[str]) -> list[str]:
    for p in paths:
        if not Path(p).is_file():
            raise InputNotFound(f"image not found: {p}")
    return list(paths)


def chat(
    model_dir: str,
    images: list[str] | None = None,
    message: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
) -> list[Message]:
    """Run the chat loop; returns the conversation."""
    from owl.models import load_model
    from owl.processing import OwlProcessor

    model, proc = load_model(model_dir).eval(), OwlProcessor.from_pretrained(model_dir)
    options = GenerationOptions(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0
    )
    messages: list[Message] = []
    all_images: list[str] = []
    pending = _check_images(images or [])
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
        messages.append(Message("user", content))
        all_images += pending
        pending = []
        answer = generate(model, proc, [Sample(list(messages), list(all_images))], options)[0].text.strip()
        messages.append(Message("assistant", answer))
        print(answer if not interactive else f"owl> {answer}", flush=True)
        if not interactive:
            break
    return messages
