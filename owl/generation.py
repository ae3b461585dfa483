"""Batched generation: greedy or sampling, KV cache, left padding, stop strings.

The prompt goes through the same processor path as training; the spliced
embeddings of the whole left-padded batch go to transformers' ``generate`` as
``inputs_embeds`` (it keeps the KV cache, derives positions from the attention
mask so left padding does not shift them, and applies temperature/top-k/top-p).
Batched greedy output equals one-at-a-time output (tested); the reference
could only generate one sample at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig

from owl.conversation import Sample
from owl.errors import InputError
from owl.models.owl import OwlModel
from owl.processing import Encoded, OwlProcessor


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise InputError(
                f"temperature={self.temperature} must be > 0 when sampling (use do_sample=False for greedy)"
            )
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise InputError(f"top_k={self.top_k} must be >= 0 (0 disables it)")
        if self.repetition_penalty <= 0:
            raise InputError(f"repetition_penalty={self.repetition_penalty} must be > 0")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise InputError("stop strings must be non-empty")


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


def _hf_config(options: GenerationOptions, eos: list[int], pad: int) -> GenerationConfig:
    kw: dict = {
        "max_new_tokens": options.max_new_tokens,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "do_sample": options.do_sample,
        "repetition_penalty": options.repetition_penalty,
        "stop_strings": options.stop or None,
    }
    if options.do_sample:
        kw |= {"temperature": options.temperature, "top_k": options.top_k or None, "top_p": options.top_p}
    return GenerationConfig(**kw)


@torch.no_grad()
def generate(
    model: OwlModel,
    processor: OwlProcessor,
    samples: list[Sample],
    options: GenerationOptions | None = None,
    batch_size: int = 8,
) -> list[Completion]:
    """Answer the last user turn of every sample; results are in input order."""
    options = options or GenerationOptions()
    out: list[Completion] = []
    for start in range(0, len(samples), batch_size):
        out += _generate_batch(model, processor, samples[start : start + batch_size], options)
    return out


def _generate_batch(
    model: OwlModel, processor: OwlProcessor, samples: list[Sample], options: GenerationOptions
) -> list[Completion]:
    was_training = model.training
    model.eval()
    encoded = [processor.encode(s, for_generation=True) for s in samples]
    batch = processor.collate(encoded, padding_side="left")
    device = next(model.parameters()).device  # the processor builds CPU tensors; a GPU model needs them moved
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch["image_counts"])
    eos = eos_ids(model, processor)
    cfg = _hf_config(options, eos, processor.pad_id)
    with torch.random.fork_rng(devices=[]):
        if options.seed is not None:
            torch.manual_seed(options.seed)
        tokens = model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            generation_config=cfg,
            tokenizer=processor.tokenizer if options.stop else None,
        )  # (B, new) : with only inputs_embeds, transformers returns just the new tokens
    model.train(was_training)
    results = []
    for e, row in zip(encoded, tokens.tolist()):
        results.append(_finish(row, e, eos, processor, options))
    return results


def _finish(
    row: list[int],
    enc: Encoded,
    eos: list[int],
    processor: OwlProcessor,
    options: GenerationOptions,
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
    elif not hit_eos and n < options.max_new_tokens:
        reason = "stop"  # ended by a stop string that spans the end of the text
    return Completion(text=text, finish_reason=reason, prompt_tokens=len(enc.input_ids), completion_tokens=n)
