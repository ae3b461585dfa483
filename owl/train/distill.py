"""Hold on to what the model could do when this stage began: a KL term to its starting self on chosen sources.

Instruction tuning could teach an LLM to stop reading what stage 1 taught it to read; this is the standard
guard against that. (On Owl-World it was measured and not shipped: stage 2 keeps the stage-1 reading without it,
benchmarks/NOTES.md §17.) Learning-without-forgetting (Li & Hoiem, 2016)
keeps a behaviour by matching the old model's whole next-token distribution rather than one reference text: on
the samples of the sources named in ``distill.sources`` (e.g. stage 2's captions) each target position adds
``weight * T^2 * KL(teacher_T || student_T)`` to the summed loss, normalised by the global target-token count
like the cross-entropy.

The teacher costs no memory: when only LoRA on the LLM trains, the model with its adapter switched off *is* the
model this stage started from (peft's ``disable_adapter``), so the teacher is one extra no-grad forward over the
distilled rows only. That is also why the config requires every other module frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from owl.constants import IGNORE_INDEX


def distill_rows(sources: Sequence[str], names: frozenset[str]) -> list[int]:
    """Indices of the micro-batch's samples whose source is distilled."""
    return [i for i, s in enumerate(sources) if s in names]


def select_rows(batch: dict[str, torch.Tensor | None], rows: list[int]) -> dict[str, torch.Tensor | None]:
    """The collated batch restricted to ``rows``, with each kept sample's images (stacked in sample order)."""
    idx = torch.tensor(rows, dtype=torch.long)
    out = {k: batch[k][idx] for k in ("input_ids", "attention_mask", "labels", "image_counts")}
    pix = batch.get("pixel_values")
    if pix is not None:
        counts = batch["image_counts"].tolist()
        starts = [sum(counts[:i]) for i in range(len(counts))]
        keep = [j for r in rows for j in range(starts[r], starts[r] + counts[r])]
        pix = pix[torch.tensor(keep, dtype=torch.long)] if keep else None
    out["pixel_values"] = pix
    return out


def teacher_logits(raw: nn.Module, sub: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """Next-token logits (b, T-1, V) of the model with its LLM's LoRA adapter switched off: the starting model."""
    with torch.no_grad(), raw.llm.disable_adapter():
        out = raw(
            input_ids=sub["input_ids"],
            attention_mask=sub["attention_mask"],
            pixel_values=sub["pixel_values"],
            image_counts=sub["image_counts"],
        )
    return out.logits[:, :-1]


def kl_sum(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, int]:
    """Sum over target positions of ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, and their count.

    ``student`` and ``teacher`` are (b, T-1, V) next-token logits and ``labels`` the (b, T) labels: position t
    is a target where ``labels[:, t+1]`` is one, exactly the positions the cross-entropy scores.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    n = int(mask.sum())
    if n == 0:
        return student.sum() * 0.0, 0
    s = F.log_softmax(student[mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher[mask].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum()
    return kl * temperature**2, n
