"""The models `owl bench peers` compares: owl, LLaVA (all patches or a pooled grid) and BLIP-2, built alike.

Every builder takes the same LLM config, the same :class:`Setup` (vision tower and connector sizes) and the same
stage, and applies the same trainability (stage 1: vision + connector; stage 2: connector + LoRA on the LLM),
so the timing in :mod:`owl.bench.peers` compares architectures, not configurations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from owl.config import VisionConfig
from owl.constants import IGNORE_INDEX

LORA = {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}

_LLAMA_REST = {"max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu"}
_LLAMA_REST |= {"tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # SmolLM2's


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int) -> dict[str, Any]:
    """A LLaMA config dict (``LLMConfig.hf_config``) of this shape."""
    shape = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads}
    shape |= {"num_key_value_heads": kv_heads, "intermediate_size": inter, "vocab_size": vocab}
    return {"model_type": "llama", **shape, **_LLAMA_REST}


# smollm2: SmolLM2-135M's shape (134.5M parameters). tiny: a ~16.6M LLaMA (8.4M in its blocks, 8.2M in the tied
# 32000-token embedding, LLaMA's vocabulary size) whose steps take a fraction of a second.
LLMS: dict[str, dict[str, Any]] = {
    "smollm2": _llama(576, 30, 9, 3, 1536, 49152),
    "tiny": _llama(256, 8, 4, 4, 1024, 32000),
}


@dataclass
class Setup:
    """Vision tower and connector sizes, one set for every model (connectors at the vision width, each with its
    own paper's depth: 6 abstractor layers, 12 Q-Former layers with cross-attention every 2nd)."""

    image_size: int = 224
    patch_size: int = 14
    vision_hidden: int = 384  # a ViT-S-wide CLIP tower, 4 layers: big enough to matter, small enough for a CPU
    vision_layers: int = 4
    vision_heads: int = 6
    vision_mlp: int = 1536
    owl_queries: int = 64  # the paper's
    abstractor_layers: int = 6
    abstractor_mlp: int = 1056  # 2.75 x width, owl's default ratio (2816 / 1024)
    blip2_queries: int = 32  # BLIP-2's
    qformer_layers: int = 12
    qformer_mlp: int = 1536  # 4 x width, BERT's ratio
    pooled_side: int = 8  # llava-64: the patch grid pooled to 8 x 8
    text_len: int = 48

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


# ----------------------------------------------------------------------------------------------- models


def _trainability(stage: int) -> dict[str, str]:
    """The paradigm's stages, for every model alike: 1 = tower + connector; 2 = connector + LoRA on the LLM."""
    first = {"vision": "full", "connector": "full", "llm": "frozen"}
    return first if stage == 1 else {"vision": "frozen", "connector": "full", "llm": "lora"}


def _apply(groups: dict[str, list[tuple[str, nn.Parameter]]], stage: int, lora_scope: nn.Module | None) -> None:
    """requires_grad per group for ``stage``; stage 2 first injects LoRA into ``lora_scope`` (the peer's LM)."""
    if stage == 2 and lora_scope is not None:
        from peft import LoraConfig, inject_adapter_in_model

        same = {"r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"]}  # owl's LoraSpec
        inject_adapter_in_model(LoraConfig(**same, target_modules=LORA["target_modules"], bias="none"), lora_scope)
        groups["llm"] = [(f"llm.{n}", p) for n, p in lora_scope.named_parameters()]
    modes = _trainability(stage)
    for group, params in groups.items():
        for name, p in params:
            p.requires_grad_(modes[group] == "full" or (modes[group] == "lora" and "lora_" in name))


def _named(prefix: str, *modules: nn.Module | nn.Parameter) -> list[tuple[str, nn.Parameter]]:
    out: list[tuple[str, nn.Parameter]] = []
    for i, m in enumerate(modules):
        if isinstance(m, nn.Parameter):
            out.append((f"{prefix}.param{i}", m))
        else:
            out += [(f"{prefix}.{n}", p) for n, p in m.named_parameters()]
    return out


def _vision(setup: Setup) -> VisionConfig:
    """owl's CLIP tower config; LLaVA gets ``ClipVisionTower.hf_config`` of it, BLIP-2 the same numbers."""
    size = {"image_size": setup.image_size, "patch_size": setup.patch_size, "hidden_size": setup.vision_hidden}
    size |= {"num_layers": setup.vision_layers, "num_heads": setup.vision_heads, "intermediate_size": setup.vision_mlp}
    return VisionConfig(backbone="clip", **size)  # owl's defaults otherwise: quick_gelu, eps 1e-6, CLIP's norm


def build_owl(llm: dict[str, Any], setup: Setup, stage: int) -> tuple[nn.Module, dict]:
    """OwlModel built by owl's ``build_model`` (the LLM from its HF config dict), trainability by ``apply_trainable``:
    owl's own code paths, so the figures are those of the model owl trains."""
    from owl.config import AbstractorConfig, LLMConfig, OwlConfig
    from owl.models import build_model
    from owl.train.config import LoraSpec, Trainable
    from owl.train.trainable import apply_trainable

    config = OwlConfig(
        vision=_vision(setup),
        abstractor=AbstractorConfig(
            hidden_size=setup.vision_hidden,
            num_layers=setup.abstractor_layers,
            num_heads=setup.vision_heads,
            intermediate_size=setup.abstractor_mlp,
            num_queries=setup.owl_queries,
        ),
        llm=LLMConfig(dict(llm)),
    )
    model, _, _ = build_model(config)
    t = _trainability(stage)
    spec = Trainable(vision=t["vision"], abstractor="full", queries="full", llm=t["llm"])
    apply_trainable(model, spec, LoraSpec(**LORA, vision_target_modules=["q_proj", "v_proj"]))
    groups = {"vision": _named("vision", model.vision), "connector": _named("abstractor", model.abstractor)}
    groups["llm"] = _named("llm", model.llm)
    return model, groups


class PooledProjector(nn.Module):
    """LLaVA's projector after a 2-D adaptive average pool of the (g x g) patch grid to (side x side)."""

    def __init__(self, projector: nn.Module, side: int) -> None:
        super().__init__()
        self.projector = projector
        self.side = side

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, t, c = features.shape  # (N, g*g, C), the class token already dropped
        g = round(t**0.5)
        grid = features.transpose(1, 2).reshape(n, c, g, g)
        pooled = F.adaptive_avg_pool2d(grid, self.side).flatten(2).transpose(1, 2)  # (N, side^2, C)
        return self.projector(pooled)


def _llama_config(llm: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**{k: v for k, v in llm.items() if k != "model_type"})


def build_llava(llm: dict[str, Any], setup: Setup, stage: int, pooled: bool) -> tuple[nn.Module, dict, int]:
    """LLaVA with owl's CLIP config and LLM config; features of the last layer (owl's too), class token dropped."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from owl.models.vision import ClipVisionTower

    tokens = setup.pooled_side**2 if pooled else setup.grid**2
    cfg = LlavaConfig(
        vision_config=ClipVisionTower.hf_config(_vision(setup)),
        text_config=_llama_config(llm),
        image_token_index=llm["vocab_size"] - 1,
        image_seq_length=tokens,
        vision_feature_layer=-1,  # LLaVA-1.5 takes -2; -1 runs the same tower layers as owl and BLIP-2 use
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(cfg)
    inner = model.model
    if pooled:
        inner.multi_modal_projector = PooledProjector(inner.multi_modal_projector, setup.pooled_side)
    groups = {
        "vision": _named("vision", inner.vision_tower),
        "connector": _named("projector", inner.multi_modal_projector),
        "llm": _named("llm", inner.language_model, model.lm_head),
    }
    _apply(groups, stage, inner.language_model)
    return model, groups, tokens


def build_blip2(llm: dict[str, Any], setup: Setup, stage: int) -> tuple[nn.Module, dict, int]:
    """BLIP-2 with a ViT of the same shape as the CLIP tower, a Q-Former of 32 queries, and the same LLM."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig

    from owl.models.vision import ClipVisionTower

    clip = ClipVisionTower.hf_config(_vision(setup))  # the very config owl and LLaVA get, copied field by field
    same = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
    same += ("hidden_act", "layer_norm_eps")
    # initializer_range: BLIP-2's default 1e-10 is meant to be overwritten by loaded weights
    vision = Blip2VisionConfig(**{k: getattr(clip, k) for k in same}, initializer_range=0.02)
    qformer = Blip2QFormerConfig(
        hidden_size=setup.vision_hidden,
        num_hidden_layers=setup.qformer_layers,
        num_attention_heads=setup.vision_heads,
        intermediate_size=setup.qformer_mlp,
        cross_attention_frequency=2,
    )
    cfg = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=_llama_config(llm),
        num_query_tokens=setup.blip2_queries,
        image_token_index=llm["vocab_size"] - 1,
    )
    model = Blip2ForConditionalGeneration(cfg)
    groups = {
        "vision": _named("vision", model.vision_model),
        "connector": _named("qformer", model.query_tokens, model.qformer, model.language_projection),
        "llm": _named("llm", model.language_model),
    }
    _apply(groups, stage, model.language_model)
    return model, groups, setup.blip2_queries


# ----------------------------------------------------------------------------------------------- batches


def shared_batch(llm: dict[str, Any], setup: Setup, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The images and text every model gets: random pixels, random text ids (never special, never the image id)."""
    g = torch.Generator().manual_seed(seed)
    size = setup.image_size
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=g),
        "text": torch.randint(3, llm["vocab_size"] - 1, (batch, setup.text_len), generator=g),
    }


def model_batch(shared: dict[str, torch.Tensor], image_id: int, image_tokens: int) -> dict[str, torch.Tensor]:
    """Image positions first (``image_tokens`` of ``image_id``, no target), then the text, every text id a target."""
    text = shared["text"]
    b = text.shape[0]
    images = torch.full((b, image_tokens), image_id, dtype=torch.long)
    return {
        "input_ids": torch.cat([images, text], dim=1),
        "attention_mask": torch.ones(b, image_tokens + text.shape[1], dtype=torch.long),
        "labels": torch.cat([torch.full_like(images, IGNORE_INDEX), text], dim=1),
        "pixel_values": shared["pixel_values"],
    }
