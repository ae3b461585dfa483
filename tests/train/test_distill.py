"""Distillation to the starting model (owl.train.distill): the teacher is the model as it began, the KL is the
textbook one on exactly the scored positions, config errors name the fix (`owl train` end to end: test_train_e2e)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from owl.constants import IGNORE_INDEX
from owl.conversation import Message, Sample
from owl.errors import ConfigError
from owl.train.config import LoraSpec, Trainable, train_config_from_dict
from owl.train.distill import distill_rows, kl_sum, select_rows, teacher_logits
from owl.train.trainable import apply_trainable
from tests.helpers import random_image


def test_kl_sum_matches_a_per_position_loop_over_target_positions_only():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 2], labels[0, 3], labels[1, 5] = 1, 2, 3  # targets at logit positions (0,1), (0,2), (1,4)
    for temp in (1.0, 2.0):
        want = 0.0
        for b, t in [(0, 1), (0, 2), (1, 4)]:
            p = F.softmax(teacher[b, t] / temp, -1)
            q = F.softmax(student[b, t] / temp, -1)
            want += temp**2 * float((p * (p / q).log()).sum())
        got, n = kl_sum(student, teacher, labels, temp)
        assert n == 3 and got.item() == pytest.approx(want, rel=1e-5)
    zero, n = kl_sum(teacher, teacher, labels)
    assert n == 3 and abs(zero.item()) < 1e-6
    none, n = kl_sum(student, teacher, torch.full((2, 6), IGNORE_INDEX))
    assert n == 0 and none.item() == 0.0


def test_select_rows_keeps_each_samples_own_images():
    pix = torch.arange(5.0).view(5, 1, 1, 1)  # image j holds the value j
    batch = {
        "input_ids": torch.arange(8).view(4, 2),
        "attention_mask": torch.ones(4, 2),
        "labels": torch.arange(8).view(4, 2),
        "image_counts": torch.tensor([1, 2, 0, 2]),
        "pixel_values": pix,
    }
    sub = select_rows(batch, [1, 3])
    assert sub["pixel_values"].flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert sub["input_ids"].tolist() == [[2, 3], [6, 7]] and sub["image_counts"].tolist() == [2, 2]
    assert select_rows(batch, [2])["pixel_values"] is None
    assert distill_rows(["text", "captions", "multimodal", "captions"], frozenset({"captions"})) == [1, 3]


def test_teacher_is_the_model_before_lora_however_far_lora_moved(tiny):
    model, proc, _ = tiny
    base = copy.deepcopy(model)
    student = apply_trainable(
        copy.deepcopy(model), Trainable(abstractor="frozen", queries="frozen", llm="lora"), LoraSpec(dropout=0.0)
    )
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: the student now differs from the base
    sample = Sample(
        [Message("user", "<image>\nWhat is here?"), Message("assistant", "A red circle.")], [random_image(1)]
    )
    batch = proc([sample])
    with torch.no_grad():
        want = base(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            image_counts=batch["image_counts"],
        ).logits[:, :-1]
        moved = student(**batch).logits
    got = teacher_logits(student, select_rows(batch, [0]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (moved - want).abs().max() > 1e-2  # the adapter is on outside the teacher's context


def stage2_dict(**extra):
    d = {
        "output_dir": "x",
        "data": {
            "sources": [
                {"name": "multimodal", "format": "mplug", "path": "a.jsonl"},
                {"name": "captions", "format": "captions", "path": "b.jsonl"},
            ]
        },
        "trainable": {"vision": "frozen", "abstractor": "frozen", "queries": "frozen", "llm": "lora"},
    }
    d.update(extra)
    return d


def test_config_errors_name_the_value_and_the_fix():
    cfg = train_config_from_dict(stage2_dict(distill={"sources": ["captions"], "weight": 0.5}))
    assert cfg.distill.sources == ["captions"] and cfg.distill.weight == 0.5
    with pytest.raises(ConfigError, match=r"distill.sources names \['caption'\].*'multimodal', 'captions'"):
        train_config_from_dict(stage2_dict(distill={"sources": ["caption"]}))
    with pytest.raises(ConfigError, match="set trainable.llm=lora and vision, abstractor and queries frozen"):
        train_config_from_dict(stage2_dict(distill={"sources": ["captions"]}), ["trainable.abstractor=full"])
    with pytest.raises(ConfigError, match="distill.weight=0"):
        train_config_from_dict(stage2_dict(distill={"sources": ["captions"], "weight": 0}))
