"""The running batch's KV cache: left-padded, grown by joins, shrunk by retirements.

Continuous batching needs a cache that sequences can join and leave between
decode steps. transformers' ``DynamicCache`` keeps one ``(batch, heads, time,
head_dim)`` key and value tensor per layer (``cache.layers[i].keys/.values``);
this module edits those tensors in place:

- every row is left-padded to the batch's width, and a 2D attention mask marks
  the real columns, as transformers' own batched ``generate`` does;
- positions come from the mask (``cumsum - 1``), so a row's positions do not
  depend on how much padding it sits behind (RoPE models get ``position_ids``;
  ALiBi models such as BLOOM derive the same from the mask themselves);
- a join pads the narrower side on the left and concatenates along the batch;
- a retirement keeps the other rows with ``index_select`` and then trims the
  leading columns that are padding in every remaining row.

The cache is built without a model config, so every layer is a plain
``DynamicLayer`` (a sliding-window model keeps its whole past here, and its
attention mask still applies the window).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a left-padded mask, as transformers' generate makes them (padding gets 0)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


class ForwardKwargs:
    """Which keyword arguments the LLM's forward takes: the cache's name changed within transformers 5
    (``past_key_values`` -> ``cache``), BLOOM takes no ``position_ids``, older heads no ``logits_to_keep``."""

    def __init__(self, llm: nn.Module) -> None:
        params = inspect.signature(type(llm).forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        self.positions = "position_ids" in params
        self.logits_to_keep = "logits_to_keep" in params

    def __call__(self, cache: DynamicCache, mask: torch.Tensor, new_tokens: int) -> dict:
        kw: dict = {self.cache_name: cache, "attention_mask": mask, "use_cache": True}
        if self.positions:
            kw["position_ids"] = positions(mask)[:, -new_tokens:]
        if self.logits_to_keep:
            kw["logits_to_keep"] = 1
        return kw


def _layers(cache: DynamicCache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise RuntimeError("this transformers version's DynamicCache has no .layers; owl serve needs transformers>=5")
    return [layer for layer in layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    extra = width - x.shape[dim]
    if extra == 0:
        return x
    spec = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [extra, 0]
    return F.pad(x, spec)


class KVBatch:
    """A left-padded KV cache and attention mask for the rows of the running batch (row order = caller's)."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T) long

    @property
    def size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append the rows of a freshly prefilled (left-padded) cache below the running ones."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.width, int(mask.shape[1]))
        ours, theirs = _layers(self.cache), _layers(cache)
        if len(ours) != len(theirs):
            raise RuntimeError(f"cannot join caches of {len(ours)} and {len(theirs)} layers")
        for a, b in zip(ours, theirs):
            a.keys = torch.cat([_pad_left(a.keys, width, -2), _pad_left(b.keys, width, -2)])
            a.values = torch.cat([_pad_left(a.values, width, -2), _pad_left(b.values, width, -2)])
        self.mask = torch.cat([_pad_left(self.mask, width, -1), _pad_left(mask, width, -1)])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); drop the columns that became padding in every kept row."""
        if not rows:
            self.cache, self.mask = None, None
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        real = mask.any(dim=0).nonzero()
        lead = int(real[0]) if len(real) else mask.shape[1]
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, idx.to(layer.keys.device))[:, :, lead:]
            layer.values = layer.values.index_select(0, idx.to(layer.values.device))[:, :, lead:]
        self.mask = mask[:, lead:]

    def extend_mask(self) -> torch.Tensor:
        """The mask with one more real column for every row: the token each row decodes this step."""
        self.mask = F.pad(self.mask, (0, 1), value=1)
        return self.mask
