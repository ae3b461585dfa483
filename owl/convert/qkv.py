"""The reference checkpoints' fused attention projection, and its split into q/k/v.

mPLUG-Owl's ViT stores attention as one ``query_key_value`` linear of
``3 * width`` output rows, interleaved *per head*: viewed as
``(heads, 3, head_dim)``, index 1 picks q, k or v. transformers' CLIP keeps
separate ``q_proj``/``k_proj``/``v_proj``; these functions convert both ways.
"""

from __future__ import annotations

import torch


def split_fused_qkv(
    weight: torch.Tensor, bias: torch.Tensor | None, num_heads: int
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(3W, W)`` fused weight (+ ``(3W,)`` bias) -> ``[(Wq, bq), (Wk, bk), (Wv, bv)]``."""
    three_w, width = weight.shape
    if three_w != 3 * width or width % num_heads:
        raise ValueError(f"fused qkv weight of shape {tuple(weight.shape)} does not fit {num_heads} heads")
    hd = width // num_heads
    w = weight.view(num_heads, 3, hd, width)
    b = bias.view(num_heads, 3, hd) if bias is not None else None
    return [
        (w[:, i].reshape(width, width).clone(), b[:, i].reshape(width).clone() if b is not None else None)
        for i in range(3)
    ]


def fuse_qkv(
    parts: list[tuple[torch.Tensor, torch.Tensor | None]], num_heads: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`split_fused_qkv`."""
    width = parts[0][0].shape[1]
    hd = width // num_heads
    w = torch.stack([p[0].view(num_heads, hd, width) for p in parts], dim=1).reshape(3 * width, width)
    if parts[0][1] is None:
        return w, None
    b = torch.stack([p[1].view(num_heads, hd) for p in parts], dim=1).reshape(3 * width)
    return w, b
