"""LoRA merged == unmerged: the LLM adapter (peft, saved as ``adapter/``) and the vision adapter (merged in place).

peft zero-initialises ``lora_B``, which makes an adapter a no-op; every test here gives the adapters random
``lora_B`` weights first and checks (negative control) that the output really moved away from the base model.
"""

from __future__ import annotations

import pytest
import torch

from owl.config import preset
from owl.conversation import Message, Sample
from owl.models import build_model, load_model, save_pretrained
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from owl.train.config import LoraSpec, Trainable
from owl.train.trainable import apply_trainable, merge_vision_lora
from tests.helpers import random_image

TOL = 1e-5  # fp32 max abs difference of logits
MOVED = 1e-3  # an adapter that matters changes the logits by more than this


def _samples():
    a, b = random_image(11), random_image(12)
    return [
        Sample([Message("user", "<image>\nWhat is it?"), Message("assistant", "A red square.")], [a]),
        Sample([Message("user", "<image> and <image>: same?"), Message("assistant", "No.")], [a, b]),
    ]


def _make(seed: int):
    torch.manual_seed(seed)
    model, cfg, _ = build_model(preset("tiny"))
    return model.eval(), OwlProcessor.from_config(cfg, byte_tokenizer())


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _randomise_lora_b(module: torch.nn.Module, seed: int, std: float = 0.05) -> int:
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
                n += 1
    return n


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture
def lora_spec():
    return LoraSpec(r=4, alpha=8, dropout=0.0)


def test_llm_lora_merged_equals_unmerged_and_survives_save_load(tmp_path, lora_spec):
    model, proc = _make(seed=3)
    batch = proc(_samples())
    base = _logits(model, batch)

    apply_trainable(model, Trainable(llm="lora"), lora_spec)
    assert hasattr(model.llm, "peft_config")
    assert _randomise_lora_b(model.llm, seed=1) == 2 * 2  # q_proj and v_proj in each of the 2 layers
    unmerged = _logits(model, batch)
    assert _maxdiff(unmerged, base) > MOVED, "the adapter does not change the output; the test would be vacuous"

    save_pretrained(model, tmp_path / "m", tokenizer=proc.tokenizer)
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").exists()
    reloaded = load_model(tmp_path / "m").eval()
    assert hasattr(reloaded.llm, "peft_config"), "load_model did not re-attach the adapter"
    assert _maxdiff(_logits(reloaded, batch), unmerged) <= TOL
    base_reloaded = load_model(tmp_path / "m", load_adapter=False)
    assert _maxdiff(_logits(base_reloaded, batch), base) <= TOL  # the saved base weights are the untouched ones

    model.llm = model.llm.merge_and_unload()
    assert not hasattr(model.llm, "peft_config")
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert _maxdiff(_logits(model, batch), unmerged) <= TOL

    reloaded.llm = reloaded.llm.merge_and_unload()
    assert _maxdiff(_logits(reloaded, batch), unmerged) <= TOL

    # A merged model saves as plain weights (no adapter/) and reloads to the same logits.
    save_pretrained(model, tmp_path / "merged", tokenizer=proc.tokenizer)
    assert not (tmp_path / "merged" / "adapter").exists()
    assert _maxdiff(_logits(load_model(tmp_path / "merged"), batch), unmerged) <= TOL


def test_vision_lora_merge_keeps_logits_and_the_merged_model_reloads(tmp_path, lora_spec):
    model, proc = _make(seed=4)
    batch = proc(_samples())
    base = _logits(model, batch)

    apply_trainable(model, Trainable(vision="lora"), lora_spec)
    lora_names = [n for n, _ in model.vision.named_parameters() if "lora_" in n]
    assert lora_names and all(("q_proj" in n or "v_proj" in n) for n in lora_names)
    trainable = {n for n, p in model.vision.named_parameters() if p.requires_grad}
    assert trainable == set(lora_names)  # only the adapter of the tower learns
    # The tower's effect on the logits is damped by the abstractor and the random LLM: a larger delta.
    assert _randomise_lora_b(model.vision, seed=2, std=0.5) == 2 * 2  # q_proj and v_proj in each of 2 CLIP layers
    unmerged = _logits(model, batch)
    assert _maxdiff(unmerged, base) > MOVED, "the vision adapter does not change the output"

    q_proj = next(m for n, m in model.vision.named_modules() if n.endswith("q_proj") and hasattr(m, "base_layer"))
    weight_before = q_proj.base_layer.weight.clone()
    merge_vision_lora(model)
    weight_after = q_proj.base_layer.weight
    assert _maxdiff(weight_after, weight_before) > 0  # the delta really went into the base weight
    merged = _logits(model, batch)
    assert _maxdiff(merged, unmerged) <= TOL

    save_pretrained(model, tmp_path / "m", tokenizer=proc.tokenizer)
    reloaded = load_model(tmp_path / "m")
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    assert _maxdiff(_logits(reloaded, batch), unmerged) <= TOL
