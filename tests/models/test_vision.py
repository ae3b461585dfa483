"""The vision tower against transformers' CLIP and against an independent reference-layout ViT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from owl.config import VisionConfig
from owl.convert.qkv import fuse_qkv, split_fused_qkv
from owl.models.vision import ClipVisionTower, build_vision, load_vision

CFG = VisionConfig(
    backbone="clip", image_size=28, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, patch_size=7
)


def reference_vit(p: dict, x: torch.Tensor, heads: int, eps: float = 1e-6) -> torch.Tensor:
    """mPLUG-Owl's ViT written from its description: fused per-head-interleaved qkv, QuickGELU, post-LN on all."""
    n = x.shape[0]
    patches = F.conv2d(x, p["patch"], stride=p["patch"].shape[-1])  # (N, C, g, g), no bias
    h = torch.cat([p["cls"].expand(n, 1, -1), patches.flatten(2).transpose(1, 2)], dim=1) + p["pos"]
    h = F.layer_norm(h, h.shape[-1:], p["pre_w"], p["pre_b"], eps)
    width = h.shape[-1]
    hd = width // heads
    for lp in p["layers"]:
        y = F.layer_norm(h, (width,), lp["ln1_w"], lp["ln1_b"], eps)
        qkv = (y @ lp["qkv_w"].T + lp["qkv_b"]).view(n, -1, heads, 3, hd)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # (N, heads, T, hd)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        h = h + att.transpose(1, 2).reshape(n, -1, width) @ lp["o_w"].T + lp["o_b"]
        y = F.layer_norm(h, (width,), lp["ln2_w"], lp["ln2_b"], eps)
        y = y @ lp["fc1_w"].T + lp["fc1_b"]
        y = y * torch.sigmoid(1.702 * y)  # QuickGELU
        h = h + y @ lp["fc2_w"].T + lp["fc2_b"]
    return F.layer_norm(h, (width,), p["post_w"], p["post_b"], eps)


def random_reference_params(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, m, tokens = CFG.hidden_size, CFG.intermediate_size, (CFG.image_size // CFG.patch_size) ** 2 + 1

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    p = {
        "patch": r(c, 3, CFG.patch_size, CFG.patch_size),
        "cls": r(1, 1, c),
        "pos": r(1, tokens, c),
        "pre_w": 1 + r(c),
        "pre_b": r(c),
        "post_w": 1 + r(c),
        "post_b": r(c),
        "layers": [],
    }
    for _ in range(CFG.num_layers):
        p["layers"].append(
            {
                "ln1_w": 1 + r(c),
                "ln1_b": r(c),
                "qkv_w": r(3 * c, c),
                "qkv_b": r(3 * c),
                "o_w": r(c, c),
                "o_b": r(c),
                "ln2_w": 1 + r(c),
                "ln2_b": r(c),
                "fc1_w": r(m, c),
                "fc1_b": r(m),
                "fc2_w": r(c, m),
                "fc2_b": r(c),
            }
        )
    return p


def load_reference_into(tower: ClipVisionTower, p: dict) -> None:
    sd = {
        "embeddings.class_embedding": p["cls"].view(-1),
        "embeddings.patch_embedding.weight": p["patch"],
        "embeddings.position_embedding.weight": p["pos"][0],
        "pre_layrnorm.weight": p["pre_w"],
        "pre_layrnorm.bias": p["pre_b"],
        "post_layernorm.weight": p["post_w"],
        "post_layernorm.bias": p["post_b"],
    }
    for i, lp in enumerate(p["layers"]):
        pre = f"encoder.layers.{i}."
        split = split_fused_qkv(lp["qkv_w"], lp["qkv_b"], CFG.num_heads)
        for name, (w, b) in zip(("q_proj", "k_proj", "v_proj"), split):
            sd[pre + f"self_attn.{name}.weight"], sd[pre + f"self_attn.{name}.bias"] = w, b
        sd |= {
            pre + "self_attn.out_proj.weight": lp["o_w"],
            pre + "self_attn.out_proj.bias": lp["o_b"],
            pre + "layer_norm1.weight": lp["ln1_w"],
            pre + "layer_norm1.bias": lp["ln1_b"],
            pre + "layer_norm2.weight": lp["ln2_w"],
            pre + "layer_norm2.bias": lp["ln2_b"],
            pre + "mlp.fc1.weight": lp["fc1_w"],
            pre + "mlp.fc1.bias": lp["fc1_b"],
            pre + "mlp.fc2.weight": lp["fc2_w"],
            pre + "mlp.fc2.bias": lp["fc2_b"],
        }
    missing, unexpected = tower.model.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k]


def test_matches_reference_layout_vit():
    tower = build_vision(CFG).eval()
    p = random_reference_params()
    load_reference_into(tower, p)
    x = torch.randn(2, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tower(x)
    ref = reference_vit(p, x, CFG.num_heads)
    assert ours.shape == (2, tower.num_tokens, CFG.hidden_size) == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_post_layernorm_on_all_tokens_unlike_hf_pooling():
    torch.manual_seed(0)
    tower = build_vision(CFG).eval()
    hf = CLIPVisionModel(ClipVisionTower.hf_config(CFG)).eval()
    hf.load_state_dict(tower.model.state_dict())
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ours, out = tower(x), hf(pixel_values=x)
    torch.testing.assert_close(ours[:, 0], out.pooler_output)  # class token == HF's pooled output
    torch.testing.assert_close(ours, hf.post_layernorm(out.last_hidden_state))
    assert not torch.allclose(ours[:, 1:], out.last_hidden_state[:, 1:])  # HF leaves patch tokens un-normalised


def test_reference_specifics_in_config():
    tower = build_vision(CFG)
    c = tower.model.config
    assert c.layer_norm_eps == 1e-6 and c.hidden_act == "quick_gelu"
    assert tower.model.embeddings.patch_embedding.bias is None
    assert tower.num_tokens == 17  # 4x4 patches + class token


def test_fused_qkv_round_trip():
    w, b = torch.randn(96, 32), torch.randn(96)
    parts = split_fused_qkv(w, b, 4)
    w2, b2 = fuse_qkv(parts, 4)
    assert torch.equal(w, w2) and torch.equal(b, b2)
    with pytest.raises(ValueError, match="does not fit"):
        split_fused_qkv(torch.randn(96, 30), None, 4)


@pytest.mark.parametrize("full_clip", [False, True])
def test_loads_local_hf_clip_directory(tmp_path, full_clip):
    torch.manual_seed(0)
    hf_cfg = ClipVisionTower.hf_config(CFG)
    if full_clip:
        model = CLIPModel(
            CLIPConfig(
                vision_config=hf_cfg.to_dict(),
                text_config={
                    "hidden_size": 16,
                    "intermediate_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "vocab_size": 50,
                },
            )
        )
        ref = CLIPVisionModel(hf_cfg)
        ref.load_state_dict(
            {k[len("vision_model.") :]: v for k, v in model.state_dict().items() if k.startswith("vision_model.")},
            strict=False,
        )
    else:
        model = ref = CLIPVisionModel(hf_cfg)
    model.save_pretrained(tmp_path)
    tower, new_cfg = load_vision(tmp_path, VisionConfig(backbone="clip"))
    assert new_cfg.hidden_size == 32 and new_cfg.image_size == 28 and new_cfg.patch_size == 7
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(tower.eval()(x), ref.eval().post_layernorm(ref(pixel_values=x).last_hidden_state))


def test_missing_vision_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vision weights not found"):
        load_vision(tmp_path / "nope", CFG)


def test_siglip_tower_shapes():
    tower = build_vision(
        VisionConfig(
            backbone="siglip",
            image_size=28,
            hidden_size=32,
            num_layers=1,
            num_heads=4,
            intermediate_size=64,
            patch_size=7,
        )
    )
    assert tower(torch.randn(2, 3, 28, 28)).shape == (2, 16, 32)
