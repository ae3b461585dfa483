"""Names, shapes and configs of the released mPLUG-Owl checkpoints, mapped to owl's and back.

The reference (``MplugOwlForConditionalGeneration``) stores::

    vision_model.embeddings.{cls_token (1,1,C), patch_embed.weight, position_embedding (1,T,C), pre_layernorm.*}
    vision_model.encoder.layers.N.{input_layernorm, self_attn.query_key_value, self_attn.dense, mlp.fc1, mlp.fc2,
                                   post_attention_layernorm}.*
    vision_model.post_layernorm.*
    query_tokens (1,Q,H)
    abstractor.encoder.layers.N.crossattention.{norm1, normk, attention.{query,key,value},
                                                output.{out_proj, norm2, mlp.{w1,w2,w3,ffn_ln}}}.*
    abstractor.{visual_fc.*, vit_eos (1,1,D)}
    language_model.*                       (the transformers causal LM's own names)

owl keeps transformers' CLIP (separate q/k/v, ``class_embedding`` (C,), ``position_embedding.weight`` (T,C)) and its
own abstractor names. Every tensor maps one to one except the fused ``query_key_value``, which splits into three
(per-head interleaved rows, see :mod:`owl.convert.qkv`), and the LLM's rotary ``inv_freq`` buffers that old
checkpoints carry: transformers recomputes them from the config, so they are dropped.

These functions work one tensor at a time so that a 7B checkpoint converts shard by shard.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from owl.config import CLIP_MEAN, CLIP_STD, AbstractorConfig, LLMConfig, OwlConfig, ProcessorConfig, VisionConfig
from owl.errors import CheckpointError

# The reference's built-in generation settings (MplugOwlForConditionalGeneration.__init__): they apply when a
# checkpoint ships no generation_config.json. max_length counts the prompt, as in transformers.
REFERENCE_GENERATION = {
    "max_length": 512,
    "do_sample": True,
    "top_k": 3,
    "pad_token_id": 0,
    "unk_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

_OWL_VISION = "vision.model."
_REF_VISION = "vision_model."
_VISION_LAYER = {  # reference name inside encoder.layers.N -> owl name
    "input_layernorm": "layer_norm1",
    "post_attention_layernorm": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_ABS_LAYER = {  # reference name inside abstractor.encoder.layers.N.crossattention -> owl name inside layers.N
    "norm1": "norm1",
    "normk": "normk",
    "attention.query": "query",
    "attention.key": "key",
    "attention.value": "value",
    "output.out_proj": "out_proj",
    "output.norm2": "norm2",
    "output.mlp.w1": "mlp.w1",
    "output.mlp.w2": "mlp.w2",
    "output.mlp.w3": "mlp.w3",
    "output.mlp.ffn_ln": "mlp.ffn_ln",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_RE_VLAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_RE_ALAYER = re.compile(r"^abstractor\.encoder\.layers\.(\d+)\.crossattention\.(.+)\.(weight|bias)$")
_RE_OWL_VLAYER = re.compile(r"^vision\.model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_RE_OWL_ALAYER = re.compile(r"^abstractor\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def is_dropped(ref_name: str) -> bool:
    """Reference tensors owl does not keep (rotary caches that transformers recomputes)."""
    return ref_name.endswith("rotary_emb.inv_freq")


# ----------------------------------------------------------------------------- reference -> owl


def to_owl(name: str, tensor: torch.Tensor, vision_heads: int) -> dict[str, torch.Tensor] | None:
    """One reference tensor -> owl tensor(s), or None if the name is not a reference name."""
    emb = "vision_model.embeddings."
    if name == emb + "cls_token":
        return {_OWL_VISION + "embeddings.class_embedding": tensor.reshape(-1)}
    if name == emb + "patch_embed.weight":
        return {_OWL_VISION + "embeddings.patch_embedding.weight": tensor}
    if name == emb + "position_embedding":
        return {_OWL_VISION + "embeddings.position_embedding.weight": tensor.reshape(tensor.shape[-2:])}
    if name.startswith(emb + "pre_layernorm."):
        return {_OWL_VISION + "pre_layrnorm." + name.rsplit(".", 1)[1]: tensor}
    if name.startswith("vision_model.post_layernorm."):
        return {_OWL_VISION + "post_layernorm." + name.rsplit(".", 1)[1]: tensor}
    m = _RE_VLAYER.match(name)
    if m:
        layer, part, kind = m.groups()
        prefix = f"{_OWL_VISION}encoder.layers.{layer}."
        if part == "self_attn.query_key_value":
            return {f"{prefix}self_attn.{p}.{kind}": t for p, t in zip(_QKV, _split_qkv(tensor, vision_heads))}
        if part == "self_attn.dense":
            return {f"{prefix}self_attn.out_proj.{kind}": tensor}
        if part in _VISION_LAYER:
            return {f"{prefix}{_VISION_LAYER[part]}.{kind}": tensor}
        return None
    if name == "query_tokens":
        return {"abstractor.query_tokens": tensor}
    m = _RE_ALAYER.match(name)
    if m:
        layer, part, kind = m.groups()
        return {f"abstractor.layers.{layer}.{_ABS_LAYER[part]}.{kind}": tensor} if part in _ABS_LAYER else None
    if name.startswith("abstractor.visual_fc.") or name == "abstractor.vit_eos":
        return {name: tensor}
    if name.startswith("language_model."):
        return {"llm." + name[len("language_model.") :]: tensor}
    return None


def _split_qkv(t: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Fused rows viewed as (heads, 3, head_dim, ...): index 1 picks q, k or v. Works for weight and bias alike."""
    width = t.shape[0] // 3
    v = t.reshape(heads, 3, width // heads, *t.shape[1:])
    return [v[:, i].reshape(width, *t.shape[1:]).contiguous() for i in range(3)]


def _fuse_qkv(parts: list[torch.Tensor], heads: int) -> torch.Tensor:
    width = parts[0].shape[0]
    stacked = torch.stack([p.reshape(heads, width // heads, *p.shape[1:]) for p in parts], dim=1)
    return stacked.reshape(3 * width, *parts[0].shape[1:]).contiguous()


# ----------------------------------------------------------------------------- owl -> reference


def to_reference(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | tuple[str, int, torch.Tensor] | None:
    """One owl tensor -> ``(reference name, tensor)``; q/k/v give ``(fused name, index, part)`` to be fused by the
    caller once all three are there; None if owl has no reference counterpart for it."""
    emb = _OWL_VISION + "embeddings."
    if name == emb + "class_embedding":
        return "vision_model.embeddings.cls_token", tensor.reshape(1, 1, -1)
    if name == emb + "patch_embedding.weight":
        return "vision_model.embeddings.patch_embed.weight", tensor
    if name == emb + "position_embedding.weight":
        return "vision_model.embeddings.position_embedding", tensor.unsqueeze(0)
    if name.startswith(_OWL_VISION + "pre_layrnorm."):
        return "vision_model.embeddings.pre_layernorm." + name.rsplit(".", 1)[1], tensor
    if name.startswith(_OWL_VISION + "post_layernorm."):
        return "vision_model.post_layernorm." + name.rsplit(".", 1)[1], tensor
    m = _RE_OWL_VLAYER.match(name)
    if m:
        layer, part, kind = m.groups()
        prefix = f"vision_model.encoder.layers.{layer}."
        if part.startswith("self_attn.") and part.split(".", 1)[1] in _QKV:
            return f"{prefix}self_attn.query_key_value.{kind}", _QKV.index(part.split(".", 1)[1]), tensor
        if part == "self_attn.out_proj":
            return f"{prefix}self_attn.dense.{kind}", tensor
        back = {v: k for k, v in _VISION_LAYER.items()}
        return (f"{prefix}{back[part]}.{kind}", tensor) if part in back else None
    if name == "abstractor.query_tokens":
        return "query_tokens", tensor
    m = _RE_OWL_ALAYER.match(name)
    if m:
        layer, part, kind = m.groups()
        back = {v: k for k, v in _ABS_LAYER.items()}
        if part not in back:
            return None
        return f"abstractor.encoder.layers.{layer}.crossattention.{back[part]}.{kind}", tensor
    if name.startswith("abstractor.visual_fc.") or name == "abstractor.vit_eos":
        return name, tensor
    if name.startswith("llm."):
        return "language_model." + name[len("llm.") :], tensor
    return None


def fuse_qkv_parts(parts: dict[int, torch.Tensor], heads: int) -> torch.Tensor:
    """The three q/k/v tensors (by index) -> the reference's fused, per-head interleaved tensor."""
    return _fuse_qkv([parts[i] for i in range(3)], heads)


# ----------------------------------------------------------------------------- configs


def owl_config_from_reference(ref: dict[str, Any], abstractor_ffn: int | None) -> OwlConfig:
    """The reference's config.json (model_type ``mplug-owl``) -> an OwlConfig.

    ``abstractor_ffn`` is the abstractor MLP width read from the weights: the released config says 4096 where the
    weights have 2816, and the weights are what the model computes with.
    """
    if ref.get("model_type") != "mplug-owl":
        raise CheckpointError(
            f"config.json has model_type {ref.get('model_type')!r}, not 'mplug-owl': not a released mPLUG-Owl "
            "checkpoint (for an owl model directory use owl chat directly)"
        )
    v = ref.get("vision_config", {})
    a = ref.get("visual_abstractor_config", {})
    t = dict(ref.get("text_config") or {})
    if "model_type" not in t:
        t["model_type"] = "llama"  # the reference's own default text model
    from owl.models.builders import _VOLATILE_KEYS

    for key in _VOLATILE_KEYS:
        t.pop(key, None)
    vision = VisionConfig(
        backbone="clip",
        image_size=int(v.get("image_size", 224)),
        hidden_size=int(v.get("hidden_size", 1024)),
        num_layers=int(v.get("num_hidden_layers", 24)),
        num_heads=int(v.get("num_attention_heads", 16)),
        intermediate_size=int(v.get("intermediate_size", 4096)),
        patch_size=int(v.get("patch_size", 14)),
        layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)),
        hidden_act=str(v.get("hidden_act", "quick_gelu")),
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    hidden = int(a.get("hidden_size", 1024))
    enc = int(a.get("encoder_hidden_size", hidden))
    if not (hidden == enc == vision.hidden_size):
        raise CheckpointError(
            f"abstractor width {hidden} / encoder width {enc} / vision width {vision.hidden_size} differ; the "
            "reference layout needs them equal"
        )
    abstractor = AbstractorConfig(
        hidden_size=hidden,
        num_layers=int(a.get("num_hidden_layers", 6)),
        num_heads=int(a.get("num_attention_heads", 16)),
        intermediate_size=int(abstractor_ffn or a.get("intermediate_size", 2816)),
        num_queries=int(ref.get("num_query_tokens", 64)),
        attention_dropout=float(a.get("attention_probs_dropout_prob", 0.1)),
        layer_norm_eps=1e-5,  # norm1 / normk / norm2 are built with torch's default eps in the reference
        ffn_layer_norm_eps=float(a.get("layer_norm_eps", 1e-6)),
    )
    llm = LLMConfig(t, normalize_visual_embeds=t["model_type"] != "bloom")
    processor = ProcessorConfig(template="mplug-owl-v1", max_length=2048, compat="mplug-owl")
    return OwlConfig(vision=vision, abstractor=abstractor, llm=llm, processor=processor)


def reference_config_from_owl(cfg: OwlConfig) -> dict[str, Any]:
    """An OwlConfig -> the reference's config.json; raises if the model has no reference layout."""
    v, a = cfg.vision, cfg.abstractor
    if v.backbone != "clip":
        raise CheckpointError(
            f"vision.backbone={v.backbone!r}: the reference code only has a CLIP ViT; only owl models with a CLIP "
            "vision tower convert to the mPLUG-Owl layout"
        )
    if a.hidden_size != v.hidden_size:
        raise CheckpointError(
            f"abstractor.hidden_size={a.hidden_size} differs from the vision width {v.hidden_size}; the reference "
            "abstractor has no input projection, so this model has no mPLUG-Owl layout"
        )
    if a.output_norm:
        raise CheckpointError(
            "abstractor.output_norm=true: the reference abstractor has no output norm, so this model has no "
            "mPLUG-Owl layout (train with output_norm false to convert)"
        )
    if a.locality:
        raise CheckpointError(
            f"abstractor.locality={a.locality}: the reference abstractor has no locality prior, so this model would "
            "attend differently there (train with locality 0 to convert)"
        )
    if a.competition:
        raise CheckpointError(
            "abstractor.competition=true: the reference queries attend with a softmax over the image and each "
            "other, not compete for cells, so this model would read images differently there (train without it)"
        )
    if a.layer_norm_eps != 1e-5:
        raise CheckpointError(f"abstractor.layer_norm_eps={a.layer_norm_eps}: the reference hard-codes 1e-5")
    text = dict(cfg.llm.hf_config)
    return {
        "architectures": ["MplugOwlForConditionalGeneration"],
        "model_type": "mplug-owl",
        "num_query_tokens": a.num_queries,
        "vision_config": {
            "model_type": "mplug_owl_vision_model",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads,
            "num_channels": 3,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "hidden_act": v.hidden_act,
            "layer_norm_eps": v.layer_norm_eps,
            "attention_dropout": 0.0,
        },
        "visual_abstractor_config": {
            "model_type": "mplug_owl_visual_abstract",
            "hidden_size": a.hidden_size,
            "num_hidden_layers": a.num_layers,
            "num_attention_heads": a.num_heads,
            "intermediate_size": a.intermediate_size,
            "attention_probs_dropout_prob": a.attention_dropout,
            "layer_norm_eps": a.ffn_layer_norm_eps,
            "encoder_hidden_size": v.hidden_size,
        },
        "text_config": text,
    }


def abstractor_ffn_name() -> str:
    """The reference tensor whose shape gives the abstractor MLP width."""
    return "abstractor.encoder.layers.0.crossattention.output.mlp.w1.weight"
