"""Resuming a run: everything a checkpoint restores, in one place.

A checkpoint (``owl.train.checkpoint``) restores, in this order:

1. the trainable weights (:func:`restore_weights`), into the plain model *before* the strategy shards it;
2. the optimizer state, the schedule, the data position and skip counts, then every RNG stream
   (:func:`restore_state`), *after* the strategy has prepared model and optimizer.

Two calls, because the strategies force that order. Before sharding every process holds the full tensors, so
one plain copy serves all strategies; afterwards each would need its own scatter (DTensor shards, ZeRO-3
partitions). The optimizer state, in turn, can only go into the optimizer the strategy prepared: FSDP2's is built
on sharded parameters, and DeepSpeed's partitioned state (and fp32 master weights) exist only after
``deepspeed.initialize``. The RNG streams come last so that nothing in setup consumes random numbers after them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from owl.models.owl import OwlModel
from owl.train import checkpoint as ckpt
from owl.train.data import TrainData
from owl.train.distributed import Strategy


def load(output_dir: str | Path, resume: str, say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The checkpoint ``checkpoint.resume`` asks for, loaded (``auto``: the newest intact one), or None.

    ``say`` reports a damaged checkpoint that was passed over (``owl.train.checkpoint.find_resume``).
    """
    path = ckpt.find_resume(output_dir, resume, say)
    return ckpt.load_checkpoint(path) if path is not None else None


def restore_weights(saved: dict[str, Any], model: OwlModel) -> None:
    """Phase 1, before sharding: the saved (full) trainable weights into the plain model, on every process."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved["trainable"].items():
            params[name].copy_(tensor)


def restore_state(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: TrainData,
    strategy: Strategy,
    acc: Any,
) -> int:
    """Phase 2, after ``strategy.prepare``: optimizer, schedule, data position, RNG. Returns the step to go on from.

    ``model`` and ``optimizer`` are the prepared ones.
    """
    strategy.load_optimizer_state(model, optimizer, saved)
    state = saved["state"]
    scheduler.load_state_dict(state["scheduler"])
    data.load_state_dict(state["data"])
    if not acc.is_main_process:
        data.stats = type(data.stats)()  # merged counts live on the main process only
    ckpt.set_rng_state(*ckpt.rank_rng_state(saved["rng"], state, acc.process_index))
    return state["step"]
