"""The composed model: splice, mixed batches, losses, LLM families, count errors."""

from __future__ import annotations

import pytest
import torch

from owl.config import LLMConfig, preset
from owl.conversation import Message, Sample
from owl.models import IMAGE_PLACEHOLDER_ID, build_model
from owl.processing import OwlProcessor
from owl.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer
from tests.helpers import random_image

FAMILIES = {
    "llama": None,
    "qwen2": {
        "model_type": "qwen2",
        "vocab_size": BYTE_VOCAB_SIZE,
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "max_position_embeddings": 1024,
    },
    "gpt2": {
        "model_type": "gpt2",
        "vocab_size": BYTE_VOCAB_SIZE,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 1024,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}


def make(family: str = "llama", seed: int = 0):
    cfg = preset("tiny")
    if FAMILIES[family]:
        cfg.llm = LLMConfig(FAMILIES[family])
    torch.manual_seed(seed)
    model, cfg, _ = build_model(cfg)
    return model.eval(), OwlProcessor.from_config(cfg, byte_tokenizer())


def samples():
    a, b = random_image(1), random_image(2)
    return [
        Sample([Message("user", "<image>\nWhat is it?"), Message("assistant", "A cat.")], [a]),
        Sample([Message("user", "Say hi."), Message("assistant", "Hi!")]),
        Sample(
            [
                Message("user", "<image><image>Same?"),
                Message("assistant", "No."),
                Message("user", "Sure?"),
                Message("assistant", "Yes, sure."),
            ],
            [a, b],
        ),
    ]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mixed_batch_loss_equals_per_sample_losses(family):
    model, proc = make(family)
    batch = proc(samples())
    with torch.no_grad():
        out = model(**batch)
        singles = [model(**proc([s])) for s in samples()]
    torch.testing.assert_close(out.loss_sum, sum(s.loss_sum for s in singles), rtol=1e-5, atol=1e-4)
    assert int(out.num_target_tokens) == sum(int(s.num_target_tokens) for s in singles)
    torch.testing.assert_close(out.sample_loss_sum, torch.stack([s.loss_sum for s in singles]), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_labelled_only_head_gives_the_same_loss(family):
    model, proc = make(family)
    batch = proc(samples())
    with torch.no_grad():
        full = model(**batch)
        fast = model(**batch, return_logits=False)
    assert fast.logits is None
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-5)


def test_visual_tokens_land_in_their_runs_even_when_adjacent(tiny):
    model, proc, cfg = tiny
    a, b = random_image(1), random_image(2)
    sample = Sample([Message("user", "Compare <image><image> please."), Message("assistant", "ok")], [a, b])
    batch = proc([sample])
    ids = batch["input_ids"][0]
    pos = (ids == IMAGE_PLACEHOLDER_ID).nonzero().squeeze(1)
    v = cfg.num_visual_tokens
    assert len(pos) == 2 * v and torch.equal(pos[v:] - pos[:v], torch.full((v,), v))  # two adjacent runs
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch["image_counts"])[0]
        visual = model.encode_images(batch["pixel_values"])
        text = model.llm.get_input_embeddings()(ids.clamp(min=0))
    torch.testing.assert_close(embeds[pos[:v]], visual[0])
    torch.testing.assert_close(embeds[pos[v:]], visual[1])
    assert not torch.allclose(visual[0], visual[1])
    keep = ids != IMAGE_PLACEHOLDER_ID
    torch.testing.assert_close(embeds[keep], text[keep])


def test_placeholder_image_mismatch_names_both_counts(tiny):
    model, proc, _ = tiny
    batch = proc(samples()[:1])
    with pytest.raises(ValueError, match=r"sample 0: 1 <image> placeholders but 2 images"):
        model(batch["input_ids"], pixel_values=torch.cat([batch["pixel_values"]] * 2), image_counts=torch.tensor([2]))
    with pytest.raises(ValueError, match=r"1 <image> placeholders but 0 images"):
        model(batch["input_ids"], image_counts=torch.tensor([0]))


def test_gradients_reach_vision_and_abstractor(tiny):
    model, proc, _ = tiny
    model.zero_grad()
    model(**proc(samples()), return_logits=False).loss.backward()
    for part in (model.vision, model.abstractor, model.llm):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.zero_grad()
