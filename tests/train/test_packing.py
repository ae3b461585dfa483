"""Packed batches (``train.pack_tokens``) give the padded batch's loss, per-sample losses and gradients.

The padded batch is the independent reference: one sample per row, a 2D attention mask. The packed one puts the
same samples back to back with restarting positions and no mask, relying on transformers' block-diagonal mask
for packed sequences; if that mask leaked across samples, the losses and gradients would differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from owl.config import preset
from owl.constants import IGNORE_INDEX
from owl.conversation import Message, Sample
from owl.errors import ConfigError
from owl.models import build_model
from owl.packing import pack, plan_rows
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from owl.train.config import LoraSpec, Trainable, load_train_config, train_config_from_dict
from owl.train.loop import train
from owl.train.trainable import apply_trainable
from tests.helpers import random_image

STAGE1 = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "stage1.yaml"


def _samples() -> list[Sample]:
    a, b, c = random_image(31), random_image(32), random_image(33)
    return [
        Sample([Message("user", "<image>\nDescribe it."), Message("assistant", "Two dots on grey.")], [a]),
        Sample([Message("user", "Count to three."), Message("assistant", "1 2 3")]),
        Sample([Message("user", "<image><image> differ?"), Message("assistant", "Yes, they do.")], [b, c]),
        Sample([Message("user", "<image>\nWhat is it?"), Message("assistant", "A long grey square, mostly.")], [c]),
        Sample([Message("user", "Say hi."), Message("assistant", "Hi.")]),
    ]


def _build():
    cfg = preset("tiny")
    cfg.abstractor.attention_dropout = 0.0
    cfg.llm.hf_config["attention_dropout"] = 0.0
    torch.manual_seed(0)
    model, cfg, _ = build_model(cfg)
    apply_trainable(
        model,
        Trainable(vision="full", abstractor="full", queries="full", llm="lora"),
        LoraSpec(r=4, alpha=8, dropout=0),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # peft's zero lora_B would leave lora_A without gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.train(), OwlProcessor.from_config(cfg, byte_tokenizer())


def _run(model, batch, return_logits: bool):
    model.zero_grad()
    out = model(**batch, return_logits=return_logits)
    out.loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def test_plan_rows_first_fit_decreasing():
    assert plan_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]  # 5+3, 4+2: longest first, first row that fits
    assert plan_rows([10, 3], 4) == [[0], [1]]  # a sample longer than the cap gets a row of its own
    assert plan_rows([2, 2, 2], 100) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="max_tokens=0"):
        plan_rows([1], 0)


@pytest.mark.parametrize("max_tokens", [1, 450, 10_000])
@pytest.mark.parametrize("return_logits", [False, True])  # the LM head on kept positions only, and on all
def test_packed_equals_padded(max_tokens, return_logits):
    model, proc = _build()
    items = [proc.encode(s) for s in _samples()]
    padded = proc.collate(items, "right")
    packed = pack(items, max_tokens, proc.pad_id)
    rows = packed["input_ids"].shape[0]
    assert rows == {1: 5, 10_000: 1}.get(max_tokens, rows) and (max_tokens != 450 or rows == 3)
    ref, ref_grads = _run(model, padded, return_logits)
    out, grads = _run(model, packed, return_logits)
    torch.testing.assert_close(out.loss_sum, ref.loss_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sample_loss_sum, ref.sample_loss_sum, rtol=1e-5, atol=1e-5)
    assert out.sample_target_tokens.tolist() == ref.sample_target_tokens.tolist()
    assert int(out.num_target_tokens) == sum(e.num_targets for e in items)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_pack_layout():
    _, proc = _build()
    items = [proc.encode(s) for s in _samples()]
    b = pack(items, 450, proc.pad_id)
    seg, pos, ids, lab = b["segments"], b["position_ids"], b["input_ids"], b["labels"]
    assert b["attention_mask"] is None
    assert sorted(set(seg[seg >= 0].tolist())) == list(range(len(items)))
    for i, e in enumerate(items):
        where = seg == i
        assert int(where.sum()) == len(e.input_ids) and int(where.any(dim=1).sum()) == 1  # whole, in one row
        assert ids[where].tolist() == e.input_ids
        assert pos[where].tolist() == list(range(len(e.input_ids)))
        assert lab[where][0].item() == IGNORE_INDEX and lab[where][1:].tolist() == e.labels[1:]
    assert (lab[seg < 0] == IGNORE_INDEX).all()
    assert b["image_counts"].tolist() == [sum(items[i].num_images for i in set(r[r >= 0].tolist())) for r in seg]
    assert int(b["image_counts"].sum()) == b["pixel_values"].shape[0] == 4


def _cfg(**train):
    return {
        "output_dir": "x",
        "data": {"sources": [{"name": "c", "format": "captions", "path": "c.jsonl"}]},
        "train": {"max_steps": 1, **train},
    }


def test_pack_config_errors():
    assert train_config_from_dict(_cfg(pack_tokens=512)).train.pack_tokens == 512
    with pytest.raises(ConfigError, match="train.pack_tokens=-1"):
        train_config_from_dict(_cfg(pack_tokens=-1))
    d = _cfg(pack_tokens=512)
    d["text_align"] = {"sources": ["c"]}
    with pytest.raises(ConfigError, match="pack_tokens=512 packs samples"):
        train_config_from_dict(d)


def _step_losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_owl_train_packs_with_eager_attention_and_learns_as_the_padded_run(tmp_path, capsys):
    """``train()`` end to end: packed rows + eager attention give the padded SDPA run's first loss (same weights,
    same samples); the attention choice is printed and not written into the saved model."""
    base = [
        "train.progress=false",
        "train.tensorboard=false",
        "train.max_steps=3",
        "checkpoint.every=0",
        "model.overrides.abstractor.attention_dropout=0.0",
    ]
    packed = train(
        load_train_config(
            STAGE1, [f"output_dir={tmp_path / 'p'}", *base, "train.pack_tokens=64", "train.llm_attention=eager"]
        )
    )
    assert "llm attention: eager as configured" in capsys.readouterr().out
    train(load_train_config(STAGE1, [f"output_dir={tmp_path / 'r'}", *base, "train.llm_attention=sdpa"]))
    assert json.loads((packed / "lineage.json").read_text())["steps"] == 3
    assert "eager" not in (packed / "config.json").read_text()
    first_packed, first_padded = _step_losses(tmp_path / "p")[0], _step_losses(tmp_path / "r")[0]
    assert first_packed == pytest.approx(first_padded, rel=1e-4)
