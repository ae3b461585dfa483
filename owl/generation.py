"""Batched generation: greedy or sampling, KV cache, left padding, stop strings.

The prompt goes through the same processor path as training; the spliced
embeddings of the whole left-padded batch go to transformers' ``generate`` as
``inputs_embeds`` (it keeps the KV cache, derives positions from the attention
mask so left padding does not shift them, and applies temperature/top-k/top-p).
Batched greedy output equals one-at-a-time output (tested); the reference
could only generate one sample at a time.

Settings travel with the model: a model directory may hold a standard
``generation_config.json`` (the released mPLUG-Owl checkpoints sample with
top-k 3 up to 512 tokens in total). Every :class:`GenerationOptions` field
defaults to "not set" (``None``) so that :meth:`GenerationOptions.resolve`
can layer explicit values over the model's file over owl's built-ins (greedy,
256 new tokens); :meth:`GenerationOptions.for_model` does this for a directory.

Streaming: ``generate(..., on_text=fn)`` calls ``fn(sample_index, new_text)``
as answers grow (a transformers streamer, ``put``/``end``). Only text that
further tokens cannot change is passed on: a byte or SentencePiece piece that
ends inside a multi-byte character decodes to U+FFFD until the rest arrives,
and a tokenizer may rewrite spaces next to the following token, so the tail
is held back until it settles. The pieces of one sample join to exactly its
:attr:`Completion.text` (tested), and streaming never changes the tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from owl.conversation import Sample
from owl.errors import CheckpointError, InputError
from owl.models.owl import OwlModel
from owl.processing import Encoded, OwlProcessor

# transformers' top_k when sampling is on and nothing sets it; a model file that turns sampling on without a top_k
# was tuned with this value, so owl applies it there too (owl's own sampling default is no top-k).
HF_DEFAULT_TOP_K = 50

OnText = Callable[[int, str], None]
"""``on_text(sample_index, new_text)``: a streaming callback (see the module docstring)."""


@dataclass
class GenerationOptions:
    """How to generate. ``None`` means "not set": the model's generation_config.json or owl's default fills it.

    ``max_length`` counts prompt + answer tokens (visual tokens included), as in transformers; ``max_new_tokens``
    counts answer tokens only and wins when both are set in the same layer. ``eos_token_id`` adds end-of-answer
    ids to the tokenizer's EOS. Call :meth:`resolve` to get options with every field set.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    eos_token_id: list[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.max_length is not None and self.max_length < 2:
            raise InputError(f"max_length={self.max_length} must be >= 2 (it counts the prompt too)")
        if self.do_sample and self.temperature is not None and self.temperature <= 0:
            raise InputError(
                f"temperature={self.temperature} must be > 0 when sampling (use do_sample=False for greedy)"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k is not None and self.top_k < 0:
            raise InputError(f"top_k={self.top_k} must be >= 0 (0 disables it)")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise InputError(f"repetition_penalty={self.repetition_penalty} must be > 0")
        if self.stop is not None and any(not s for s in self.stop):
            raise InputError("stop strings must be non-empty")

    # ------------------------------------------------------------------ layering
    def resolve(self, *defaults: GenerationOptions) -> GenerationOptions:
        """Every field set: this object's values, else the first of ``defaults`` that sets it, else owl's built-ins.

        The length limit is one setting: the first layer that sets ``max_new_tokens`` or ``max_length`` decides it
        (``max_new_tokens`` if it sets both), so a user's ``max_new_tokens`` overrides a model's ``max_length``.
        """
        layers = (self, *defaults, BUILTIN_DEFAULTS)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name not in ("max_new_tokens", "max_length"):
                values[f.name] = next((getattr(x, f.name) for x in layers if getattr(x, f.name) is not None), None)
        length = next(x for x in layers if x.max_new_tokens is not None or x.max_length is not None)
        if length.max_new_tokens is not None:
            values["max_new_tokens"] = length.max_new_tokens
        else:
            values["max_length"] = length.max_length
        return GenerationOptions(**values)

    @classmethod
    def from_generation_config(cls, config: GenerationConfig) -> GenerationOptions:
        """The settings a transformers GenerationConfig sets (unset ones stay ``None``)."""
        get = lambda name: getattr(config, name, None)
        top_k = get("top_k")
        if get("do_sample") and top_k is None:
            top_k = HF_DEFAULT_TOP_K
        return cls(
            max_new_tokens=get("max_new_tokens"),
            max_length=get("max_length"),
            do_sample=get("do_sample"),
            temperature=get("temperature"),
            top_k=top_k,
            top_p=get("top_p"),
            repetition_penalty=get("repetition_penalty"),
            stop=get("stop_strings"),
            eos_token_id=get("eos_token_id"),
        )

    @classmethod
    def for_model(cls, model_dir: str | Path, **overrides: Any) -> GenerationOptions:
        """Resolved options for a model directory: ``overrides`` (``None`` = not set) > its file > owl's defaults."""
        return cls(**overrides).resolve(load_generation_defaults(model_dir))

    def describe(self) -> str:
        """One line for people: how the (resolved) options generate."""
        mode = (
            f"sampling (temperature {self.temperature:g}, top_k {self.top_k or 'off'}, top_p {self.top_p:g})"
            if self.do_sample
            else "greedy"
        )
        limit = (
            f"up to {self.max_new_tokens} new tokens"
            if self.max_new_tokens is not None
            else f"up to {self.max_length} tokens in total (prompt included)"
        )
        seed = f", seed {self.seed}" if self.seed is not None and self.do_sample else ""
        return f"{mode}, {limit}{seed}"


BUILTIN_DEFAULTS = GenerationOptions(
    max_new_tokens=256,
    do_sample=False,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    repetition_penalty=1.0,
    stop=[],
    eos_token_id=[],
)


def load_generation_defaults(model_dir: str | Path) -> GenerationOptions:
    """The settings of a model directory's generation_config.json (all unset when it has none).

    A file whose values owl cannot use (e.g. ``top_p: 2``) is a :class:`CheckpointError` naming the file.
    """
    from owl.models.checkpoint import GENERATION_CONFIG_NAME, check_model_dir, load_generation_config

    path = check_model_dir(model_dir)
    config = load_generation_config(path)
    if config is None:
        return GenerationOptions()
    try:
        return GenerationOptions.from_generation_config(config)
    except (InputError, TypeError) as e:
        raise CheckpointError(f"{path / GENERATION_CONFIG_NAME}: {e}") from None


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


def eos_ids(model: OwlModel, processor: OwlProcessor) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS plus the LLM's generation-config EOS ids."""
    ids = {processor.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model.causal_lm, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def _hf_config(options: GenerationOptions, max_new_tokens: int, eos: list[int], pad: int) -> GenerationConfig:
    # Every setting is passed explicitly: transformers fills unset ones from the LLM's own generation config and its
    # global defaults (top_k 50), which would silently change what owl's options say.
    kw: dict = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "do_sample": options.do_sample,
        "repetition_penalty": options.repetition_penalty,
        "stop_strings": options.stop or None,
    }
    if options.do_sample:
        kw |= {"temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p}
    return GenerationConfig(**kw)


def _budgets(options: GenerationOptions, prompt_lengths: list[int]) -> list[int]:
    """New tokens allowed per sample. ``max_length`` counts each sample's own prompt, not the padded batch's, so
    a batch answers as each sample would alone."""
    if options.max_new_tokens is not None:
        return [options.max_new_tokens] * len(prompt_lengths)
    budgets = [options.max_length - n for n in prompt_lengths]
    for n, b in zip(prompt_lengths, budgets):
        if b < 1:
            raise InputError(
                f"the prompt has {n} tokens (visual tokens included) but max_length={options.max_length} counts "
                "the prompt too and leaves no room for an answer; set max_new_tokens (--max-new-tokens) instead"
            )
    return budgets


@torch.no_grad()
def generate(
    model: OwlModel,
    processor: OwlProcessor,
    samples: list[Sample],
    options: GenerationOptions | None = None,
    batch_size: int = 8,
    on_text: OnText | None = None,
) -> list[Completion]:
    """Answer the last user turn of every sample; results are in input order.

    Unset ``options`` fields take owl's built-in defaults; use :meth:`GenerationOptions.for_model` for a model
    directory's own settings. ``on_text(i, text)``, when given, receives sample ``i``'s answer piece by piece while
    it is generated (``i`` indexes ``samples``); the pieces join to ``result[i].text``.
    """
    options = (options or GenerationOptions()).resolve()
    out: list[Completion] = []
    for start in range(0, len(samples), batch_size):
        out += _generate_batch(model, processor, samples[start : start + batch_size], options, on_text, start)
    return out


def _generate_batch(
    model: OwlModel,
    processor: OwlProcessor,
    samples: list[Sample],
    options: GenerationOptions,
    on_text: OnText | None = None,
    offset: int = 0,
) -> list[Completion]:
    was_training = model.training
    model.eval()
    encoded = [processor.encode(s, for_generation=True) for s in samples]
    budgets = _budgets(options, [len(e.input_ids) for e in encoded])
    batch = processor.collate(encoded, padding_side="left")
    device = next(model.parameters()).device  # the processor builds CPU tensors; a GPU model needs them moved
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch["image_counts"])
    eos = sorted(set(eos_ids(model, processor)) | set(options.eos_token_id))
    cfg = _hf_config(options, max(budgets), eos, processor.pad_id)
    streamer = None if on_text is None else AnswerStreamer(processor, on_text, offset, budgets, eos, options.stop)
    with torch.random.fork_rng(devices=[]):
        if options.seed is not None:
            torch.manual_seed(options.seed)
        tokens = model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            generation_config=cfg,
            tokenizer=processor.tokenizer if options.stop else None,
            streamer=streamer,
        )  # (B, new) : with only inputs_embeds, transformers returns just the new tokens
    model.train(was_training)
    results = []
    for e, row, budget in zip(encoded, tokens.tolist(), budgets):
        results.append(_finish(row[:budget], e, eos, processor, options, budget))
    if streamer is not None:
        streamer.flush([c.text for c in results])
    return results


def _finish(
    row: list[int],
    enc: Encoded,
    eos: list[int],
    processor: OwlProcessor,
    options: GenerationOptions,
    budget: int,
) -> Completion:
    n = len(row)
    for i, t in enumerate(row):
        if t in eos:
            n = i
            break
    hit_eos = n < len(row)
    text = processor.decode(row[:n])
    reason = "stop" if hit_eos else "length"
    cut = min((text.find(s) for s in options.stop if s in text), default=-1)
    if cut >= 0:
        text, reason = text[:cut], "stop"
    elif not hit_eos and n < budget:
        reason = "stop"  # ended by a stop string that spans the end of the text
    return Completion(text=text, finish_reason=reason, prompt_tokens=len(enc.input_ids), completion_tokens=n)


class AnswerStreamer(BaseStreamer):
    """Turns the token columns transformers ``put``s during one batch into per-sample text pieces for ``on_text``.

    The answer so far is decoded whole at every step (a prefix decoded alone can differ from the same tokens inside
    a longer text), then its unsettled tail is held back: trailing U+FFFD (a character cut between tokens),
    trailing whitespace (a tokenizer's clean-up may drop it before punctuation) and any end that could be the start
    of a stop string. Text after EOS, past the sample's own budget or from a stop string on is never passed on.
    :meth:`flush`, with the final texts, sends whatever was held back.
    """

    def __init__(
        self,
        processor: OwlProcessor,
        on_text: OnText,
        offset: int,
        budgets: list[int],
        eos: list[int],
        stop: list[str] | None,
    ) -> None:
        self.processor, self.on_text, self.offset = processor, on_text, offset
        self.budgets, self.eos, self.stop = budgets, set(eos), list(stop or [])
        self.rows: list[list[int]] = [[] for _ in budgets]
        self.sent = [""] * len(budgets)
        self.done = [False] * len(budgets)

    def put(self, value: torch.Tensor) -> None:
        """One decoding step: a ``(B,)`` column of new tokens. transformers first puts the prompt ids, ``(B, n)``
        (``(B, 0)`` here, where only embeddings are given): nothing to show."""
        if value.dim() != 1:
            return
        for i, token in enumerate(value.tolist()):
            if self.done[i]:
                continue
            if token in self.eos:
                self.done[i] = True
                continue
            self.rows[i].append(token)
            self.done[i] = len(self.rows[i]) >= self.budgets[i]
            self._send(i, self._settled(i))

    def end(self) -> None:
        """transformers' end of generation; the last pieces wait for :meth:`flush` (it needs the final texts)."""

    def flush(self, texts: list[str]) -> None:
        """Send the rest of every final text (``Completion.text``)."""
        for i, text in enumerate(texts):
            self._send(i, text)

    def _settled(self, i: int) -> str:
        text = self.processor.decode(self.rows[i])
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            self.done[i] = True
            return text[:cut]
        text = text.rstrip("\ufffd").rstrip()
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[: len(text) - hold]  # an end that a stop string may continue waits

    def _send(self, i: int, text: str) -> None:
        # Only ever extend what was sent; a text that is not an extension (a tokenizer rewrote settled text) waits.
        if len(text) > len(self.sent[i]) and text.startswith(self.sent[i]):
            piece, self.sent[i] = text[len(self.sent[i]) :], text
            self.on_text(self.offset + i, piece)
