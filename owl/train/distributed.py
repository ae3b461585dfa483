"""How the one training loop runs across processes: the hooks of a distribution strategy.

``train.distributed`` picks the strategy; the loop calls the same hooks for
each (shard, prepare, micro_batch, backward, step, checkpoint_state,
save_shards, full_model), so it reads the same whichever runs:

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
number of processes (tested: FSDP on 2 processes -> 1 process). DeepSpeed's partitioned optimizer state (with its fp32
master weights) is written by DeepSpeed's own ``save_checkpoint`` into
``deepspeed/`` and resumes under the same ZeRO stage.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from owl.config import ConfigError
from owl.models.owl import OwlModel
from owl.train.config import TrainConfig

DEEPSPEED_DIR = "deepspeed"


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
            raise ValueError(f"DeepSpeed zero_stage {stage} is not supported by owl; use zero_stage 2 or 3")
        return f"zero{stage}"
    return "ddp"


def make_strategy(cfg: TrainConfig, acc: Any, precision: str) -> Strategy:  # noqa: ANN401
    """The strategy for ``cfg.train.distributed`` on the accelerator ``acc`` (which owns the process group)."""
    if acc.num_processes > 1:
        _destroy_process_group_at_exit()
    name = resolve_strategy(cfg.train.distributed)
    if name != "ddp" and acc.num_processes == 1:
        raise ValueError(f"train.distributed={name} shards the model across processes, but this run has one: launch "
                         f"2 or more (torchrun --nproc_per_node N -m owl.cli train ...), or use train.distributed=auto")
    if name == "fsdp":
        return FSDPStrategy(cfg, acc, precision)
    if name in ("zero2", "zero3"):
        return DeepSpeedStrategy(cfg, acc, precision, stage=int(name[-1]))
    return Strategy(cfg, acc, precision)


class Strategy:
    """accelerate as launched: a plain process or DDP. The other strategies override the hooks they change."""

    name = "ddp"
    sharded = False  # parameters or optimizer state split across processes
    writes_shards = False  # every process writes files into the checkpoint (see save_shards)

    def __init__(self, cfg: TrainConfig, acc: Any, precision: str) -> None:  # noqa: ANN401
        self.cfg, self.acc, self.precision = cfg, acc, precision
        self.main = acc.is_main_process

    def describe(self) -> str:
        return "DDP" if self.acc.num_processes > 1 else "one process"

    def shard(self, model: OwlModel) -> nn.Module:
        """Split the model across processes before the optimizer is built on its parameters."""
        return model

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict | None
                ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Wrap model and optimizer; restore the optimizer state of ``saved`` (a loaded checkpoint), if any."""
        if saved is not None:
            optimizer.load_state_dict(_indexed_state(saved, optimizer))
        return self.acc.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> OwlModel:
        return self.acc.unwrap_model(model)

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Forward + backward of one micro-batch run inside this; gradients are synchronised on the ``last``."""
        stack = contextlib.ExitStack()
        if not last:
            stack.enter_context(self.acc.no_sync(model))
        stack.enter_context(self.acc.autocast())
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None) -> float:
        """Clip, update, clear gradients; returns the gradient norm before clipping."""
        if grad_clip is not None:
            grad_norm = float(self.acc.clip_grad_norm_(params, grad_clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def checkpoint_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        """(full trainable weights, optimizer state in ``Optimizer.state_dict()`` layout) on the main process."""
        if not self.main:
            return None, None
        raw = self.unwrap(model)
        return {n: p for n, p in raw.named_parameters() if p.requires_grad}, optimizer.state_dict()

    def save_shards(self, model: nn.Module, directory: Path) -> None:
        """Called on every process with the checkpoint's staging directory when ``writes_shards``."""

    def full_model(self, model: nn.Module) -> OwlModel | None:
        """A plain (unsharded, unwrapped) model with the trained weights on the main process; None elsewhere."""
        return self.unwrap(model) if self.main else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.acc.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class FSDPStrategy(Strategy):
    """FSDP2: every block of a repeated stack is one unit, the whole model the last one."""

    name = "fsdp"
    sharded = True
    units = 0  # FSDP units, set by shard()

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

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict | None
                ) -> tuple[nn.Module, torch.optim.Optimizer]:
        if saved is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            by_name = _named_state(_indexed_state(saved, optimizer), _param_order(model, optimizer))
            set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
        return model, optimizer

    def unwrap(self, model: nn.Module) -> OwlModel:
        return model

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        # Gradients are reduce-scattered after every micro-batch (FSDP's default): accumulating unsharded
        # gradients until the last one would hold a full copy of them on every process.
        return self._autocast()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

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

    def checkpoint_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        trainable = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:  # one parameter at a time: never the whole model gathered at once
                    full = _full(p)
                    if self.main:
                        trainable[name] = full.cpu()
        by_name = get_optimizer_state_dict(model, optimizer,
                                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return None, None
        return trainable, _indexed_from_named(by_name, _param_order(model, optimizer))

    def full_model(self, model: nn.Module) -> OwlModel | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return unsharded_copy(model, state, self.cfg) if self.main else None


class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO-2/3 with owl's AdamW, loss normalisation and schedule; DeepSpeed clips and steps."""

    sharded = True
    writes_shards = True

    def __init__(self, cfg: TrainConfig, acc: Any, precision: str, stage: int) -> None:  # noqa: ANN401
        try:
            import deepspeed  # noqa: F401
        except ImportError as e:  # a user error (one line from the CLI), not a traceback
            raise ConfigError(f"train.distributed=zero{stage} needs DeepSpeed, which is not installed: "
                              "pip install deepspeed (without CUDA: DS_BUILD_OPS=0 pip install --no-build-isolation "
                              f"deepspeed), or use train.distributed=fsdp ({e})") from e
        super().__init__(cfg, acc, precision)
        self.stage = stage
        self.name = f"zero{stage}"
        self.engine: Any = None

    def describe(self) -> str:
        return f"DeepSpeed ZeRO-{self.stage} over {self.acc.num_processes} processes"

    def ds_config(self) -> dict[str, Any]:
        t = self.cfg.train
        return {
            "train_micro_batch_size_per_gpu": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum,  # DeepSpeed steps after this many backward() calls
            "train_batch_size": t.batch_size * t.grad_accum * self.acc.num_processes,
            "gradient_clipping": self.cfg.optim.grad_clip or 0.0,
            "zero_optimization": {"stage": self.stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,  # owl logs; DeepSpeed's own per-step lines would only repeat it
        }

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict | None
                ) -> tuple[nn.Module, torch.optim.Optimizer]:
        import logging

        import deepspeed
        from deepspeed.utils import logger

        if saved is not None and not (Path(saved["path"]) / DEEPSPEED_DIR).is_dir():
            raise ValueError(f"checkpoint {saved['path']} was not written under DeepSpeed (no {DEEPSPEED_DIR}/); "
                             "resume it with the train.distributed that wrote it, or set checkpoint.resume=none")
        logger.setLevel(logging.WARNING)
        model.to(self.acc.device)
        # The schedule keeps driving `optimizer`: DeepSpeed steps it with the same param_groups dicts.
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config())
        if saved is not None:  # DeepSpeed's own files: partitioned AdamW state and fp32 master weights
            self.engine.load_checkpoint(str(saved["path"]), tag=DEEPSPEED_DIR, load_module_strict=False,
                                        load_optimizer_states=True, load_lr_scheduler_states=False)
        return self.engine, optimizer

    def unwrap(self, model: nn.Module) -> OwlModel:
        return self.engine.module

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        return self._autocast()

    def backward(self, loss: torch.Tensor) -> None:
        # owl already divides by the global batch's target tokens, so no extra 1/grad_accum.
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # counts micro-batches; updates (and clips) only after the last of the step

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None) -> float:
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def checkpoint_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        names = {n for n, p in self.engine.module.named_parameters() if p.requires_grad}
        return self._gathered(names), None  # the optimizer state is written by save_shards

    def save_shards(self, model: nn.Module, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_DIR, save_latest=False,
                                    exclude_frozen_parameters=True)

    def full_model(self, model: nn.Module) -> OwlModel | None:
        state = self._gathered(None)
        return unsharded_copy(self.engine.module, state, self.cfg) if self.main else None

    def _gathered(self, names: set[str] | None) -> dict[str, torch.Tensor] | None:
        """Full tensors of the module's state dict (only ``names`` if given) on the main process."""
        import deepspeed

        module = self.engine.module
        params = dict(module.named_parameters(remove_duplicate=False))
        out = {}
        for name, tensor in module.state_dict(keep_vars=True).items():
            if names is not None and name not in names:
                continue
            p = params.get(name)
            if p is not None and hasattr(p, "ds_id"):  # ZeRO-3 partitioned parameter: gather it for a moment
                with deepspeed.zero.GatheredParameters([p]):
                    if self.main:
                        out[name] = p.detach().cpu().clone()
            elif self.main:
                out[name] = tensor.detach().cpu()
        return out if self.main else None


# ---------------------------------------------------------------------------------------------- helpers
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


def stack_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of every repeated stack (children of an ``nn.ModuleList``), outermost only, in order."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(b + ".") for b, _ in blocks):
            blocks += [(f"{name}.{i}", child) for i, child in enumerate(module)]
    return [m for _, m in blocks]


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def unsharded_copy(trained: nn.Module, state: dict[str, torch.Tensor], cfg: TrainConfig) -> OwlModel:
    """A plain ``OwlModel`` like ``trained`` holding the full ``state``: built on the meta device (no memory, no
    random init), the same LoRA layout applied, then filled; buffers outside the state dict come from ``trained``."""
    from owl.models.builders import build_model
    from owl.train.trainable import apply_trainable

    with torch.device("meta"):
        model, _, _ = build_model(trained.config)
        apply_trainable(model, cfg.trainable, cfg.lora)
    model.config = trained.config
    model.load_state_dict(state, assign=True)
    for name, buf in trained.named_buffers():
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner)
        if getattr(mod, leaf).is_meta:  # not in the state dict: non-persistent (e.g. rotary frequencies)
            mod.register_buffer(leaf, _full(buf).detach().cpu().clone(), persistent=False)
    if getattr(model.causal_lm.config, "tie_word_embeddings", False):
        model.causal_lm.tie_weights()
    return model


def _param_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: index i of ``Optimizer.state_dict()`` is the i-th name."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _indexed_state(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    state = saved.get("optimizer")
    if state is None:
        raise ValueError(f"checkpoint {saved['path']} has no optimizer.pt (written under DeepSpeed?); resume it with "
                         "the train.distributed that wrote it, or set checkpoint.resume=none")
    n_saved, n_now = (sum(len(g["params"]) for g in s) for s in (state["param_groups"], optimizer.param_groups))
    if n_saved != n_now:
        raise ValueError(f"checkpoint {saved['path']}: its optimizer has {n_saved} parameters, this run's {n_now}; "
                         "was it written with another trainable/lora config?")
    return state


def _named_state(indexed: dict, order: list[str]) -> dict:
    """``Optimizer.state_dict()`` layout (parameters by index) -> keyed by parameter name (torch DCP layout)."""
    return {"state": {order[i]: v for i, v in indexed["state"].items()},
            "param_groups": [g | {"params": [order[i] for i in g["params"]]} for g in indexed["param_groups"]]}


def _indexed_from_named(named: dict, order: list[str]) -> dict:
    index = {n: i for i, n in enumerate(order)}
    return {"state": {index[n]: v for n, v in named["state"].items()},
            "param_groups": [g | {"params": [index[n] for n in g["params"]]} for g in named["param_groups"]]}
