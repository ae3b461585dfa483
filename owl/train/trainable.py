"""Declarative trainability: per module frozen / full / LoRA, and the optimizer's parameter groups.

Modules: ``vision`` (the tower), ``abstractor`` (its layers and projections),
``queries`` (the learnable query vectors and the end-of-image vector) and
``llm``. LoRA goes through peft: the LLM is wrapped with ``get_peft_model`` (so
its adapter saves as a standard peft directory); the vision tower gets
adapters injected in place and is merged before saving.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from owl.errors import ConfigError
from owl.models.builders import count_parameters
from owl.models.owl import OwlModel
from owl.train.config import MODULES, LoraSpec, OptimConfig, Trainable

QUERY_PARAMS = ("query_tokens", "vit_eos")
NO_DECAY_NAMES = QUERY_PARAMS + ("pos_embed",)


def module_of(name: str) -> str:
    """Which of the four modules a parameter name of ``OwlModel`` belongs to."""
    top, _, rest = name.partition(".")
    if top == "abstractor" and rest in QUERY_PARAMS:
        return "queries"
    return top


def apply_trainable(model: OwlModel, spec: Trainable, lora: LoraSpec) -> OwlModel:
    """Set ``requires_grad`` per module and add LoRA adapters where asked. Returns the same model."""
    from peft import LoraConfig, get_peft_model, inject_adapter_in_model

    if spec.llm == "lora":
        cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
        )
        model.llm = get_peft_model(model.llm, cfg)
    if spec.vision == "lora":
        cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.vision_target_modules),
            bias="none",
        )
        model.vision = inject_adapter_in_model(cfg, model.vision)
    for name, p in model.named_parameters():
        mode = getattr(spec, module_of(name))
        p.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))
    return model


def set_train_modes(model: OwlModel, spec: Trainable) -> None:
    """Train mode where something learns; eval mode (no dropout, fixed BatchNorm stats) for frozen modules."""
    model.train()
    for name in ("vision", "abstractor", "llm"):
        module = getattr(model, name)
        if not any(p.requires_grad for p in module.parameters()):
            module.eval()
    if spec.norm_stats == "frozen":
        for m in model.vision.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def merge_vision_lora(model: OwlModel) -> None:
    """Fold injected LoRA weights into the vision tower (it is saved merged)."""
    from peft.tuners.lora import LoraLayer

    for m in model.vision.modules():
        if isinstance(m, LoraLayer):
            m.merge()


def param_groups(model: OwlModel, optim: OptimConfig) -> list[dict]:
    """AdamW groups per (module, decay): per-module lr; no weight decay on biases, norms and query vectors.

    A module whose ``optim.lr_groups`` lr is 0 is frozen here (``requires_grad`` off): left trainable, backward
    would still compute its gradients, which no optimizer step clears and which would count in gradient clipping.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2 and not any(name.endswith(n) for n in NO_DECAY_NAMES)
        groups[(module_of(name), decay)].append(p)
    out = []
    for (module, decay), params in sorted(groups.items()):
        lr = optim.lr_groups.get(module, optim.lr)
        if lr == 0:
            for p in params:
                p.requires_grad_(False)
            continue
        out.append(
            {
                "params": params,
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": optim.weight_decay if decay else 0.0,
                "name": f"{module}{'' if decay else '.no_decay'}",
            }
        )
    if not out:
        raise ConfigError("nothing to train: every module is frozen (set trainable.<module> to full or lora)")
    return out


def trainable_table(model: OwlModel) -> list[tuple[str, int, int]]:
    """(module, trainable, total) rows for the start-of-run printout, queries split from the abstractor."""
    counts = count_parameters(model, group=module_of)
    empty = {"total": 0, "trainable": 0}
    return [(m, counts.get(m, empty)["trainable"], counts.get(m, empty)["total"]) for m in MODULES]


def enable_activation_checkpointing(model: OwlModel) -> int:
    """Recompute activations in backward instead of storing them (``train.gradient_checkpointing``), for the LLM and
    a transformers vision tower; returns how many parts were switched. Non-reentrant checkpointing, so frozen parts
    and inputs without gradients work; the same loss and gradients as without (tests/train)."""
    kwargs = {"use_reentrant": False}
    parts = [model.causal_lm, getattr(model.vision, "model", None)]
    n = 0
    for part in parts:
        if not getattr(part, "supports_gradient_checkpointing", False):
            continue
        enable = getattr(part, "activation_checkpointing_enable", None)  # transformers >= 5.x; the old name warns
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        n += 1
    return n
