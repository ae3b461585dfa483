"""Tiny owl models for the serving tests: LLaMA (RoPE) and BLOOM (ALiBi) LLMs with weights large enough that
different prompts give different greedy answers (as tests/test_generation.py does)."""

from __future__ import annotations

import torch

from owl.config import LLMConfig, preset
from owl.processing import OwlProcessor
from owl.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer

BLOOM = {
    "model_type": "bloom",
    "vocab_size": BYTE_VOCAB_SIZE,
    "hidden_size": 48,
    "n_layer": 2,
    "n_head": 4,
    "layer_norm_epsilon": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}


def make(family: str = "llama", seed: int = 0, scale: float = 0.5):
    """(model, processor) in eval mode; ``scale``: std of the LLM's 2D weights (0 keeps the default init)."""
    from owl.models import build_model

    cfg = preset("tiny")
    if family == "bloom":  # as a converted mPLUG-Owl BLOOM: visual tokens skip the embedding LayerNorm
        cfg.llm = LLMConfig(dict(BLOOM), normalize_visual_embeds=False)
    torch.manual_seed(seed)
    model, cfg, _ = build_model(cfg)
    if scale:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.llm.parameters():
                if p.dim() == 2:
                    p.normal_(0, scale, generator=g)
    return model.eval(), OwlProcessor.from_config(cfg, byte_tokenizer())


def forbid_eos(model, processor) -> None:
    """Make EOS never the chosen token, so answers run to their token budget (long-running requests)."""
    head = model.causal_lm.get_output_embeddings()
    with torch.no_grad():
        if head.bias is None:
            head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
        head.bias[processor.tokenizer.eos_token_id] = -1e4
