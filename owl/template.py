"""Conversation templates: messages -> a list of segments (text, image slot, EOS), each marked target or not.

This is the single source of truth for how a conversation looks to the LLM.
Training renders every assistant turn as a target; inference renders the same
segments and appends the generation prompt. Because both tokenise the same
segments, a model sees at inference exactly the token boundaries it was
trained on (the reference tokenised training and inference text differently).

Templates:

- ``mplug-owl-v1`` (the paper's)::

      {system}
      Human: <image>
      Human: {question}
      AI: {answer}</s>
      Human: ...

  Images that lead a user turn get their own ``Human: <image>`` line, as in the
  reference data; a marker in the middle of text stays inline. Inference
  prompts end with ``AI: `` (trailing space). Targets: each answer + EOS.

- ``plain``: the turns back to back, nothing added: a caption sample is
  ``<image>{caption}</s>``, image-conditioned language modelling as in the
  paper's stage 1 (a data source's ``template: plain``). Targets: each answer
  + EOS. The system prompt is not used.

- ``chat-template``: the LLM tokenizer's own chat template (e.g. ChatML).
  Targets are found by rendering prefixes: the text that rendering turn *i*
  adds after the generation prompt of turns ``< i`` is that turn's target
  (its content and end-of-turn token); trailing whitespace is not a target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from owl.conversation import IMAGE_TOKEN, Message
from owl.errors import ConfigError

_LEADING_IMAGES = re.compile(r"^(\s*" + re.escape(IMAGE_TOKEN) + r")+\s*")


@dataclass(frozen=True)
class Segment:
    """``kind`` is "text", "image" (one image slot) or "eos" (the tokenizer's EOS id)."""

    kind: str
    text: str = ""
    target: bool = False


def _split_images(text: str, target: bool) -> list[Segment]:
    """Text with ``<image>`` markers -> alternating text and image segments."""
    out: list[Segment] = []
    for i, part in enumerate(text.split(IMAGE_TOKEN)):
        if i > 0:
            out.append(Segment("image"))
        if part:
            out.append(Segment("text", part, target))
    return out


def render_v1(messages: list[Message], system_prompt: str, add_generation_prompt: bool) -> list[Segment]:
    segs: list[Segment] = []
    body = messages
    system = system_prompt
    if messages and messages[0].role == "system":
        system, body = messages[0].content, messages[1:]
    if system:
        segs.append(Segment("text", system + "\n"))
    for i, m in enumerate(body):
        if m.role == "system":
            segs.append(Segment("text", m.content + "\n"))
        elif m.role == "user":
            text = m.content
            lead = _LEADING_IMAGES.match(text)
            if lead:
                for _ in range(lead.group(0).count(IMAGE_TOKEN)):
                    segs += [Segment("text", "Human: "), Segment("image"), Segment("text", "\n")]
                text = text[lead.end() :]
            if text.strip():
                segs += _split_images(f"Human: {text.strip()}\n", target=False)
        else:
            segs.append(Segment("text", "AI: "))
            if m.content:
                segs.append(Segment("text", m.content, target=True))
            segs.append(Segment("eos", target=True))
            if i < len(body) - 1:
                segs.append(Segment("text", "\n"))
    if add_generation_prompt:
        if segs and segs[-1].kind == "eos":
            segs.append(Segment("text", "\n"))
        segs.append(Segment("text", "AI: "))
    return segs


def render_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    system_prompt: str,
    add_generation_prompt: bool,
) -> list[Segment]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            "processor.template=chat-template but the tokenizer has no chat_template; "
            "use template mplug-owl-v1 or a tokenizer with a chat template"
        )
    msgs = [{"role": m.role, "content": m.content} for m in messages]
    if system_prompt and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system_prompt})

    def render(upto: int, gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs[:upto], tokenize=False, add_generation_prompt=gen)

    segs: list[Segment] = []
    done = ""  # rendered text already turned into segments
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix, full = render(i, True), render(i + 1, False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ConfigError(
                "the tokenizer's chat template does not render conversations incrementally "
                "(a prefix of the messages does not render to a prefix of the text); "
                "use template mplug-owl-v1"
            )
        segs += _split_images(prefix[len(done) :], target=False)
        answer = full[len(prefix) :]
        stripped = answer.rstrip()
        if IMAGE_TOKEN in answer:
            raise ConfigError(f"{IMAGE_TOKEN} in an assistant turn")
        segs.append(Segment("text", stripped, target=True))
        if len(answer) > len(stripped):
            segs.append(Segment("text", answer[len(stripped) :]))
        done = full
    final = render(len(msgs), add_generation_prompt)
    if not final.startswith(done):
        raise ConfigError(
            "the tokenizer's chat template does not render conversations incrementally; use template mplug-owl-v1"
        )
    segs += _split_images(final[len(done) :], target=False)
    return segs


def render_plain(messages: list[Message]) -> list[Segment]:
    """Turns back to back with no role markers or system prompt (so no generation prompt either); each answer and
    an EOS are the targets."""
    segs: list[Segment] = []
    for m in messages:
        if m.role == "assistant":
            if m.content:
                segs.append(Segment("text", m.content, target=True))
            segs.append(Segment("eos", target=True))
        elif m.role == "user":
            segs += _split_images(m.content.strip(), target=False)
    return segs


def render(
    template: str,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    system_prompt: str,
    add_generation_prompt: bool,
) -> list[Segment]:
    """Render ``messages`` with the named template (see the module docstring)."""
    if template == "mplug-owl-v1":
        return render_v1(messages, system_prompt, add_generation_prompt)
    if template == "chat-template":
        return render_chat_template(tokenizer, messages, system_prompt, add_generation_prompt)
    if template == "plain":
        return render_plain(messages)
    raise ConfigError(f"unknown template {template!r}; use mplug-owl-v1, chat-template or plain")


def segments_to_text(segs: list[Segment], eos: str = "</s>") -> str:
    """The rendered conversation as a string (for display and tests)."""
    return "".join(s.text if s.kind == "text" else IMAGE_TOKEN if s.kind == "image" else eos for s in segs)
