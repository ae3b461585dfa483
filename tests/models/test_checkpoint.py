"""Model directories: round trips give identical logits; sharding, tied weights, adapters, atomicity."""

from __future__ import annotations

import json

import pytest
import torch

from owl.models import load_model, save_pretrained
from owl.models.checkpoint import load_tokenizer
from owl.processing import OwlProcessor
from tests.models.test_owl import make, samples


def logits(model, proc):
    with torch.no_grad():
        return model(**proc(samples())).logits


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2 config ties lm_head to the embeddings
def test_round_trip_identical_logits(tmp_path, family):
    model, proc = make(family, seed=5)
    save_pretrained(model, tmp_path / "m", tokenizer=proc.tokenizer)
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)
    loaded = load_model(tmp_path / "m").eval()
    proc2 = OwlProcessor.from_pretrained(tmp_path / "m")
    assert torch.equal(logits(model, proc), logits(loaded, proc2))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directories left behind
    if family == "qwen2":
        assert loaded.causal_lm.lm_head.weight.data_ptr() == loaded.causal_lm.get_input_embeddings().weight.data_ptr()


def test_sharded_round_trip(tmp_path):
    model, proc = make(seed=6)
    save_pretrained(model, tmp_path, tokenizer=proc.tokenizer, max_shard_size=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert torch.equal(logits(model, proc), logits(load_model(tmp_path).eval(), proc))


def test_overwrite_is_atomic_replacement(tmp_path):
    a, proc = make(seed=1)
    b, _ = make(seed=2)
    save_pretrained(a, tmp_path / "m", tokenizer=proc.tokenizer)
    save_pretrained(b, tmp_path / "m", tokenizer=proc.tokenizer)
    assert torch.equal(logits(b, proc), logits(load_model(tmp_path / "m").eval(), proc))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_lora_adapter_round_trip(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, proc = make(seed=7)
    model.llm = get_peft_model(model.llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    save_pretrained(model, tmp_path, tokenizer=proc.tokenizer)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    loaded = load_model(tmp_path).eval()
    assert torch.equal(logits(model.eval(), proc), logits(loaded, proc))
    base = load_model(tmp_path, load_adapter=False).eval()
    assert not torch.allclose(logits(base, proc), logits(loaded, proc))


def test_clear_errors_for_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not an owl model directory"):
        load_model(tmp_path)
    model, _ = make()
    save_pretrained(model, tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path / "m")


def test_load_in_bf16_builds_no_fp32_copy_and_stays_close(tmp_path):
    """``load_model(dtype=bf16)``: every floating tensor is bf16 (built so, not cast after an fp32 build), tied
    weights stay tied, and the logits stay within bf16 rounding of the fp32 model's."""
    model, proc = make("qwen2", seed=6)
    save_pretrained(model, tmp_path / "m", tokenizer=proc.tokenizer)
    half = load_model(tmp_path / "m", dtype=torch.bfloat16).eval()
    assert {t.dtype for t in half.state_dict().values() if t.is_floating_point()} == {torch.bfloat16}
    assert half.causal_lm.lm_head.weight.data_ptr() == half.causal_lm.get_input_embeddings().weight.data_ptr()
    batch = proc(samples())
    with torch.no_grad():
        full = model.eval()(**batch).logits
        low = half(**{k: v.to(torch.bfloat16) if k == "pixel_values" else v for k, v in batch.items()}).logits
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()
