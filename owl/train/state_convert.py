"""Converting training state between its sharded, wrapped form and the plain form a checkpoint holds.

Kept out of the strategies (``owl.train.strategies``) because none of it is about *how* a step runs across
processes; it is about what the files look like. A checkpoint holds full tensors under their parameter names and
the optimizer state in the layout of ``torch.optim.Optimizer.state_dict()`` of the unsharded model (parameters
by index), so a checkpoint written under one strategy (or number of processes) resumes under another. This
module holds the conversions both ways:

- optimizer state: by index (``Optimizer.state_dict()``) <-> by name (torch DCP / FSDP2's layout);
- full tensors: of one FSDP2 ``DTensor``, of every trainable parameter, of a DeepSpeed ZeRO module;
- an unsharded copy of a trained model, for saving it as an ordinary model directory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from owl.errors import CheckpointError
from owl.models.owl import OwlModel
from owl.train.config import TrainConfig

# ------------------------------------------------------------------------------------- optimizer layouts


def param_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: index i of ``Optimizer.state_dict()`` is the i-th name."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def checked_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict:
    """The indexed optimizer state of the loaded checkpoint ``saved``, once it is known to fit ``optimizer``.

    Checked here because ``load_state_dict`` of a mismatched state fails later with an index error that names
    neither the checkpoint nor the likely cause.
    """
    state = saved.get("optimizer")
    if state is None:
        raise CheckpointError(
            f"checkpoint {saved['path']} has no optimizer.pt (written under DeepSpeed?); resume it "
            "with the train.distributed that wrote it, or set checkpoint.resume=none"
        )
    n_saved, n_now = (sum(len(g["params"]) for g in s) for s in (state["param_groups"], optimizer.param_groups))
    if n_saved != n_now:
        raise CheckpointError(
            f"checkpoint {saved['path']}: its optimizer has {n_saved} parameters, this run's "
            f"{n_now}; was it written with another trainable/lora config?"
        )
    return state


def named_from_indexed(indexed: dict, order: list[str]) -> dict:
    """``Optimizer.state_dict()`` layout (parameters by index) -> keyed by parameter name (torch DCP layout)."""
    return {
        "state": {order[i]: v for i, v in indexed["state"].items()},
        "param_groups": [g | {"params": [order[i] for i in g["params"]]} for g in indexed["param_groups"]],
    }


def indexed_from_named(named: dict, order: list[str]) -> dict:
    """The inverse of :func:`named_from_indexed`: what a 1-process run's ``Optimizer.state_dict()`` would be."""
    index = {n: i for i, n in enumerate(order)}
    return {
        "state": {index[n]: v for n, v in named["state"].items()},
        "param_groups": [g | {"params": [index[n] for n in g["params"]]} for g in named["param_groups"]],
    }


# ------------------------------------------------------------------------------------------ full tensors


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every process must call it); plain tensors unchanged."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def gather_trainable(model: nn.Module, main: bool) -> dict[str, torch.Tensor] | None:
    """Full CPU copies of the trainable parameters on the main process (None elsewhere); every process calls it.

    One parameter at a time, so the whole model is never gathered at once.
    """
    trainable = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                full = full_tensor(p)
                if main:
                    trainable[name] = full.cpu()
    return trainable if main else None


def gather_zero_state(module: nn.Module, names: set[str] | None, main: bool) -> dict[str, torch.Tensor] | None:
    """Full tensors of a DeepSpeed module's state dict (only ``names`` if given) on the main process.

    ZeRO-3 partitions every parameter (``ds_id``); each is gathered for a moment, on every process (a
    collective), and copied out on the main one. ZeRO-2 parameters are whole on every process already.
    """
    import deepspeed

    params = dict(module.named_parameters(remove_duplicate=False))
    out = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if names is not None and name not in names:
            continue
        p = params.get(name)
        if p is not None and hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p]):
                if main:
                    out[name] = p.detach().cpu().clone()
        elif main:
            out[name] = tensor.detach().cpu()
    return out if main else None


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
            mod.register_buffer(leaf, full_tensor(buf).detach().cpu().clone(), persistent=False)
    if getattr(model.causal_lm.config, "tie_word_embeddings", False):
        model.causal_lm.tie_weights()
    return model
