"""The composed model: vision encoder -> visual abstractor -> spliced into the LLM's embeddings.

Text arrives with each ``<image>`` already expanded (by the processor) into a
run of ``num_visual_tokens`` positions holding ``IMAGE_PLACEHOLDER_ID``. The
abstractor outputs overwrite the embeddings at those positions, images taken
in order: sample by sample, and within a sample in prompt order. Because the
splice goes by position count rather than by "runs", two adjacent ``<image>``
placeholders keep one image each (the reference merged them and lost one).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from owl.config import OwlConfig
from owl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID


@dataclass
class OwlOutput:
    """``loss`` is the mean over target tokens; the sums let callers normalise over a global batch."""

    loss: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    num_target_tokens: torch.Tensor | None = None
    sample_loss_sum: torch.Tensor | None = None  # (B,) for per-source losses
    sample_target_tokens: torch.Tensor | None = None  # (B,)
    logits: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] | None = None  # (B, T, D) after each requested layer (owl.train.text_align)


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class TextOnlyLayerNorm(nn.LayerNorm):
    """An embedding LayerNorm (BLOOM's ``word_embeddings_layernorm``) that leaves the visual tokens alone.

    The reference normalises the text embeddings and splices the visual tokens in afterwards, so they never pass
    through it; transformers' BLOOM normalises whatever ``inputs_embeds`` it is given. ``OwlModel.embed`` marks the
    visual positions in ``bypass`` just before the LLM runs; the next call with that shape uses the mark once and
    drops it, so decoding steps (new text tokens only) are normalised as usual. Same parameters and state-dict
    names as the LayerNorm it replaces.
    """

    bypass: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        mask, self.bypass = self.bypass, None
        if mask is not None and mask.shape == x.shape[:-1]:
            out = torch.where(mask.unsqueeze(-1), x, out)
        return out


def _text_only_embed_norm(causal_lm: nn.Module) -> TextOnlyLayerNorm | None:
    body = getattr(causal_lm, "transformer", None)
    ln = getattr(body, "word_embeddings_layernorm", None)
    if not isinstance(ln, nn.LayerNorm):
        return None
    ln.__class__ = TextOnlyLayerNorm  # same parameters, buffers and names; only forward changes
    return ln


class OwlModel(nn.Module):
    """Vision tower + abstractor + any causal LM. Build it with ``owl.models.build_model``."""

    def __init__(self, config: OwlConfig, vision: nn.Module, abstractor: nn.Module, llm: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.vision = vision
        self.abstractor = abstractor
        self.llm = llm
        self._llm_keeps_logits = "logits_to_keep" in inspect.signature(type(self.causal_lm).forward).parameters
        # Kept outside the module tree (it already lives inside the LLM): no second set of state-dict names.
        self.__dict__["_embed_norm"] = (
            None if config.llm.normalize_visual_embeds else _text_only_embed_norm(self.causal_lm)
        )

    # ------------------------------------------------------------------ parts
    @property
    def causal_lm(self) -> nn.Module:
        """The transformers causal LM itself, unwrapped from a peft wrapper if there is one."""
        get_base = getattr(self.llm, "get_base_model", None)
        return get_base() if callable(get_base) else self.llm

    @property
    def num_visual_tokens(self) -> int:
        return self.config.num_visual_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_visual_tokens, d_llm). A frozen vision tower runs without autograd."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and _has_trainable(self.vision)):
            features = self.vision(pixel_values)  # (N, T, C)
        return self.abstractor(features)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        keep_all_in_graph: bool = False,
    ) -> torch.Tensor:
        """Token embeddings with the visual tokens spliced into the placeholder positions. (B, T) -> (B, T, D).

        ``keep_all_in_graph``: a batch without images still runs the vision tower and abstractor (on one blank
        image, with weight zero), so every parameter is in the graph; distributed training steps ask for it.
        """
        is_image = input_ids == IMAGE_PLACEHOLDER_ID  # (B, T)
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(min=0))  # (B, T, D)
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if image_counts is None:
            image_counts = torch.full((input_ids.shape[0],), -1, dtype=torch.long)
            if input_ids.shape[0] == 1:
                image_counts[0] = n_images
        self._check_counts(is_image, image_counts, n_images)
        if n_images == 0:
            if keep_all_in_graph and torch.is_grad_enabled():
                size = self.config.vision.image_size
                blank = torch.zeros(1, 3, size, size, dtype=embeds.dtype, device=embeds.device)
                embeds = embeds + 0.0 * self.encode_images(blank).sum()
            return embeds
        visual = self.encode_images(pixel_values.to(embeds.dtype)).to(embeds.dtype)  # (N, V, D)
        if self._embed_norm is not None:
            self._embed_norm.bypass = is_image
        return embeds.masked_scatter(is_image.unsqueeze(-1), visual.reshape(-1, visual.shape[-1]))

    def _check_counts(self, is_image: torch.Tensor, image_counts: torch.Tensor, n_images: int) -> None:
        v = self.num_visual_tokens
        positions = is_image.sum(dim=1).tolist()
        counts = [int(c) for c in image_counts.tolist()]
        if -1 in counts:
            raise ValueError("image_counts (images per sample) is required for a batch of more than one sample")
        if sum(counts) != n_images:
            raise ValueError(f"image_counts sum to {sum(counts)} but {n_images} images were given")
        for b, (pos, c) in enumerate(zip(positions, counts)):
            if pos != c * v:
                placeholders = f"{pos / v:g}" if pos % v == 0 else f"{pos} visual positions (not a multiple of {v}) ="
                raise ValueError(
                    f"sample {b}: {placeholders} <image> placeholders but {c} images; every <image> must be expanded "
                    f"to {v} positions by the processor and matched by exactly one image"
                )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = True,
        keep_all_in_graph: bool = False,
        hidden_layers: Sequence[int] | None = None,
        position_ids: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> OwlOutput:
        """Loss (when ``labels`` are given) and logits.

        With ``return_logits=False`` and labels, the LM head runs only at the
        positions some sample has a target for (the LLM's ``logits_to_keep``),
        which saves a large share of a small LLM's step time. ``keep_all_in_graph``: see :meth:`embed`.
        ``hidden_layers`` (1-based, with labels): also return the LLM's hidden states after those layers.
        ``position_ids`` + ``segments`` (with ``attention_mask`` None): a packed batch (:mod:`owl.packing`);
        the per-sample outputs are then per packed sample, in the order of the segment indices.
        """
        embeds = self.embed(input_ids, pixel_values, image_counts, keep_all_in_graph)
        kwargs = {"inputs_embeds": embeds, "use_cache": False}
        if segments is not None:
            if position_ids is None or attention_mask is not None:
                raise ValueError("a packed batch (segments) needs position_ids and no attention_mask")
            kwargs["position_ids"] = position_ids  # restarting positions: transformers masks block-diagonally
        else:
            kwargs["attention_mask"] = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if labels is None:
            return OwlOutput(logits=self.llm(**kwargs).logits)
        if hidden_layers:
            kwargs["output_hidden_states"] = True

        shift_labels = labels[:, 1:]  # position t predicts token t+1
        if not return_logits and self._llm_keeps_logits:
            keep = (shift_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
            out = self.llm(**kwargs, logits_to_keep=keep)
            logits = out.logits  # (B, P, V)
            targets = shift_labels[:, keep]
            owner = None if segments is None else segments[:, 1:][:, keep]
        else:
            out = self.llm(**kwargs)
            logits = out.logits[:, :-1]  # (B, T-1, V)
            targets = shift_labels
            owner = None if segments is None else segments[:, 1:]
        token_loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(targets.shape)  # (B, P)
        counted = targets != IGNORE_INDEX
        if owner is None:
            sample_loss = token_loss.sum(dim=1)
            sample_tokens = counted.sum(dim=1)
        else:  # packed: each target position adds to the sample it belongs to
            n_samples = int(segments.max().item()) + 1
            idx = owner.clamp(min=0).reshape(-1)
            sample_loss = token_loss.new_zeros(n_samples).index_add(0, idx, token_loss.reshape(-1))
            sample_tokens = counted.new_zeros(n_samples, dtype=torch.long).index_add(0, idx, counted.reshape(-1).long())
        loss_sum = sample_loss.sum()
        n = sample_tokens.sum()
        return OwlOutput(
            loss=loss_sum / n.clamp(min=1),
            loss_sum=loss_sum,
            num_target_tokens=n,
            sample_loss_sum=sample_loss.detach(),
            sample_target_tokens=sample_tokens,
            logits=logits if return_logits else None,
            hidden_states=[out.hidden_states[k] for k in hidden_layers] if hidden_layers else None,
        )
