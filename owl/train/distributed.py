"""How the one training loop runs across processes: the hooks a distribution strategy provides.

The loop (``owl.train.loop``) is explicit and calls the same hooks whichever strategy runs, so it reads the same
for all of them. ``train.distributed`` picks the strategy (implementations: ``owl.train.strategies``):

``ddp``
    accelerate, as launched: one plain process, or DDP over N processes (the
    model replicated, gradients all-reduced).
``fsdp``
    PyTorch FSDP2 (``fully_shard``), applied by owl itself: one unit per block
    of every repeated stack (the LLM's decoder layers, the vision encoder's
    layers, the abstractor's layers) plus the whole model for the rest.
    Parameters, gradients and AdamW state are sharded. owl applies it rather
    than accelerate because accelerate turns an FSDP config into plain
    multi-CPU DDP when there is no GPU; this way the same code serves GPUs
    (NCCL) and CPU (gloo), where the tests run it.
``zero2`` / ``zero3``
    DeepSpeed ZeRO stage 2 (optimizer state and gradients partitioned) or 3
    (parameters too), through ``deepspeed.initialize`` for the same reason.
    Optional: ``pip install deepspeed``.
``auto``
    what the launcher asked for: ``accelerate launch`` with an FSDP or
    DeepSpeed config (``configs/accelerate/``) selects ``fsdp`` or
    ``zero2``/``zero3``; otherwise ``ddp``.

Checkpoints hold full (unsharded) tensors wherever that is cheap to get
right: trainable weights always; the optimizer state for ``ddp`` and ``fsdp``
in the layout of ``torch.optim.Optimizer.state_dict()`` of the unsharded
model, so a checkpoint of either resumes under the other and with another
number of processes (tested: FSDP on 2 processes -> 1 process). DeepSpeed's
partitioned optimizer state (with its fp32 master weights) is written by
DeepSpeed's own ``save_checkpoint`` into ``deepspeed/`` and resumes under the
same ZeRO stage. The conversions are ``owl.train.state_convert``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from owl.errors import ConfigError
from owl.models.owl import OwlModel
from owl.train.config import TrainConfig
from owl.train.strategies import DEEPSPEED_DIR, DDPStrategy, DeepSpeedStrategy, FSDPStrategy

__all__ = [
    "DEEPSPEED_DIR",
    "DDPStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "Strategy",
    "make_strategy",
    "resolve_strategy",
]


class Strategy(Protocol):
    """The hooks, in the order one run calls them.

    Setup: ``shard`` (before the optimizer is built on the parameters), ``prepare``, then on resume
    ``load_optimizer_state``. Per optimizer step, for each micro-batch: ``micro_batch`` (a context for its
    forward and backward), ``backward``, ``after_backward``; then ``step`` once. Checkpoints: ``checkpoint_state``
    and ``save_shards`` (every process takes part); at the end ``full_model``.
    """

    name: str
    sharded: bool  # parameters or optimizer state split across processes
    writes_shards: bool  # every process writes files into the checkpoint (see save_shards)

    def describe(self) -> str:
        """How the run is distributed, for the start-of-run banner."""
        ...

    def shard(self, model: OwlModel) -> nn.Module:
        """Split the model across processes (or not); returns the module to build the optimizer on."""
        ...

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Wrap model and optimizer for training; returns the (model, optimizer) the loop uses from then on."""
        ...

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """Restore the optimizer state of the loaded checkpoint ``saved`` into the prepared ``optimizer``."""
        ...

    def unwrap(self, model: nn.Module) -> OwlModel:
        """The ``OwlModel`` inside the prepared ``model`` (sharded parameters stay sharded)."""
        ...

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """The context one micro-batch's forward and backward run in; gradients synchronise by the ``last``."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (already normalised by the global batch's target tokens)."""
        ...

    def after_backward(self, last: bool) -> None:
        """End of one micro-batch, after its backward (DeepSpeed counts micro-batches here)."""
        ...

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None) -> float:
        """Clip, update, clear gradients; returns the gradient norm before clipping."""
        ...

    def checkpoint_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        """(full trainable weights, optimizer state in ``Optimizer.state_dict()`` layout or None if save_shards
        writes it) on the main process, (None, None) elsewhere. Every process calls it (gathers)."""
        ...

    def save_shards(self, model: nn.Module, directory: Path) -> None:
        """Write this process's part of the checkpoint into its staging ``directory`` (when ``writes_shards``)."""
        ...

    def full_model(self, model: nn.Module) -> OwlModel | None:
        """A plain (unsharded, unwrapped) model with the trained weights on the main process; None elsewhere."""
        ...


def resolve_strategy(name: str, env: dict[str, str] | None = None) -> str:
    """``auto`` -> the strategy ``accelerate launch`` set up through its environment; other names unchanged."""
    env = os.environ if env is None else env
    if name != "auto":
        return name
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        if stage not in ("2", "3"):
            raise ConfigError(f"DeepSpeed zero_stage {stage} is not supported by owl; use zero_stage 2 or 3")
        return f"zero{stage}"
    return "ddp"


def make_strategy(cfg: TrainConfig, acc: Any, precision: str) -> Strategy:
    """The strategy for ``cfg.train.distributed`` on the accelerator ``acc`` (which owns the process group)."""
    if acc.num_processes > 1:
        _destroy_process_group_at_exit()
    name = resolve_strategy(cfg.train.distributed)
    if name != "ddp" and acc.num_processes == 1:
        raise ConfigError(
            f"train.distributed={name} shards the model across processes, but this run has one: "
            "launch 2 or more (torchrun --nproc_per_node N -m owl.cli train ...), or use "
            "train.distributed=auto"
        )
    if name == "fsdp":
        return FSDPStrategy(cfg, acc, precision)
    if name in ("zero2", "zero3"):
        return DeepSpeedStrategy(cfg, acc, precision, stage=int(name[-1]))
    return DDPStrategy(cfg, acc, precision)


_EXIT_HOOK: list[bool] = []


def _destroy_process_group_at_exit() -> None:
    """Tear the process group down while Python is still alive. Left to interpreter shutdown, gloo's worker threads
    can still hold tensors of finished collectives, and the process then aborts ("terminate called without an active
    exception") after a run that went well. Not at the end of ``train``: a process may train again (stage 1, 2)."""
    if _EXIT_HOOK:
        return
    import atexit

    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)
    _EXIT_HOOK.append(True)
