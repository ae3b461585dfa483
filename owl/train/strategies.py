"""The distribution strategies: one class each, every one the whole of its own story.

Each implements the hooks of ``owl.train.distributed.Strategy`` (a ``Protocol``) and nothing else; none inherits
another's implementation, so reading one class tells all that its strategy does. What a checkpoint looks like
(full tensors, optimizer layouts) is ``owl.train.state_convert``; these classes call it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from owl.errors import CheckpointError, ConfigError
from owl.models.owl import OwlModel
from owl.train import state_convert as sc
from owl.train.config import TrainConfig

DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own checkpoint files, inside an owl checkpoint directory


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where the run asked for it. FSDP2 and DeepSpeed own the model, so accelerate's ``autocast``
    (which DDP uses) is not theirs to use."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def stack_blocks(model: nn.Module) -> list[nn.Module]:
    """FSDP2's units: the blocks of every repeated stack (children of an ``nn.ModuleList``), outermost only."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(b + ".") for b, _ in blocks):
            blocks += [(f"{name}.{i}", child) for i, child in enumerate(module)]
    return [m for _, m in blocks]


class DDPStrategy:
    """accelerate as launched: one plain process, or DDP over N (the model replicated, gradients all-reduced)."""

    name = "ddp"
    sharded = False
    writes_shards = False

    def __init__(self, cfg: TrainConfig, acc: Any, precision: str) -> None:
        self.cfg, self.acc, self.precision = cfg, acc, precision
        self.main = acc.is_main_process

    def describe(self) -> str:
        return "DDP" if self.acc.num_processes > 1 else "one process"

    def shard(self, model: OwlModel) -> nn.Module:
        return model  # replicated: nothing to split

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        return self.acc.prepare(model, optimizer)

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        optimizer.load_state_dict(sc.checked_optimizer_state(saved, optimizer))

    def unwrap(self, model: nn.Module) -> OwlModel:
        return self.acc.unwrap_model(model)

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        if not last:  # all-reduce the gradients once, after the last micro-batch
            stack.enter_context(self.acc.no_sync(model))
        stack.enter_context(self.acc.autocast())
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def after_backward(self, last: bool) -> None:
        pass

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None) -> float:
        if all(p.grad is None for p in params):  # a step whose every sample was skipped: no update
            return float("nan")
        if grad_clip is not None:
            grad_norm = float(self.acc.clip_grad_norm_(params, grad_clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def checkpoint_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        if not self.main:
            return None, None
        raw = self.unwrap(model)
        return {n: p for n, p in raw.named_parameters() if p.requires_grad}, optimizer.state_dict()

    def save_shards(self, model: nn.Module, directory: Path) -> None:
        pass  # the main process's checkpoint_state holds everything

    def full_model(self, model: nn.Module) -> OwlModel | None:
        return self.unwrap(model) if self.main else None


class FSDPStrategy:
    """PyTorch FSDP2 (``fully_shard``): every block of a repeated stack is one unit, the whole model the last one.

    Parameters, gradients and AdamW state are sharded. Checkpoints hold the unsharded optimizer layout, so they
    resume under DDP or another number of processes.
    """

    name = "fsdp"
    sharded = True
    writes_shards = False

    def __init__(self, cfg: TrainConfig, acc: Any, precision: str) -> None:
        self.cfg, self.acc, self.precision = cfg, acc, precision
        self.main = acc.is_main_process
        self.units = 0  # FSDP units, set by shard()

    def describe(self) -> str:
        return f"FSDP2 over {self.acc.num_processes} processes ({self.units} units)"

    def shard(self, model: OwlModel) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model.to(self.acc.device)
        mesh = init_device_mesh(self.acc.device.type, (self.acc.num_processes,))
        blocks = stack_blocks(model)
        for block in blocks:  # inner units first: each all-gathers only its own block's weights
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        self.units = len(blocks) + 1
        return model

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, optimizer  # shard() did the wrapping; the optimizer was built on the sharded parameters

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        by_name = sc.named_from_indexed(sc.checked_optimizer_state(saved, optimizer), sc.param_order(model, optimizer))
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    def unwrap(self, model: nn.Module) -> OwlModel:
        return model  # fully_shard changes the module in place

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        # Gradients are reduce-scattered after every micro-batch (FSDP's default): accumulating unsharded
        # gradients until the last one would hold a full copy of them on every process.
        return autocast(self.precision, self.acc.device)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def after_backward(self, last: bool) -> None:
        pass

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None) -> float:
        from torch.distributed.tensor import DTensor

        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if isinstance(norm, DTensor):  # a partial norm per shard: reduce across processes
            norm = norm.full_tensor()
        if grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def checkpoint_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        trainable = sc.gather_trainable(model, self.main)
        by_name = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.main:
            return None, None
        return trainable, sc.indexed_from_named(by_name, sc.param_order(model, optimizer))

    def save_shards(self, model: nn.Module, directory: Path) -> None:
        pass  # checkpoint_state gathered everything onto the main process

    def full_model(self, model: nn.Module) -> OwlModel | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sc.unsharded_copy(model, state, self.cfg) if self.main else None


class DeepSpeedStrategy:
    """DeepSpeed ZeRO-2 (optimizer state and gradients partitioned) or ZeRO-3 (parameters too).

    owl's AdamW, loss normalisation and schedule; DeepSpeed clips and steps. Its partitioned optimizer state (with
    the fp32 master weights) is written by DeepSpeed's ``save_checkpoint`` into ``deepspeed/`` and resumes under
    the same ZeRO stage only.

    Gradient accumulation is DeepSpeed's own (``gradient_accumulation_steps`` = owl's ``grad_accum``): its engine
    counts micro-batches in ``engine.step()`` and reduces gradients in the backward of the micro-batch it counts as
    the last. So ``engine.step()`` is called once per micro-batch: after each but the last in ``after_backward``
    (where it only counts, nothing is updated), and after the last in ``step`` (where it clips, updates and
    clears the gradients). Nothing touches the engine in between, so this is the call sequence DeepSpeed expects.
    """

    sharded = True
    writes_shards = True

    def __init__(self, cfg: TrainConfig, acc: Any, precision: str, stage: int) -> None:
        try:
            import deepspeed  # noqa: F401
        except ImportError as e:  # a user error (one line from the CLI), not a traceback
            raise ConfigError(
                f"train.distributed=zero{stage} needs DeepSpeed, which is not installed: "
                "pip install deepspeed (without CUDA: DS_BUILD_OPS=0 pip install --no-build-isolation "
                f"deepspeed), or use train.distributed=fsdp ({e})"
            ) from e
        self.cfg, self.acc, self.precision = cfg, acc, precision
        self.main = acc.is_main_process
        self.stage = stage
        self.name = f"zero{stage}"
        self.engine: Any = None

    def describe(self) -> str:
        return f"DeepSpeed ZeRO-{self.stage} over {self.acc.num_processes} processes"

    def ds_config(self) -> dict[str, Any]:
        t = self.cfg.train
        return {
            "train_micro_batch_size_per_gpu": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum,  # the micro-batches engine.step() counts per update
            "train_batch_size": t.batch_size * t.grad_accum * self.acc.num_processes,
            "gradient_clipping": self.cfg.optim.grad_clip or 0.0,
            "zero_optimization": {"stage": self.stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,  # owl logs; DeepSpeed's own per-step lines would only repeat it
        }

    def shard(self, model: OwlModel) -> nn.Module:
        return model  # deepspeed.initialize (in prepare) partitions; it needs the optimizer

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        import logging

        import deepspeed
        from deepspeed.utils import logger

        logger.setLevel(logging.WARNING)
        model.to(self.acc.device)
        # The schedule keeps driving `optimizer`: DeepSpeed steps it with the same param_groups dicts.
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config())
        return self.engine, optimizer

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """DeepSpeed's own files: the partitioned AdamW state and fp32 master weights (and the trainable weights)."""
        if not (Path(saved["path"]) / DEEPSPEED_DIR).is_dir():
            raise CheckpointError(
                f"checkpoint {saved['path']} was not written under DeepSpeed (no {DEEPSPEED_DIR}/); "
                "resume it with the train.distributed that wrote it, or set checkpoint.resume=none"
            )
        self.engine.load_checkpoint(
            str(saved["path"]),
            tag=DEEPSPEED_DIR,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )

    def unwrap(self, model: nn.Module) -> OwlModel:
        return self.engine.module

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.acc.device)

    def backward(self, loss: torch.Tensor) -> None:
        # owl already divides by the global batch's target tokens, so no extra 1/grad_accum.
        self.engine.backward(loss, scale_wrt_gas=False)

    def after_backward(self, last: bool) -> None:
        if not last:  # off the accumulation boundary engine.step() only counts the micro-batch
            self.engine.step()

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None) -> float:
        if not self.engine.is_gradient_accumulation_boundary():  # a bug, not a user error: say so loudly
            raise RuntimeError(
                "DeepSpeed is not at a gradient accumulation boundary: the step ran a number of "
                f"micro-batches other than grad_accum={self.cfg.train.grad_accum}"
            )
        self.engine.step()  # clips (gradient_clipping), updates, clears the gradients
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def checkpoint_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        names = {n for n, p in self.engine.module.named_parameters() if p.requires_grad}
        return sc.gather_zero_state(self.engine.module, names, self.main), None  # optimizer: save_shards

    def save_shards(self, model: nn.Module, directory: Path) -> None:
        self.engine.save_checkpoint(
            str(directory), tag=DEEPSPEED_DIR, save_latest=False, exclude_frozen_parameters=True
        )

    def full_model(self, model: nn.Module) -> OwlModel | None:
        state = sc.gather_zero_state(self.engine.module, None, self.main)
        return sc.unsharded_copy(self.engine.module, state, self.cfg) if self.main else None
