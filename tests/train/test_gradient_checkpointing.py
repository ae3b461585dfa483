"""Gradient checkpointing (as ``train.gradient_checkpointing`` turns it on) gives the same loss and gradients.

Training mode, with every dropout at 0 so the runs with and without checkpointing are deterministic; the
checkpointed run must really recompute (the layers' inner modules run twice), so the comparison is not vacuous.
"""

from __future__ import annotations

import copy

import pytest
import torch

from owl.config import preset
from owl.conversation import Message, Sample
from owl.models import build_model
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from owl.train.config import LoraSpec, Trainable
from owl.train.trainable import apply_trainable
from tests.helpers import random_image

SPECS = {
    "full": Trainable(vision="full", abstractor="full", queries="full", llm="full"),
    "lora": Trainable(vision="lora", abstractor="full", queries="full", llm="lora"),
}


def _samples():
    a, b = random_image(21), random_image(22)
    return [
        Sample([Message("user", "<image>\nDescribe it."), Message("assistant", "Two dots on grey.")], [a]),
        Sample([Message("user", "Count to three."), Message("assistant", "1 2 3")]),
        Sample([Message("user", "<image><image> differ?"), Message("assistant", "Yes.")], [a, b]),
    ]


def _build(spec: Trainable):
    cfg = preset("tiny")
    cfg.abstractor.attention_dropout = 0.0
    cfg.llm.hf_config["attention_dropout"] = 0.0
    torch.manual_seed(0)
    model, cfg, _ = build_model(cfg)
    apply_trainable(model, spec, LoraSpec(r=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # peft's zero lora_B would leave lora_A without gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model, OwlProcessor.from_config(cfg, byte_tokenizer())


def _enable_checkpointing(model) -> None:
    """What owl/train/loop.py does for ``train.gradient_checkpointing``: the LLM and the CLIP tower."""
    from owl.train.trainable import enable_activation_checkpointing

    assert enable_activation_checkpointing(model) == 2


def _inner_modules(model) -> dict[str, torch.nn.Module]:
    """A module inside the first checkpointed layer of the LLM and of the vision tower."""
    llm = next(m for n, m in model.causal_lm.named_modules() if n.endswith("layers.0.mlp"))
    vision = next(m for n, m in model.vision.named_modules() if n.endswith("layers.0.mlp"))
    return {"llm": llm, "vision": vision}


def _run(model, batch):
    # Count calls by wrapping ``forward`` itself: the backward pass's recomputation calls it again. (Forward hooks
    # would miss it: torch stops a non-reentrant recomputation early, once it has the tensors backward needs.)
    calls = {k: 0 for k in ("llm", "vision")}
    inner = _inner_modules(model)
    for key, m in inner.items():

        def counting(*args, _key=key, _forward=m.forward, **kwargs):
            calls[_key] += 1
            return _forward(*args, **kwargs)

        m.forward = counting
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(**batch, return_logits=False)
    out.loss.backward()
    for m in inner.values():
        del m.forward  # back to the class's forward
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads, calls


@pytest.mark.parametrize("mode", list(SPECS))
def test_checkpointing_gives_the_same_gradients(mode):
    model, proc = _build(SPECS[mode])
    ckpt = copy.deepcopy(model)
    _enable_checkpointing(ckpt)
    batch = proc(_samples())

    loss, grads, calls = _run(model, batch)
    loss_c, grads_c, calls_c = _run(ckpt, batch)

    assert calls == {"llm": 1, "vision": 1}
    assert calls_c == {"llm": 2, "vision": 2}, "checkpointing did not recompute the layers in the backward pass"
    torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=0)
    assert grads.keys() == grads_c.keys() and grads
    parts = {n.partition(".")[0] for n in grads}
    assert parts == {"vision", "abstractor", "llm"}
    if mode == "lora":
        assert all("lora_" in n for n in grads if not n.startswith("abstractor."))
    for n, g in grads.items():
        assert g.abs().sum() > 0, f"{n}: no gradient at all"
        torch.testing.assert_close(grads_c[n], g, rtol=1e-6, atol=1e-9, msg=lambda m, n=n: f"{n}: {m}")
