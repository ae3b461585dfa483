"""Tiny checkpoints in the released mPLUG-Owl layout, and an independent re-computation of its forward pass.

Nothing here imports owl's model code: the vision tower, the abstractor and the splice are written again from the
reference's ``modeling_mplug_owl.py`` as plain tensor maths on the reference's own tensor names (fused per-head
``query_key_value``, ``cls_token`` (1,1,C), ``crossattention.output.*``, ...). Only the LLM is transformers' own
class, as in the reference (``AutoModelForCausalLM.from_config(text_config)``), loaded from the ``language_model.*``
tensors directly. For BLOOM the reference normalises the text embeddings and splices the visual tokens in after
the embedding LayerNorm (its patched ``bloom_forward`` skips the norm for ``inputs_embeds``); so does this.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

VISION = {
    "model_type": "mplug_owl_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_channels": 3,
    "image_size": 28,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-6,
}
ABSTRACTOR_FFN = 88  # the weights' width; the config below says 4096, as the released config.json does
ABSTRACTOR = {
    "model_type": "mplug_owl_visual_abstract",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 4096,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-6,
    "encoder_hidden_size": 32,
}
NUM_QUERIES = 4


def text_config(family: str, vocab_size: int) -> dict:
    if family == "llama":
        return {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-6,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "tie_word_embeddings": False,
            "initializer_range": 0.1,  # logits of O(1), so a 1e-5 agreement means something
        }
    if family == "bloom":
        return {
            "model_type": "bloom",
            "vocab_size": vocab_size,
            "hidden_size": 48,
            "n_layer": 2,
            "n_head": 4,
            "layer_norm_epsilon": 1e-5,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "tie_word_embeddings": True,
            "initializer_range": 0.1,
        }
    raise ValueError(family)


def reference_config(family: str, vocab_size: int) -> dict:
    return {
        "architectures": ["MplugOwlForConditionalGeneration"],
        "model_type": "mplug-owl",
        "num_query_tokens": NUM_QUERIES,
        "vision_config": dict(VISION),
        "visual_abstractor_config": dict(ABSTRACTOR),
        "text_config": text_config(family, vocab_size),
        "torch_dtype": "float32",
        "transformers_version": "4.28.1",
    }


def _llm(cfg: dict) -> nn.Module:
    t = dict(cfg["text_config"])
    hf = AutoConfig.for_model(t.pop("model_type"), **t)
    return AutoModelForCausalLM.from_config(hf, dtype=torch.float32)


def random_state(
    cfg: dict, seed: int = 0, old_rotary: bool = True, ffn: int = ABSTRACTOR_FFN, llm: bool = True
) -> dict[str, torch.Tensor]:
    """Random weights under the reference's names (scaled so activations stay O(1)); LLaMA gets the rotary
    ``inv_freq`` buffers old checkpoints carry, BLOOM its tied LM head stored as a copy. ``ffn``: the abstractor
    MLP width of the weights; ``llm=False`` leaves the LLM out (a caller that makes 7B-sized ones itself)."""
    g = torch.Generator().manual_seed(seed)
    v, a = cfg["vision_config"], cfg["visual_abstractor_config"]
    c, h = v["hidden_size"], a["hidden_size"]
    n_tok = (v["image_size"] // v["patch_size"]) ** 2 + 1
    d = cfg["text_config"]["hidden_size"]

    def r(*shape: int, scale: float | None = None) -> torch.Tensor:
        s = scale if scale is not None else (shape[-1] ** -0.5 if len(shape) > 1 else 0.05)
        return torch.randn(*shape, generator=g) * s

    def ln(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {prefix + ".weight": 1 + r(width, scale=0.1), prefix + ".bias": r(width, scale=0.05)}

    def lin(prefix: str, out: int, inp: int) -> dict[str, torch.Tensor]:
        return {prefix + ".weight": r(out, inp), prefix + ".bias": r(out, scale=0.02)}

    s: dict[str, torch.Tensor] = {
        "vision_model.embeddings.cls_token": r(1, 1, c, scale=0.5),
        "vision_model.embeddings.patch_embed.weight": r(c, 3, v["patch_size"], v["patch_size"], scale=0.05),
        "vision_model.embeddings.position_embedding": r(1, n_tok, c, scale=0.5),
        **ln("vision_model.embeddings.pre_layernorm", c),
        **ln("vision_model.post_layernorm", c),
        "query_tokens": r(1, cfg["num_query_tokens"], h, scale=1.0),
        **lin("abstractor.visual_fc", d, h),
        "abstractor.vit_eos": r(1, 1, d, scale=0.5),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        s |= ln(p + "input_layernorm", c) | ln(p + "post_attention_layernorm", c)
        s |= lin(p + "self_attn.query_key_value", 3 * c, c) | lin(p + "self_attn.dense", c, c)
        s |= lin(p + "mlp.fc1", v["intermediate_size"], c) | lin(p + "mlp.fc2", c, v["intermediate_size"])
    for i in range(a["num_hidden_layers"]):
        p = f"abstractor.encoder.layers.{i}.crossattention."
        s |= ln(p + "norm1", h) | ln(p + "normk", h) | ln(p + "output.norm2", h)
        for name in ("query", "key", "value"):
            s |= lin(p + "attention." + name, h, h)
        s |= lin(p + "output.out_proj", h, h)
        s |= lin(p + "output.mlp.w1", ffn, h) | lin(p + "output.mlp.w3", ffn, h)
        s |= lin(p + "output.mlp.w2", h, ffn) | ln(p + "output.mlp.ffn_ln", ffn)
    if not llm:
        return s
    torch.manual_seed(seed)
    llm = _llm(cfg)
    for k, t in llm.state_dict().items():
        s["language_model." + k] = t.clone()
    if cfg["text_config"]["model_type"] == "llama" and old_rotary:
        hd = d // cfg["text_config"]["num_attention_heads"]
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        for i in range(cfg["text_config"]["num_hidden_layers"]):
            s[f"language_model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    return s


def write_reference_dir(
    path: Path, cfg: dict, state: dict[str, torch.Tensor], layout: str, tokenizer_files: dict[str, bytes]
) -> Path:
    """``layout``: ``bin`` (one pytorch_model.bin), ``bin-sharded`` or ``safetensors-sharded`` (3 shards + index)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    for name, data in tokenizer_files.items():
        (path / name).write_bytes(data)
    if layout == "bin":
        torch.save(state, path / "pytorch_model.bin")
        return path
    names = list(state)
    chunks = [names[i::3] for i in range(3)]  # interleaved: q/k/v weight and bias may land in different shards
    ext = "bin" if layout == "bin-sharded" else "safetensors"
    stem = "pytorch_model" if ext == "bin" else "model"
    weight_map = {}
    for i, chunk in enumerate(chunks):
        fname = f"{stem}-{i + 1:05d}-of-00003.{ext}"
        part = {k: state[k].contiguous() for k in chunk}
        if ext == "bin":
            torch.save(part, path / fname)
        else:
            save_file(part, str(path / fname))
        weight_map |= {k: fname for k in chunk}
    (path / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


# ----------------------------------------------------------------------------- the forward pass


def _ln(x: torch.Tensor, s: dict, prefix: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], s[prefix + ".weight"], s[prefix + ".bias"], eps)


def _lin(x: torch.Tensor, s: dict, prefix: str) -> torch.Tensor:
    return x @ s[prefix + ".weight"].T + s[prefix + ".bias"]


def vision_forward(cfg: dict, s: dict, pixels: torch.Tensor) -> torch.Tensor:
    v = cfg["vision_config"]
    eps, heads = v["layer_norm_eps"], v["num_attention_heads"]
    x = F.conv2d(pixels, s["vision_model.embeddings.patch_embed.weight"], stride=v["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    n, _, c = x.shape
    x = torch.cat([s["vision_model.embeddings.cls_token"].expand(n, 1, c), x], dim=1)
    x = x + s["vision_model.embeddings.position_embedding"][:, : x.shape[1]]
    x = _ln(x, s, "vision_model.embeddings.pre_layernorm", eps)
    t = x.shape[1]
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = _ln(x, s, p + "input_layernorm", eps)
        qkv = _lin(h, s, p + "self_attn.query_key_value").reshape(n, t, heads, 3, c // heads).permute(3, 0, 2, 1, 4)
        scores = (qkv[0] @ qkv[1].transpose(-1, -2)) * (c // heads) ** -0.5
        ctx = (scores.softmax(-1) @ qkv[2]).permute(0, 2, 1, 3).reshape(n, t, c)
        x = x + _lin(ctx, s, p + "self_attn.dense")
        h = _lin(_ln(x, s, p + "post_attention_layernorm", eps), s, p + "mlp.fc1")
        x = x + _lin(h * torch.sigmoid(1.702 * h), s, p + "mlp.fc2")
    return _ln(x, s, "vision_model.post_layernorm", eps)


def abstractor_forward(cfg: dict, s: dict, image: torch.Tensor) -> torch.Tensor:
    a = cfg["visual_abstractor_config"]
    heads, ffn_eps = a["num_attention_heads"], a["layer_norm_eps"]
    n = image.shape[0]
    x = s["query_tokens"].expand(n, -1, -1)
    for i in range(a["num_hidden_layers"]):
        p = f"abstractor.encoder.layers.{i}.crossattention."
        hs = _ln(x, s, p + "norm1", 1e-5)
        kv = torch.cat([hs, _ln(image, s, p + "normk", 1e-5)], dim=1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], heads, -1).permute(0, 2, 1, 3)

        q = split(_lin(hs, s, p + "attention.query"))
        k, v = split(_lin(kv, s, p + "attention.key")), split(_lin(kv, s, p + "attention.value"))
        probs = ((q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)).softmax(-1)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(n, hs.shape[1], -1)
        x = hs + _lin(ctx, s, p + "output.out_proj")
        h = _ln(x, s, p + "output.norm2", 1e-5)
        m = F.silu(_lin(h, s, p + "output.mlp.w1")) * _lin(h, s, p + "output.mlp.w3")
        x = x + _lin(_ln(m, s, p + "output.mlp.ffn_ln", ffn_eps), s, p + "output.mlp.w2")
    out = _lin(x, s, "abstractor.visual_fc")
    return torch.cat([out, s["abstractor.vit_eos"].expand(n, 1, -1)], dim=1)


def media_starts(ids: list[int]) -> list[int]:
    """Where each run of negative ids begins (the reference's get_media_indices)."""
    return [i for i, t in enumerate(ids) if t < 0 and (i == 0 or ids[i - 1] != t)]


@torch.no_grad()
def reference_logits(
    cfg: dict,
    s: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    num_images: list[int],
) -> torch.Tensor:
    """The reference's logits for right-padded ``input_ids`` holding -1 runs of 65 (here Q+1) image positions."""
    llm = _llm(cfg).eval()
    own = {k[len("language_model.") :]: v for k, v in s.items() if k.startswith("language_model.")}
    own = {k: v for k, v in own.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = llm.load_state_dict(own, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    llm.tie_weights()
    ids = input_ids.clone()
    ids[ids < 0] = 1
    embeds = llm.get_input_embeddings()(ids)
    body = getattr(llm, "transformer", None)
    if body is not None and hasattr(body, "word_embeddings_layernorm"):
        embeds = body.word_embeddings_layernorm(embeds)  # text only; the visual tokens are spliced in after it
        body.word_embeddings_layernorm = nn.Identity()
    if pixel_values is not None:
        visual = abstractor_forward(cfg, s, vision_forward(cfg, s, pixel_values))
        img = 0
        embeds = embeds.clone()
        for b in range(ids.shape[0]):
            for j, start in enumerate(media_starts(input_ids[b].tolist())):
                embeds[b, start : start + visual.shape[1]] = visual[img + j]
            img += num_images[b]
    return llm(inputs_embeds=embeds, attention_mask=attention_mask).logits
