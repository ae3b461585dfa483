"""The one tokenisation path: Sample -> (input ids with expanded ``<image>``, labels, pixels) -> batch.

Training, generation, the server and evaluation all call :meth:`OwlProcessor.encode`
and :meth:`OwlProcessor.collate`; only ``for_generation`` differs (append the
generation prompt, pad on the left, keep no labels).

Walk of one sample: template segments (owl.template) -> each text segment
tokenised on its own (so segment boundaries are token boundaries) -> each image
slot becomes ``num_visual_tokens`` copies of ``IMAGE_PLACEHOLDER_ID`` -> labels
copy the ids of target segments, everything else ``-100`` -> truncation that
never cuts an image run and rejects a sample left without targets.

``processor.compat: mplug-owl`` (written by the converter into a converted
model's config.json) swaps the middle of that walk for the released
checkpoints' own tokenisation, because segment-wise tokenisation gives other
ids at segment boundaries with a SentencePiece (LLaMA) tokenizer, which adds a
"▁" in front of every call. The segments are written out as the reference's
conversation text (image slot -> ``<image>``, EOS -> nothing: the reference
training loader inserts EOS after each answer, and its demo's prompts carry
none after earlier answers) and tokenised in the place the reference did:

- training samples as its training loader (``xgpt3_dataset.py``
  ``_extract_text_token_from_conversation``): BOS, then the text split on
  ``<image>``, ``AI: `` and ``\\nHuman: `` with each chunk tokenised alone; the
  chunk after ``AI: `` plus an EOS is the target; fine-tuning continues on
  the ids the model was trained on;
- generation prompts as its processor (``processing_mplug_owl.py``
  ``_tokenize_prompt``): BOS, then the text between ``<image>`` markers
  tokenised whole; the model sees at inference what it saw in the reference
  demo. Images are resized in their own mode and converted to RGB after, as
  that processor did (training converts first, as the loader did).

Image runs use ``IMAGE_PLACEHOLDER_ID`` and labels ``IGNORE_INDEX`` as
everywhere; owl's truncation rule applies to both modes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from owl.config import OwlConfig, ProcessorConfig, VisionConfig
from owl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from owl.conversation import IMAGE_TOKEN, Sample, SampleError
from owl.errors import ConfigError
from owl.images import Augment, ImageTransform
from owl.template import Segment, render

# The reference training loader's delimiters: with images, and for text-only conversations.
_LOADER_SPLIT = re.compile("(" + "|".join(map(re.escape, [IMAGE_TOKEN, "AI: ", "\nHuman: "])) + ")")
_LOADER_SPLIT_TEXT = re.compile("(" + "|".join(map(re.escape, ["AI: ", "\nHuman: "])) + ")")
_PROMPT_SPLIT = re.compile("(" + re.escape(IMAGE_TOKEN) + ")")


def reference_text(segs: list[Segment]) -> str:
    """The segments as the reference's conversation text: text as is, an image slot as ``<image>``, EOS as nothing
    (the reference loader adds EOS after each answer itself; its demo prompts have none after earlier answers)."""
    return "".join(s.text if s.kind == "text" else IMAGE_TOKEN if s.kind == "image" else "" for s in segs)


@dataclass
class Encoded:
    """One tokenised sample. ``pixel_values`` is ``(num_images, 3, S, S)`` or None."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    source: str = ""
    id: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])

    @property
    def num_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


class OwlProcessor:
    """Images + template + tokeniser + ``<image>`` expansion + label masks, for every caller."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: ProcessorConfig,
        vision: VisionConfig,
        num_visual_tokens: int,
        augment: Augment | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.num_visual_tokens = num_visual_tokens
        self.images = ImageTransform(
            vision.image_size, vision.image_mean, vision.image_std, config.max_image_pixels, augment
        )
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no eos_token; set one (answers end with EOS)")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    @classmethod
    def from_config(
        cls,
        config: OwlConfig,
        tokenizer: PreTrainedTokenizerBase,
        augment: Augment | None = None,
        max_length: int | None = None,
    ) -> OwlProcessor:
        """``max_length`` overrides ``config.processor.max_length`` for this processor only (training truncation,
        ``data.max_length``); the model's own config, and so the saved inference limit, is left as it is."""
        proc = config.processor if max_length is None else dataclasses.replace(config.processor, max_length=max_length)
        return cls(tokenizer, proc, config.vision, config.num_visual_tokens, augment)

    @classmethod
    def from_pretrained(cls, path: str | Path, augment: Augment | None = None) -> OwlProcessor:
        from owl.models.checkpoint import CONFIG_NAME, check_model_dir, load_tokenizer

        path = check_model_dir(path)
        return cls.from_config(OwlConfig.load(path / CONFIG_NAME), load_tokenizer(path), augment)

    # ------------------------------------------------------------------ one sample
    def template(self, sample: Sample) -> str:
        """The sample's own template (its data source's ``template``), else the model's."""
        return sample.template or self.config.template

    def segments(self, sample: Sample, for_generation: bool) -> list[Segment]:
        return render(
            self.template(sample),
            self.tokenizer,
            sample.messages,
            self.config.system_prompt,
            add_generation_prompt=for_generation,
        )

    def encode(self, sample: Sample, for_generation: bool = False, rng: np.random.Generator | None = None) -> Encoded:
        """Tokenise one sample; raise ``SampleError`` (with a reason key) if it cannot be used."""
        sample.validate()
        if for_generation and sample.messages[-1].role == "assistant":
            raise SampleError("ends_with_answer", "a prompt for generation must end with a user turn")
        segs = self.segments(sample, for_generation)
        reference = self.reference_compat(sample)
        if reference and for_generation:
            ids, labels, image_starts = self._reference_prompt(segs)
        elif reference:
            ids, labels, image_starts = self._reference_training(segs)
        else:
            ids, labels, image_starts = self._segment_tokens(sample, segs, for_generation)

        n_images = len(sample.images)
        limit = self.config.max_length
        truncated = len(ids) > limit
        if truncated:
            if for_generation:
                raise SampleError("prompt_too_long", f"prompt is {len(ids)} tokens, over processor.max_length={limit}")
            cut = limit
            for start in image_starts:  # never cut an image run: stop before a partial one
                if start < cut < start + self.num_visual_tokens:
                    cut = start
            ids, labels = ids[:cut], labels[:cut]
            n_images = sum(1 for s in image_starts if s + self.num_visual_tokens <= cut)
        if not for_generation and all(x == IGNORE_INDEX for x in labels):
            why = (
                f"no answer tokens left after truncation to processor.max_length={limit}"
                if truncated
                else "sample has no answer to learn from"
            )
            raise SampleError("no_target", why)
        pixels = None
        if n_images:
            resize_first = reference and for_generation  # the reference processor's order (see module docstring)
            pixels = torch.stack([self.images(src, rng, resize_first) for src in sample.images[:n_images]])
        return Encoded(ids, labels, pixels, sample.source, sample.id, sample.meta)

    def reference_compat(self, sample: Sample) -> bool:
        """Whether ``sample`` is tokenised as the released mPLUG-Owl code did (``processor.compat: mplug-owl``).
        A sample rendered with another template (a source's ``template: plain``) has no reference form; it keeps
        owl's segment tokenisation."""
        return self.config.compat == "mplug-owl" and self.template(sample) == "mplug-owl-v1"

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        """Each text tokenised on its own call, with no special tokens added."""
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def _segment_tokens(
        self, sample: Sample, segs: list[Segment], for_generation: bool
    ) -> tuple[list[int], list[int], list[int]]:
        """owl's own tokenisation: every text segment on its own, so segment boundaries are token boundaries."""
        pieces = iter(self._tokens([s.text for s in segs if s.kind == "text"]))
        ids: list[int] = []
        labels: list[int] = []
        bos = self.tokenizer.bos_token_id
        if self.template(sample) == "mplug-owl-v1" and bos is not None:
            ids.append(bos)
            labels.append(IGNORE_INDEX)
        image_starts: list[int] = []
        for seg in segs:
            if seg.kind == "image":
                image_starts.append(len(ids))
                new = [IMAGE_PLACEHOLDER_ID] * self.num_visual_tokens
            elif seg.kind == "eos":
                new = [self.tokenizer.eos_token_id]
            else:
                new = next(pieces)
            ids += new
            labels += new if (seg.target and not for_generation and seg.kind != "image") else [IGNORE_INDEX] * len(new)
        return ids, labels, image_starts

    @staticmethod
    def _check_markers(segs: list[Segment], n_runs: int) -> None:
        """Refuse text whose image runs are not exactly the image slots (a system prompt that contains ``<image>``),
        which the reference would turn into image runs without images (or into text)."""
        n_slots = sum(1 for s in segs if s.kind == "image")
        if n_runs != n_slots:
            raise SampleError(
                "image_marker_in_text",
                f"{IMAGE_TOKEN} appears in the text outside the image slots ({n_runs} markers, {n_slots} images); "
                "processor.compat: mplug-owl cannot tell them apart",
            )

    def _reference_training(self, segs: list[Segment]) -> tuple[list[int], list[int], list[int]]:
        """The reference training loader's ids and targets (``_extract_text_token_from_conversation``), untruncated.

        Kept literal, quirks included: chunks are split on ``AI: `` / ``\\nHuman: `` wherever they occur; any chunk
        right after an ``AI: `` chunk is a target followed by an EOS target; the first chunk is always text; empty
        chunks are dropped only when the conversation has images."""
        text = reference_text(segs)
        bos = self.tokenizer.bos_token_id
        ids = [bos] if bos is not None and bos > 0 else []
        labels = [IGNORE_INDEX] * len(ids)
        has_images = IMAGE_TOKEN in text
        chunks = (_LOADER_SPLIT if has_images else _LOADER_SPLIT_TEXT).split(text)
        if has_images:
            chunks = [c for c in chunks if c]
        is_image = [i > 0 and c == IMAGE_TOKEN for i, c in enumerate(chunks)]  # the first chunk is always text
        self._check_markers(segs, sum(is_image))
        pieces = iter(self._tokens([c for c, img in zip(chunks, is_image) if not img]))
        eos = self.tokenizer.eos_token_id
        image_starts: list[int] = []
        for i in range(len(chunks)):
            if is_image[i]:
                image_starts.append(len(ids))
                ids += [IMAGE_PLACEHOLDER_ID] * self.num_visual_tokens
                labels += [IGNORE_INDEX] * self.num_visual_tokens
            elif i > 0 and chunks[i - 1] == "AI: ":
                new = next(pieces) + [eos]
                ids += new
                labels += new
            else:
                new = next(pieces)
                ids += new
                labels += [IGNORE_INDEX] * len(new)
        return ids, labels, image_starts

    def _reference_prompt(self, segs: list[Segment]) -> tuple[list[int], list[int], list[int]]:
        """The reference processor's prompt ids (``_tokenize_prompt``): BOS, then the text between ``<image>``
        markers tokenised whole (the whole text in one call when there is no image)."""
        text = reference_text(segs)
        bos = self.tokenizer.bos_token_id
        ids = [bos] if bos is not None else []
        chunks = [c for c in _PROMPT_SPLIT.split(text) if c] if IMAGE_TOKEN in text else [text]
        self._check_markers(segs, chunks.count(IMAGE_TOKEN))
        pieces = iter(self._tokens([c for c in chunks if c != IMAGE_TOKEN]))
        image_starts: list[int] = []
        for chunk in chunks:
            if chunk == IMAGE_TOKEN:
                image_starts.append(len(ids))
                ids += [IMAGE_PLACEHOLDER_ID] * self.num_visual_tokens
            else:
                ids += next(pieces)
        return ids, [IGNORE_INDEX] * len(ids), image_starts

    # ------------------------------------------------------------------ batches
    def collate(self, items: list[Encoded], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad to the longest sample. Right padding for training, left for generation."""
        if not items:
            raise ValueError("cannot collate an empty batch")
        width = max(len(e.input_ids) for e in items)
        n = len(items)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(items):
            L = len(e.input_ids)
            sl = slice(0, L) if padding_side == "right" else slice(width - L, width)
            input_ids[i, sl] = torch.tensor(e.input_ids)
            labels[i, sl] = torch.tensor(e.labels)
            attention[i, sl] = 1
        pix = [e.pixel_values for e in items if e.pixel_values is not None]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "image_counts": torch.tensor([e.num_images for e in items], dtype=torch.long),
            "pixel_values": torch.cat(pix) if pix else None,
        }
        return batch

    def __call__(self, samples: list[Sample], for_generation: bool = False) -> dict[str, torch.Tensor]:
        """Encode and collate; errors propagate (callers that must skip bad samples use ``encode``)."""
        enc = [self.encode(s, for_generation) for s in samples]
        return self.collate(enc, "left" if for_generation else "right")

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
