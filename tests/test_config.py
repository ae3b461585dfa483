"""Configs: presets, validation messages, file round trips."""

from __future__ import annotations

import pytest

from owl.config import ConfigError, OwlConfig, VisionConfig, preset


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_load_round_trip(tmp_path, suffix):
    cfg = preset("mplug-owl-llama-7b")
    cfg.save(tmp_path / f"c{suffix}")
    assert OwlConfig.load(tmp_path / f"c{suffix}") == cfg


def test_reference_sizes_in_preset():
    cfg = preset("mplug-owl-llama-7b")
    v, a, llm = cfg.vision, cfg.abstractor, cfg.llm.hf_config
    assert (v.image_size, v.patch_size, v.hidden_size, v.num_layers, v.layer_norm_eps, v.hidden_act) == (
        224,
        14,
        1024,
        24,
        1e-6,
        "quick_gelu",
    )
    assert (a.num_layers, a.hidden_size, a.num_heads, a.intermediate_size, a.num_queries) == (6, 1024, 16, 2816, 64)
    assert cfg.num_visual_tokens == 65 and llm["hidden_size"] == 4096 and llm["num_hidden_layers"] == 32


def test_unknown_key_suggests_the_closest():
    d = preset("tiny").to_dict()
    d["abstractor"]["num_querys"] = 3
    msg = "unknown config key abstractor.num_querys; did you mean abstractor.num_queries"
    with pytest.raises(ConfigError, match=msg):
        OwlConfig.from_dict(d)
    with pytest.raises(ConfigError, match="unknown config key visoin; did you mean vision"):
        OwlConfig.from_dict({"visoin": {}})


def test_validation_names_value_and_fix():
    with pytest.raises(ConfigError, match=r"vision.backbone='vit' is unknown; use one of clip, siglip, efficientnet"):
        VisionConfig(backbone="vit")
    with pytest.raises(ConfigError, match="not a multiple of vision.patch_size"):
        VisionConfig(image_size=225)
    with pytest.raises(ConfigError, match="unknown preset 'huge'; known presets"):
        preset("huge")
