"""`owl bench train`: the analytic FLOPs agree with torch's FlopCounterMode; the command writes sane figures.

FlopCounterMode is the reference for the count (it sees every matmul, conv and attention product that really
ran, forward and backward). Two things keep it honest here: attention runs on the math backend (the fused CPU
kernel, ``_scaled_dot_product_flash_attention_for_cpu``, has no FLOP formula, so it would count no attention),
and convolution backward gets a corrected formula (torch's ignores ``groups`` in the weight gradient, counting a
depthwise conv's ``dW`` C times over). What remains between the two counts, all under 1% on these models: the
analytic count charges a CNN's stem an input gradient the pixels do not need, and leaves out small matmuls that
are not the model's layers (the rotary embedding's frequency outer product).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from owl.bench.flops import step_flops
from owl.bench.train import resolve_recipe, run_bench_train
from owl.config import OwlConfig, preset
from owl.configtools import deep_merge
from owl.conversation import Message, Sample
from owl.errors import ConfigError
from owl.models import build_model
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from owl.train.config import LoraSpec, Trainable
from owl.train.trainable import apply_trainable, set_train_modes
from tests.helpers import random_image, run_cli

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = Trainable(vision="full", abstractor="full", queries="full", llm="frozen")
STAGE2 = Trainable(vision="frozen", abstractor="full", queries="full", llm="lora")
EFFNET = {"vision": {"backbone": "efficientnet", "image_size": 64}}
GPT2 = {
    "llm": {
        "hf_config": {
            "model_type": "gpt2",
            "vocab_size": 300,
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 512,
            "eos_token_id": 2,
            "bos_token_id": 1,
        }
    }
}


def _conv_backward(grad_out_shape, x_shape, w_shape, *args, **kwargs):
    """dX and dW of a convolution each cost one forward (torch's formula forgets ``groups`` in dW)."""
    output_mask = args[7]
    return conv_flop_count(x_shape, w_shape, grad_out_shape) * (int(output_mask[0]) + int(output_mask[1]))


def _model(overrides: dict, trainable: Trainable, lora: LoraSpec):
    torch.manual_seed(0)
    config = OwlConfig.from_dict(deep_merge(preset("tiny").to_dict(), overrides))
    model, config, _ = build_model(config)
    apply_trainable(model, trainable, lora)
    set_train_modes(model, trainable)
    return model, OwlProcessor.from_config(config, byte_tokenizer())


def _batch(processor: OwlProcessor, images: bool) -> dict:
    samples = []
    for i in range(3):  # different lengths: padding, and targets at different positions
        if images:
            user, imgs = "<image>\nWhat colour is it? " + "word " * (7 * i), [random_image(i)]
        else:
            user, imgs = f"Tell me something, number {i}." + " x" * (5 * i), []
        samples.append(Sample([Message("user", user), Message("assistant", "Red and blue. " * (i + 1))], imgs))
    return processor(samples)


def _counted(model, batch) -> tuple[dict[str, float], float]:
    """FlopCounterMode's forward FLOPs per part, and its forward + backward total."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward}
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            out = model(**batch, return_logits=False)
        with FlopCounterMode(display=False, custom_mapping=mapping) as bwd:
            out.loss.backward()
    per_module = {k: sum(v.values()) for k, v in fwd.get_flop_counts().items()}
    parts = {p: float(per_module.get(f"OwlModel.{p}", 0)) for p in ("vision", "abstractor", "llm")}
    return parts, float(fwd.get_total_flops() + bwd.get_total_flops())


@pytest.mark.parametrize(
    "name, overrides, trainable, lora, images",
    [
        ("clip stage 1", {}, STAGE1, LoraSpec(), True),
        ("clip stage 2 lora", {}, STAGE2, LoraSpec(), True),
        ("stage 2 text-only", {}, STAGE2, LoraSpec(), False),  # LLM input needs no gradient: layer 0 differs
        ("efficientnet stage 1", EFFNET, STAGE1, LoraSpec(), True),
        ("efficientnet stage 2", EFFNET, STAGE2, LoraSpec(), True),
        ("gpt2 stage 2 lora", GPT2, STAGE2, LoraSpec(target_modules=["c_attn"]), True),
    ],
)
def test_analytic_flops_match_flop_counter(name, overrides, trainable, lora, images):
    model, processor = _model(overrides, trainable, lora)
    batch = _batch(processor, images)
    ours = step_flops(model, batch)  # before the step: it reads shapes and requires_grad only
    forward, total = _counted(model, batch)
    assert ours["total"]["total"] == pytest.approx(total, rel=0.15), name
    for part, measured in forward.items():
        assert ours[part]["forward"] == pytest.approx(measured, rel=0.15, abs=1.0), (name, part)
    assert ours["total"]["total"] == pytest.approx(sum(ours[p]["total"] for p in ("vision", "abstractor", "llm")))
    # A frozen module with nothing trainable below costs its forward only.
    if trainable.vision == "frozen":
        assert ours["vision"]["backward"] == 0
    else:  # trains: about twice its forward (no input gradient for the pixels)
        assert 1.5 * ours["vision"]["forward"] <= ours["vision"]["backward"] <= 2 * ours["vision"]["forward"]


def test_frozen_llm_under_a_trainable_abstractor_costs_one_more_forward():
    """Stage 1's frozen LLM: input gradients only, i.e. one more forward, except attention's weightless products,
    whose backward (dQ, dK, dP, dV) is twice their forward."""
    model, processor = _model({}, STAGE1, LoraSpec())
    batch = _batch(processor, True)
    llm = step_flops(model, batch)["llm"]
    b, t = batch["input_ids"].shape
    hf = model.config.llm.hf_config
    attention = hf["num_hidden_layers"] * 4 * b * t * t * hf["hidden_size"]
    assert llm["backward"] == pytest.approx(llm["forward"] + attention)


def test_recipe_names_are_checked():
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve_recipe("configs/none.yaml")
    with pytest.raises(ConfigError, match="world:<profile>/<stage1|stage2>"):
        resolve_recipe("world:full/stage3", world=lambda *a: None)
    r = resolve_recipe(str(ROOT / "configs" / "tiny" / "stage2.yaml"))
    assert r.stage1 is not None and r.stage1.name.endswith("stage1.yaml")
    assert resolve_recipe(str(ROOT / "configs" / "tiny" / "stage1.yaml")).stage1 is None


def test_bench_train_cli_writes_json_and_markdown(tmp_path):
    """Both tiny stages through the real command (stage 2 starts from a 1-step stage-1 run)."""
    recipes = ["--recipe", "configs/tiny/stage1.yaml", "--recipe", "configs/tiny/stage2.yaml"]
    r = run_cli(
        "bench", "train", *recipes, "--steps", "2", "--warmup", "1", "--out", tmp_path, "--peak-size", "256",
        "train.batch_size=4", cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.loads((tmp_path / "train.json").read_text())
    assert [x["recipe"] for x in d["recipes"]] == ["configs/tiny/stage1.yaml", "configs/tiny/stage2.yaml"]
    assert "fp32@cpu" in d["peak"] and d["machine"]["torch_threads"] >= 1
    for x in d["recipes"]:
        assert x["step_s"]["median"] > 0 and len(x["step_s"]["all"]) == 2 and x["batch_size"] == 4
        assert 0 < x["mfu"] < 1.5 and x["tflops"] > 0 and x["samples_per_s"] > 0
        assert x["tokens_per_step"]["padded"] >= x["tokens_per_step"]["real"] > 0
        assert x["flops_per_step"]["llm"]["forward"] > 0 and x["peak_rss_mib"] > 0
    s1, s2 = d["recipes"]
    assert s1["flops_per_step"]["vision"]["backward"] > 0 and s2["flops_per_step"]["vision"]["backward"] == 0
    assert s2["parameters"]["trainable"] < s2["parameters"]["total"]
    md = (tmp_path / "train.md").read_text()
    assert "| configs/tiny/stage1.yaml | 1 | fp32 | 4 |" in md and "| configs/tiny/stage2.yaml | 2 |" in md
    assert "MFU" in r.stdout and "init_from: a 1-step run of" in r.stdout and "step 3/3" in r.stdout


def test_bench_train_cli_bad_recipe_is_one_line(tmp_path):
    bad = run_cli("bench", "train", "--recipe", "configs/nope.yaml", "--out", tmp_path, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("owl: error: unknown recipe 'configs/nope.yaml'")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "train.json").exists()


def test_bad_steps_and_overrides_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="--steps 0 must be >= 1"):
        run_bench_train(["configs/tiny/stage1.yaml"], tmp_path, steps=0)
    with pytest.raises(ConfigError, match="nope"):  # every recipe is loaded (with the overrides) before any runs
        run_bench_train([str(ROOT / "configs" / "tiny" / "stage1.yaml")], tmp_path, 1, 0, ["train.nope=1"])
    assert not (tmp_path / "train.json").exists()
