"""Tiny random HF model directories, written in code (no hub access), shaped like the real families.

Each LLM directory has a ``config.json``, random safetensors weights and a tokenizer of the family's own class
with the family's special tokens (a byte-level vocabulary instead of the real one, so it is small):

============  =====================  =====================  =====================
family        bos                    eos                    pad
============  =====================  =====================  =====================
llama         ``<s>``                ``</s>``               none
mistral       ``<s>``                ``</s>``               none
qwen2         none                   ``<|endoftext|>``      ``<|endoftext|>``
gpt2          ``<|endoftext|>``      ``<|endoftext|>``      none
bloom         ``<s>``                ``</s>``               ``<pad>``
============  =====================  =====================  =====================

The configs carry the special-token ids the real checkpoints carry (Qwen2: bos = eos = ``<|endoftext|>``; GPT-2:
the real 50256, which is outside this small vocabulary), so owl's reconciliation is exercised as in real use.
Vision directories: a ``CLIPVisionModel`` / ``SiglipVisionModel`` directory, or a full ``CLIPModel`` /
``SiglipModel`` one (with a text tower owl must ignore), each with a ``preprocessor_config.json`` by default.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

LLM_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "bloom")
VISION_KINDS = ("clip", "clip-full", "siglip", "siglip-full")

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_alphabet() -> list[str]:
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def family_tokenizer(family: str) -> PreTrainedTokenizerBase:
    """A small tokenizer of ``family``'s class with its special tokens (see the module table)."""
    from transformers import GPT2Tokenizer, LlamaTokenizer, Qwen2Tokenizer

    if family in ("llama", "mistral"):  # SentencePiece-style BPE with byte fallback, as LLaMA's tokenizer.json
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
        vocab |= {f"<0x{i:02X}>": 3 + i for i in range(256)}
        for ch in "▁abcdefghijklmnopqrstuvwxyzAIH:.?":
            vocab.setdefault(ch, len(vocab))
        return LlamaTokenizer(vocab=vocab, merges=[])
    if family == "qwen2":
        vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
        tok = Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=["<|im_start|>", "<|im_end|>"])
        tok.chat_template = CHATML
        return tok
    if family == "gpt2":
        vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
        vocab["<|endoftext|>"] = len(vocab)
        return GPT2Tokenizer(vocab=vocab, merges=[])
    if family == "bloom":  # BLOOM's tokenizer is a plain fast tokenizer with <unk> <s> </s> <pad> first
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
        for ch in _byte_alphabet():
            vocab[ch] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
        )
    raise ValueError(f"unknown family {family!r}; one of {LLM_FAMILIES}")


def _llm_config(family: str, vocab_size: int, tok: PreTrainedTokenizerBase):
    from transformers import BloomConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, **small)
    if family == "mistral":
        return MistralConfig(
            vocab_size=vocab_size, num_key_value_heads=2, sliding_window=64, bos_token_id=1, eos_token_id=2, **small
        )
    if family == "qwen2":
        eot = tok.convert_tokens_to_ids("<|endoftext|>")
        return Qwen2Config(
            vocab_size=vocab_size,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            bos_token_id=eot,
            eos_token_id=eot,
            **small,
        )
    if family == "gpt2":  # the real GPT-2 ids (50256): out of this vocabulary, owl must take the tokenizer's
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256)
    if family == "bloom":
        return BloomConfig(vocab_size=vocab_size, hidden_size=32, n_layer=2, n_head=4, pad_token_id=3)
    raise ValueError(f"unknown family {family!r}; one of {LLM_FAMILIES}")


def write_llm_dir(path: str | Path, family: str, *, vocab_size: int | None = None, seed: int = 0) -> Path:
    """A random ``family`` causal LM and its tokenizer in ``path``.

    ``vocab_size`` defaults to the tokenizer's length rounded up to a multiple of 8 (real checkpoints pad their
    embedding matrix too); a smaller one makes a directory whose tokenizer does not fit its LLM.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tok = family_tokenizer(family)
    vocab_size = vocab_size or -(-len(tok) // 8) * 8
    torch.manual_seed(seed)
    llm = AutoModelForCausalLM.from_config(_llm_config(family, vocab_size, tok))
    llm.save_pretrained(path)
    tok.save_pretrained(path)
    if family == "bloom":  # as the real BLOOM directories name it (transformers maps it to the fast backend)
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg_file.write_text(json.dumps(cfg | {"tokenizer_class": "BloomTokenizerFast"}, indent=2))
    return path


def write_vision_dir(
    path: str | Path,
    kind: str,
    *,
    image_size: int = 28,
    patch_size: int = 14,
    hidden_size: int = 24,
    processor: bool = True,
    seed: int = 0,
) -> Path:
    """A random CLIP/SigLIP vision directory of ``kind`` (see ``VISION_KINDS``), with the family's image processor.

    The processor config is the family's own (CLIP: CLIP mean/std, shortest edge + centre crop; SigLIP: 0.5/0.5,
    a square resize) at ``image_size``; ``processor=False`` leaves it out.
    """
    path = Path(path)
    vision = {
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text |= {"vocab_size": 50, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # ids inside the vocab
    torch.manual_seed(seed)
    with _quiet_transformers():  # the default text configs' special ids are out of this tiny text vocabulary
        model = _vision_model(kind, vision, text)
    model.save_pretrained(path)
    if processor:
        (path / "preprocessor_config.json").write_text(json.dumps(_processor_config(kind, image_size), indent=2))
    return path


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _vision_model(kind: str, vision: dict, text: dict) -> torch.nn.Module:
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipConfig,
        SiglipModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    elif kind == "clip-full":
        model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text))
    elif kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
    elif kind == "siglip-full":
        model = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
    else:
        raise ValueError(f"unknown vision kind {kind!r}; one of {VISION_KINDS}")
    return model


def _processor_config(kind: str, image_size: int) -> dict:
    """What ``CLIPImageProcessor`` / ``SiglipImageProcessor`` save (written directly: no torchvision needed)."""
    if kind.startswith("clip"):
        from owl.config import CLIP_MEAN, CLIP_STD

        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": image_size},
            "do_center_crop": True,
            "crop_size": {"height": image_size, "width": image_size},
            "do_normalize": True,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "resample": 3,
            "rescale_factor": 1 / 255,
        }
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 3,
        "rescale_factor": 1 / 255,
    }
