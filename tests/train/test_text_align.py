"""Aligning the LLM's states after the image with its states after the caption's text (owl.train.text_align):
the teacher sequence, the position map, the distance against a per-position loop, the teacher's states against
the model's own forward, config errors, and `owl train` end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from owl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from owl.conversation import Message, Sample
from owl.errors import ConfigError
from owl.processing import Encoded
from owl.train.config import TextAlignConfig, train_config_from_dict
from owl.train.text_align import align_sum, plan, teacher_states
from tests.helpers import random_image, run_cli

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ROOT / "configs" / "tiny" / "stage1.yaml"
QUIET = ["train.progress=false", "train.tensorboard=false", "train.max_steps=4", "checkpoint.every=0"]
P = IMAGE_PLACEHOLDER_ID
PIX = torch.zeros(1, 3, 2, 2)


def enc(ids, labels, source="captions", images=1):
    return Encoded(ids, labels, PIX.repeat(images, 1, 1, 1) if images else None, source=source)


def test_plan_puts_the_caption_in_place_of_the_image_and_maps_every_later_position():
    x = IGNORE_INDEX
    items = [
        enc([1, 2, P, P, P, 3, 4, 50, 51, 9], [x, x, x, x, x, x, x, 50, 51, 9]),  # 9: end of turn, dropped
        enc([1, P, P, P, 5, 60], [x, x, x, x, x, 60]),
        enc([1, 2, 3], [x, 2, 3], source="text", images=0),  # not a named source
        enc([1, P, P, P, 5, 6], [x, x, x, x, x, x]),  # no targets: nothing to read as text
        enc([1, P, P, P, P, P, P, 7], [x, x, x, x, x, x, x, 7], images=2),  # two images: not aligned
    ]
    p = plan(items, frozenset({"captions"}), 3, pad_id=0, drop_ids=frozenset({9}))
    assert p.rows == [0, 1]
    assert p.input_ids.tolist() == [[1, 2, 50, 51, 3, 4, 50, 51, 9], [1, 60, 5, 60, 0, 0, 0, 0, 0]]
    assert p.attention_mask.sum(1).tolist() == [9, 4]
    for j, r in enumerate(p.rows):  # after the image, student and teacher read the same tokens
        student = torch.tensor(items[r].input_ids)[p.student_pos[j]]
        assert student.tolist() == p.input_ids[j, p.teacher_pos[j]].tolist()
    assert p.student_pos[0].tolist() == [5, 6, 7, 8, 9] and p.num_positions == 5 + 2
    assert plan(items[2:], frozenset({"captions"}), 3, 0) is None
    before = plan(items, frozenset({"captions"}), 3, pad_id=0, drop_ids=frozenset({9}), positions="prompt")
    assert before.student_pos[0].tolist() == [5, 6] and before.teacher_pos[0].tolist() == [4, 5]  # 6 predicts 50
    assert before.rows == [0, 1] and before.student_pos[1].tolist() == [4]


def test_align_sum_matches_a_per_position_loop_and_is_zero_at_the_teacher():
    g = torch.Generator().manual_seed(0)
    items = [enc([1, P, P, 4, 5], [x := IGNORE_INDEX, x, x, x, 5]), enc([7, 7, 1, P, P, 4], [x, x, x, x, x, 4])]
    p = plan(items, frozenset({"captions"}), 2, pad_id=0)
    student = [torch.randn(2, 6, 8, generator=g) for _ in range(3)]
    teacher = [torch.randn(2, p.input_ids.shape[1], 8, generator=g) for _ in range(3)]
    want = 0.0
    for s, t in zip(student, teacher):
        for j, r in enumerate(p.rows):
            for sp, tp in zip(p.student_pos[j].tolist(), p.teacher_pos[j].tolist()):
                want += float(((s[r, sp] - t[j, tp]) ** 2).mean() / (t[j, tp] ** 2).mean()) / 3
    assert align_sum(student, teacher, p).item() == pytest.approx(want, rel=1e-5)
    same = [s.clone() for s in student]
    for s, t in zip(same, teacher):
        for j, r in enumerate(p.rows):
            s[r, p.student_pos[j]] = t[j, p.teacher_pos[j]]
    assert align_sum(same, teacher, p).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_states_are_the_llms_own_states_on_the_caption_text(tiny):
    model, proc, _ = tiny
    sample = Sample(
        [Message("user", "<image>\nWhat is here?"), Message("assistant", "A red circle.")], [random_image(1)]
    )
    e = proc.encode(sample)
    e.source = "captions"
    drop = frozenset(proc.tokenizer.all_special_ids)
    p = plan([e], frozenset({"captions"}), proc.num_visual_tokens, proc.pad_id, drop)
    caption = proc.tokenizer("A red circle.", add_special_tokens=False)["input_ids"]
    assert caption == p.input_ids[0, p.teacher_pos[0][0] - len(caption) : p.teacher_pos[0][0]].tolist()
    got = teacher_states(model, p, [1, 2])
    with torch.no_grad():  # the same text through the composed model's forward (no image in it)
        ref = model(input_ids=p.input_ids, labels=p.input_ids, hidden_layers=[1, 2])
    for a, b in zip(got, ref.hidden_states):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # and the student's states, on the image, differ from them before any training
        student = model(**proc.collate([e]), hidden_layers=[1, 2]).hidden_states
    assert align_sum(student, got, p).item() > 0.01


def test_the_distance_trains_the_visual_tokens_towards_the_text(tiny):
    model, proc, _ = tiny
    model = copy.deepcopy(model).train()
    model.llm.requires_grad_(False)
    samples = [
        Sample([Message("user", "<image>"), Message("assistant", c)], [random_image(i)])
        for i, c in enumerate(["A red circle.", "Two blue squares at the top."])
    ]
    items = [proc.encode(s) for s in samples]
    for e in items:
        e.source = "captions"
    p = plan(
        items, frozenset({"captions"}), proc.num_visual_tokens, proc.pad_id, frozenset(proc.tokenizer.all_special_ids)
    )
    teacher = teacher_states(model, p, [1, 2])
    batch = proc.collate(items)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    dists = []
    for _ in range(30):
        dist = align_sum(model(**batch, return_logits=False, hidden_layers=[1, 2]).hidden_states, teacher, p)
        opt.zero_grad()
        dist.backward()
        opt.step()
        dists.append(dist.item())
    assert dists[-1] < 0.7 * dists[0]  # only the vision tower and abstractor moved: the tokens now act more like text


def stage1_dict(**extra):
    d = {
        "output_dir": "x",
        "data": {"sources": [{"name": "captions", "format": "captions", "path": "b.jsonl"}]},
        "trainable": {"vision": "full", "abstractor": "full", "queries": "full", "llm": "frozen"},
    }
    d.update(extra)
    return d


def test_config_errors_name_the_value_and_the_fix():
    cfg = train_config_from_dict(stage1_dict(text_align={"sources": ["captions"], "layers": [2, 4]}))
    assert cfg.text_align.layers == [2, 4] and cfg.text_align.weight == 1.0
    with pytest.raises(ConfigError, match=r"text_align.sources names \['caption'\].*'captions'"):
        train_config_from_dict(stage1_dict(text_align={"sources": ["caption"]}))
    with pytest.raises(ConfigError, match="set trainable.llm=frozen"):
        train_config_from_dict(stage1_dict(text_align={"sources": ["captions"]}), ["trainable.llm=lora"])
    with pytest.raises(ConfigError, match="text_align.positions='reply' is unknown; use all or prompt"):
        train_config_from_dict(stage1_dict(text_align={"sources": ["captions"], "positions": "reply"}))
    with pytest.raises(ConfigError, match=r"text_align.layers=\[0\]"):
        train_config_from_dict(stage1_dict(text_align={"sources": ["captions"], "layers": [0]}))


def test_owl_train_aligns_logs_the_distance_and_refuses_a_layer_the_llm_lacks(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    on = ["text_align.sources=[captions]", "text_align.layers=[1,2]"]
    r = run_cli("train", STAGE1, "output_dir=A", *QUIET, *on, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ok = run_cli("train", STAGE1, "output_dir=N", *QUIET, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    a = [json.loads(x) for x in (tmp_path / "A" / "logs" / "metrics.jsonl").read_text().splitlines()]
    n = [json.loads(x) for x in (tmp_path / "N" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert all(rec["text_align"] > 0 for rec in a) and "text_align" not in n[0]
    assert a[0]["loss"] == pytest.approx(n[0]["loss"], rel=1e-6)  # the logged loss is the cross-entropy alone
    assert a[-1]["loss"] != n[-1]["loss"]  # the term moved the training
    bad = run_cli(
        "train", STAGE1, "output_dir=E", *QUIET, "text_align.sources=[captions]", "text_align.layers=[99]", cwd=tmp_path
    )
    assert bad.returncode != 0 and "text_align.layers=[99]" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "E" / "model").exists()


def test_the_standardized_distance_weighs_every_dimension_not_the_massive_ones():
    g = torch.Generator().manual_seed(1)
    items = [enc([1, P, P, 4, 5, 6], [x := IGNORE_INDEX, x, x, x, 5, 6]), enc([1, P, P, 4, 9], [x, x, x, x, 9])]
    p = plan(items, frozenset({"captions"}), 2, pad_id=0)
    teacher = [torch.randn(2, p.input_ids.shape[1], 8, generator=g)]
    student = [torch.randn(2, 6, 8, generator=g)]
    ts = torch.cat([teacher[0][j, p.teacher_pos[j]] for j in range(2)])
    sd = ts.std(dim=0, correction=0)
    want = sum(
        float((((student[0][r, p.student_pos[j]] - teacher[0][j, p.teacher_pos[j]]) / sd) ** 2).mean(-1).sum())
        for j, r in enumerate(p.rows)
    )
    assert align_sum(student, teacher, p, "standardized").item() == pytest.approx(want, rel=1e-5)
    # the student is right on dimension 0 and wrong on the rest; make dimension 0 massive (x1000 in both): the
    # normalised distance then barely sees the error, the standardized one is unchanged
    for j, r in enumerate(p.rows):
        student[0][r, p.student_pos[j], 0] = teacher[0][j, p.teacher_pos[j], 0]
    before = align_sum(student, teacher, p, "standardized").item()
    big = [student[0].clone()], [teacher[0].clone()]
    big[0][0][..., 0] *= 1000
    big[1][0][..., 0] *= 1000
    assert align_sum(*big, p, "standardized").item() == pytest.approx(before, rel=1e-4)
    assert align_sum(*big, p, "norm").item() < 0.01 * align_sum(student, teacher, p, "norm").item()


def test_an_unknown_distance_is_refused():
    with pytest.raises(ConfigError, match="text_align.distance='l1'.*norm or standardized"):
        TextAlignConfig(sources=["captions"], distance="l1")
