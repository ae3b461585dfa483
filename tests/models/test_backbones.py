"""`owl new` from local HF directories of every common family: CLIP/SigLIP vision, LLaMA/Qwen2/Mistral/GPT-2/BLOOM.

Each family goes through the real command and comes out a model that reloads with identical logits, trains
(finite loss, gradients on the abstractor) and generates (batched = one at a time), with the family's special
tokens resolved once and recorded identically in the saved tokenizer and ``llm.hf_config``.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from owl.cli import main
from owl.config import CLIP_MEAN, CLIP_STD, OwlConfig, VisionConfig
from owl.conversation import Message, Sample
from owl.errors import ConfigError
from owl.generation import GenerationOptions, generate
from owl.models import load_model
from owl.models.checkpoint import load_tokenizer
from owl.models.vision import load_vision
from owl.processing import OwlProcessor
from tests.helpers import random_image
from tests.hf_dirs import VISION_KINDS, write_llm_dir, write_vision_dir

SIGLIP_NORM = (0.5, 0.5, 0.5)

# family -> (bos, eos, pad) tokens owl must end up with. No pad token: pad = EOS. No BOS (Qwen2): none prepended.
SPECIAL = {
    "llama": ("<s>", "</s>", "</s>"),
    "mistral": ("<s>", "</s>", "</s>"),
    "qwen2": (None, "<|endoftext|>", "<|endoftext|>"),
    "gpt2": ("<|endoftext|>", "<|endoftext|>", "<|endoftext|>"),
    "bloom": ("<s>", "</s>", "<pad>"),
}
PAD_FROM_EOS = {"llama", "mistral", "gpt2"}
# Each family meets a different kind of vision directory, so every kind goes through `owl new` once.
VISION_FOR = {"llama": "clip", "mistral": "clip-full", "qwen2": "siglip", "gpt2": "siglip-full", "bloom": "clip"}


def _weights(path) -> dict[str, torch.Tensor]:
    state = load_file(str(path / "model.safetensors"))
    return {k.removeprefix("vision_model."): v for k, v in state.items() if not k.startswith("text_")}


@pytest.mark.parametrize("kind", VISION_KINDS)
def test_load_vision_reads_the_vision_part_sizes_and_normalisation(tmp_path, kind):
    path = write_vision_dir(tmp_path / kind, kind, hidden_size=24)
    tower, cfg = load_vision(path, VisionConfig())  # the default config says CLIP: the directory decides
    siglip = kind.startswith("siglip")
    assert cfg.backbone == ("siglip" if siglip else "clip")
    assert (cfg.hidden_size, cfg.image_size, cfg.patch_size, cfg.num_layers) == (24, 28, 14, 1)
    assert (cfg.image_mean, cfg.image_std) == ((SIGLIP_NORM, SIGLIP_NORM) if siglip else (CLIP_MEAN, CLIP_STD))
    saved = _weights(path)
    state = tower.model.state_dict()
    assert not any(k.startswith("head.") for k in state)  # SigLIP's pooling head is dropped: owl reads all tokens
    for k, v in state.items():
        assert torch.equal(v, saved[k]), k  # every tensor read from the directory, none left at random init
    assert tower(torch.randn(2, 3, 28, 28)).shape == (2, tower.num_tokens, 24)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_normalisation_without_a_preprocessor_config_is_the_backbones_own(tmp_path, kind):
    path = write_vision_dir(tmp_path / kind, kind, processor=False)
    _, cfg = load_vision(path, VisionConfig())
    assert cfg.image_mean == (SIGLIP_NORM if kind == "siglip" else CLIP_MEAN)


def test_a_processor_size_unlike_the_models_is_reported_and_the_model_size_kept(tmp_path, caplog):
    path = write_vision_dir(tmp_path / "clip", "clip")
    pre = json.loads((path / "preprocessor_config.json").read_text())
    pre["crop_size"] = {"height": 224, "width": 224}
    (path / "preprocessor_config.json").write_text(json.dumps(pre))
    with caplog.at_level(logging.WARNING, logger="owl"):
        _, cfg = load_vision(path, VisionConfig())
    assert cfg.image_size == 28 and "224 px images" in caplog.text


def test_unsupported_vision_directory_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(ConfigError, match="'dinov2' is not supported"):
        load_vision(tmp_path, VisionConfig())


def _samples(image) -> list[Sample]:
    return [
        Sample([Message("user", "<image>\nWhat is it?"), Message("assistant", "A cat.")], [image]),
        Sample([Message("user", "Say hi."), Message("assistant", "Hi there!")]),
    ]


def _new(tmp_path, family: str, monkeypatch, *extra: str):
    """`owl new` from a fresh LLM and vision directory; returns (out dir, the in-memory model, its tokenizer)."""
    import owl.models

    vision = write_vision_dir(tmp_path / "vision", VISION_FOR[family])
    llm = write_llm_dir(tmp_path / "llm", family)
    captured = {}
    real_save = owl.models.save_pretrained

    def capture(model, path, tokenizer=None, **kw):
        captured.update(model=model, tokenizer=tokenizer)
        return real_save(model, path, tokenizer=tokenizer, **kw)

    monkeypatch.setattr(owl.models, "save_pretrained", capture)
    out = tmp_path / "m"
    args = ["new", "--preset", "tiny", "--out", out, "--vision-from", vision, "--llm-from", llm, *extra]
    assert main([str(a) for a in args]) == 0
    return out, captured["model"].eval(), captured["tokenizer"]


@pytest.mark.parametrize("family", list(SPECIAL))
def test_new_from_each_family_reloads_trains_and_generates(tmp_path, monkeypatch, caplog, family):
    caplog.set_level(logging.INFO, logger="owl")
    out, model, tokenizer = _new(tmp_path, family, monkeypatch, "--set", "abstractor.num_queries=2")

    # Special tokens: resolved per family, the same in the saved tokenizer and the saved LLM config.
    tok = load_tokenizer(out)
    bos, eos, pad = SPECIAL[family]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    config = OwlConfig.load(out / "config.json")
    hf = config.llm.hf_config
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert ("no pad token: padding with EOS" in caplog.text) == (family in PAD_FROM_EOS)
    vision_kind = VISION_FOR[family]
    assert config.vision.backbone == vision_kind.split("-")[0]
    assert config.vision.image_mean == (SIGLIP_NORM if vision_kind.startswith("siglip") else CLIP_MEAN)

    # Reload: identical logits to the model `owl new` held in memory.
    loaded = load_model(out).eval()
    proc = OwlProcessor.from_pretrained(out)
    samples = _samples(random_image(3))
    first = proc.encode(samples[1])
    assert (first.input_ids[0] == tok.bos_token_id) == (bos is not None)  # mplug-owl-v1: BOS only if there is one
    with torch.no_grad():
        expected = model(**OwlProcessor.from_config(model.config, tokenizer)(samples)).logits
        assert torch.equal(expected, loaded(**proc(samples)).logits)

    # One training-style step: finite loss, gradients reach the abstractor.
    loaded.train()
    result = loaded(**proc(samples))
    assert math.isfinite(result.loss.item())
    result.loss.backward()
    grads = [p.grad for p in loaded.abstractor.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    # Batched greedy generation equals one-at-a-time, for an image prompt and a text-only one.
    loaded.eval()
    prompts = [Sample(s.messages[:1], s.images) for s in samples]
    options = GenerationOptions(max_new_tokens=5)
    together = generate(loaded, proc, prompts, options)
    alone = [generate(loaded, proc, [p], options)[0] for p in prompts]
    assert [c.text for c in together] == [c.text for c in alone]
    assert all(isinstance(c.text, str) and c.completion_tokens <= 5 for c in together)


def test_tokenizer_larger_than_the_embedding_matrix_is_one_clear_line(tmp_path, capsys):
    vision = write_vision_dir(tmp_path / "vision", "clip")
    llm = write_llm_dir(tmp_path / "llm", "gpt2", vocab_size=200)  # its tokenizer has 257 tokens
    args = ["new", "--preset", "tiny", "--out", tmp_path / "m", "--vision-from", vision, "--llm-from", llm]
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("owl:")]
    assert len(lines) == 1 and "257 tokens" in lines[0] and "200 rows" in lines[0], lines
    assert not (tmp_path / "m").exists()


def test_a_separate_tokenizer_is_aligned_with_the_preset_llm(tmp_path):
    """--tokenizer replaces the LLM's tokenizer: its special tokens are the ones recorded (GPT-2's: pad = EOS)."""
    write_llm_dir(tmp_path / "gpt2", "gpt2")
    assert main(["new", "--preset", "tiny", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "gpt2")]) == 0
    tok = load_tokenizer(tmp_path / "m")
    hf = OwlConfig.load(tmp_path / "m" / "config.json").llm.hf_config
    assert tok.pad_token_id == tok.eos_token_id == tok.bos_token_id == 256
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (256, 256, 256)
