"""Tell stage 1 what to make readable: the LLM's states after an image should be its states after the caption.

Why this exists (benchmarks/NOTES.md §18-19): after stage 1 the abstractor's tokens hold each scene (a linear
read-out binds 88% of objects whole), but the frozen LLM binds only ~40% of them in its captions after 750 steps.
The caption loss scores one next token per position, a thin signal for teaching a form of the information the
frozen LLM's attention can use. The LLM already knows a form it uses perfectly: the caption's own *text*. This
term runs the same frozen LLM on the sample with the image's placeholder run replaced by the caption's tokens
(the teacher), and asks that at every position after the image the LLM's hidden states at ``text_align.layers``
be the teacher's — a dense, layer-by-layer target rather than the next token alone. It is distillation from
privileged text: teacher and student are one frozen LLM, so the teacher costs one no-grad forward of a text
sequence and no weights.

Measured (NOTES §19): on Owl-World it raises the image gain, the count and the written word read right, but
binds an object's attributes no better (at 600 steps worse) than the caption loss alone, so the shipped recipes
leave it off.

Per aligned position and layer the distance is ``mean((h_s - h_t)^2) / mean(h_t^2)`` (``distance: norm``;
scale-free across layers whose norms differ by orders of magnitude) or the mean of the per-dimension
standardised squared difference (``distance: standardized``, see ``align_sum``); a position adds the mean over
layers, and the sum over positions is weighted by ``text_align.weight`` and normalised by the global target-token
count like the cross-entropy. Samples with other than one image, or with no target tokens, are not aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from owl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from owl.processing import Encoded


@dataclass
class AlignPlan:
    """The teacher batch and, per aligned sample, which student positions match which teacher positions."""

    input_ids: torch.Tensor  # (b, T') the teacher sequences, right-padded
    attention_mask: torch.Tensor  # (b, T')
    rows: list[int]  # the aligned samples' indices in the micro-batch
    student_pos: list[torch.Tensor]  # per aligned sample: positions after the image, in the student sequence
    teacher_pos: list[torch.Tensor]  # the same positions in the teacher sequence

    @property
    def num_positions(self) -> int:
        return sum(len(p) for p in self.student_pos)


def plan(
    items: Sequence[Encoded],
    sources: frozenset[str],
    num_visual_tokens: int,
    pad_id: int,
    drop_ids: frozenset[int] = frozenset(),
    positions: str = "all",
) -> AlignPlan | None:
    """The teacher batch for the items of the named sources; None when no item can be aligned.

    The teacher sequence is the student's with its ``num_visual_tokens`` placeholder positions replaced by the
    sample's target tokens (the caption), minus ``drop_ids`` (end-of-turn and other special tokens, which would
    end the teacher's turn early). Everything after the image is the same text in both, so position ``p`` of the
    student is position ``p - num_visual_tokens + len(caption)`` of the teacher. ``positions``: ``all`` aligns
    every position after the image; ``prompt`` only those before the reply (up to the one that predicts its first
    token), where the teacher has read the caption but not yet begun to repeat it.
    """
    seqs: list[list[int]] = []
    rows, s_pos, t_pos = [], [], []
    for i, e in enumerate(items):
        if e.source not in sources or e.num_images != 1:
            continue
        caption = [t for t in e.labels if t != IGNORE_INDEX and t not in drop_ids]
        image = [p for p, t in enumerate(e.input_ids) if t == IMAGE_PLACEHOLDER_ID]
        if not caption or len(image) != num_visual_tokens:
            continue
        a, b = image[0], image[-1] + 1
        end = len(e.input_ids)
        if positions == "prompt":
            end = next(q for q, t in enumerate(e.labels) if t != IGNORE_INDEX)  # the state at end-1 predicts it
            if end <= b:
                continue
        seqs.append(e.input_ids[:a] + caption + e.input_ids[b:])
        rows.append(i)
        s_pos.append(torch.arange(b, end))
        t_pos.append(torch.arange(a + len(caption), a + len(caption) + end - b))
    if not rows:
        return None
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s)
        mask[j, : len(s)] = 1
    return AlignPlan(ids, mask, rows, s_pos, t_pos)


def teacher_states(model: nn.Module, p: AlignPlan, layers: Sequence[int]) -> list[torch.Tensor]:
    """The frozen LLM's hidden states after each of ``layers`` (1-based) on the teacher sequences; no autograd.

    ``model`` is the (unwrapped) ``OwlModel``: its LLM is the teacher."""
    lm = model.causal_lm
    kwargs = {"output_hidden_states": True, "use_cache": False}
    if model._llm_keeps_logits:
        kwargs["logits_to_keep"] = 1  # only the states are wanted: skip the vocabulary projection
    device = next(lm.parameters()).device
    with torch.no_grad():
        out = lm(input_ids=p.input_ids.to(device), attention_mask=p.attention_mask.to(device), **kwargs)
    return [out.hidden_states[k] for k in layers]


def align_sum(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], p: AlignPlan, distance: str = "norm"
) -> torch.Tensor:
    """Sum over aligned positions of the mean over layers of the squared distance (see module doc).

    ``student[l]`` is (B, T, D) over the whole micro-batch, ``teacher[l]`` (b, T', D) over the plan's rows.
    ``distance``: ``norm`` divides each position's mean squared difference by the teacher state's mean square;
    ``standardized`` divides each dimension's difference by that dimension's spread over the micro-batch's
    aligned teacher states first. The second exists because a small LLM's residual stream is dominated by a few
    massive dimensions (SmolLM2-135M: 5 of 576 dimensions hold 55-62% of a typical state's squared norm at layers
    8-24, NOTES §19), so ``norm`` can be small while the other dimensions are far off.
    """
    total = student[0].new_zeros((), dtype=torch.float32)
    for s_all, t_all in zip(student, teacher):
        ts = [t_all[j, p.teacher_pos[j].to(t_all.device)].float() for j in range(len(p.rows))]
        scale = None
        if distance == "standardized":
            spread = torch.cat(ts).std(dim=0, correction=0)
            scale = spread.clamp(min=float(spread.median()) * 1e-2)  # dead dimensions do not blow up
        for j, r in enumerate(p.rows):
            s = s_all[r, p.student_pos[j].to(s_all.device)].float()
            t = ts[j]
            if scale is None:
                dist = (s - t).pow(2).mean(dim=-1) / t.pow(2).mean(dim=-1).clamp(min=1e-6)
            else:
                dist = ((s - t) / scale).pow(2).mean(dim=-1)
            total = total + dist.sum()
    return total / len(student)
