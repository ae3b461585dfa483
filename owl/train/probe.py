"""The image gain: does the LLM use the image yet? Measured on a fixed probe batch while training runs.

Every ``train.image_gain_every`` steps the model (in eval mode, no gradients) scores a fixed batch of
multimodal samples twice: with their own images, and with the images rotated by one across the batch, so each
sample is shown another sample's image. The image gain is the second loss minus the first, in nats per target
token. Near zero, the visual tokens carry nothing the LLM reads (it answers from text priors); it grows as the
alignment takes hold, and falling back towards zero in a later stage shows an instruction stage learning to
answer without looking. The probe is drawn from ``data.probe`` sources (held-out data) when given, else from the
start of the training sources (``seen``: samples the run also trains on).

It does not disturb training: the samples are encoded once with their own random generator, no global random
stream is consumed, and the train/eval modes are restored afterwards, so a run with the probe is bit-identical to
one without.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from owl.conversation import SampleError
from owl.data import Skipped, SourceSpec, iter_source
from owl.processing import Encoded, OwlProcessor


@dataclass
class ImageGainProbe:
    """A fixed batch of multimodal samples (two at least, so rotating the images changes them)."""

    items: list[Encoded]
    held_out: bool

    @classmethod
    def from_sources(
        cls, sources: Iterable[SourceSpec], processor: OwlProcessor, n: int, held_out: bool
    ) -> ImageGainProbe | None:
        """The first ``n`` usable samples with images, taken in turn from each source; None if fewer than 2."""
        rng = np.random.default_rng(0)
        streams = [iter_source(s) for s in sources]
        items: list[Encoded] = []
        while streams and len(items) < n:
            for stream in list(streams):
                record = next(stream, None)
                if record is None:
                    streams.remove(stream)
                    continue
                if isinstance(record, Skipped) or not record.images:
                    continue
                try:
                    enc = processor.encode(record, rng=rng)
                except SampleError:
                    continue
                if enc.num_targets:
                    items.append(enc)
                if len(items) == n:
                    break
        return cls(items, held_out) if len(items) >= 2 else None

    @torch.no_grad()
    def measure(self, model: nn.Module, processor: OwlProcessor, device: torch.device) -> dict[str, float]:
        """``probe_loss`` (own images), ``probe_loss_shuffled`` (rotated) and ``image_gain``, per target token.

        ``model`` is the plain (unwrapped) model; the caller restores its train modes afterwards. Every process
        of a sharded run must call this (the forward passes are collectives there).
        """
        model.eval()
        batch = processor.collate(self.items, "right")
        batch = {k: v.to(device) if v is not None else None for k, v in batch.items()}
        right = model(**batch, return_logits=False)
        batch["pixel_values"] = torch.roll(batch["pixel_values"], shifts=1, dims=0)
        wrong = model(**batch, return_logits=False)
        a, b = float(right.loss), float(wrong.loss)
        return {"probe_loss": a, "probe_loss_shuffled": b, "image_gain": b - a}
