"""``optim.lr_groups`` reaching the optimizer: per-module lr, no-decay groups, lr 0 leaves a module out, the schedule
scales every group, and ``owl train`` logs ``lr_by_group``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from owl.config import preset
from owl.models import build_model
from owl.train.config import LoraSpec, OptimConfig, ScheduleConfig, Trainable
from owl.train.trainable import NO_DECAY_NAMES, apply_trainable, module_of, param_groups
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ROOT / "configs" / "tiny" / "stage1.yaml"
CAPTIONS = ROOT / "configs" / "tiny" / "data" / "captions.jsonl"
WD = 0.1


def _tiny(trainable: Trainable, lora: LoraSpec | None = None):
    torch.manual_seed(0)
    model, _, _ = build_model(preset("tiny"))
    return apply_trainable(model, trainable, lora or LoraSpec())


def _names(model) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _check_groups(model, optim: OptimConfig) -> list[dict]:
    """Assert the invariants of ``param_groups`` for ``model`` and return the groups."""
    groups = param_groups(model, optim)
    names = _names(model)
    seen: list[int] = []
    for g in groups:
        module, _, suffix = g["name"].partition(".")
        want = optim.lr_groups.get(module, optim.lr)
        assert g["lr"] == want and g["initial_lr"] == want, g["name"]
        assert want > 0
        no_decay = suffix == "no_decay"
        assert g["weight_decay"] == (0.0 if no_decay else WD), g["name"]
        for p in g["params"]:
            n = names[id(p)]
            assert module_of(n) == module, (n, g["name"])
            assert p.requires_grad, n
            is_no_decay = p.dim() < 2 or any(n.endswith(s) for s in NO_DECAY_NAMES)
            assert is_no_decay == no_decay, (n, g["name"])
            seen.append(id(p))
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    expected = {
        id(p)
        for n, p in model.named_parameters()
        if p.requires_grad and optim.lr_groups.get(module_of(n), optim.lr) > 0
    }
    assert set(seen) == expected
    return groups


def test_every_group_gets_its_module_lr_and_lr_zero_leaves_a_module_out():
    model = _tiny(Trainable(vision="full", abstractor="full", queries="full", llm="full"))
    optim = OptimConfig(lr=1e-3, lr_groups={"vision": 1e-4, "queries": 5e-3, "llm": 0.0}, weight_decay=WD)
    groups = _check_groups(model, optim)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"abstractor", "abstractor.no_decay", "queries.no_decay", "vision", "vision.no_decay"}
    assert by_name["vision"]["lr"] == 1e-4 and by_name["abstractor"]["lr"] == 1e-3
    # The learnable queries and the end-of-image vector are 3-D but never decayed; they are all of "queries".
    names = _names(model)
    assert sorted(names[id(p)] for p in by_name["queries.no_decay"]["params"]) == [
        "abstractor.query_tokens",
        "abstractor.vit_eos",
    ]
    # Biases and LayerNorm weights are in the no-decay groups.
    vision_nd = {names[id(p)] for p in by_name["vision.no_decay"]["params"]}
    assert any(n.endswith("layer_norm1.weight") for n in vision_nd) and any(n.endswith(".bias") for n in vision_nd)
    # lr 0: the LLM is left out of the optimizer altogether and frozen (no gradients computed for it).
    llm = {id(p) for n, p in model.named_parameters() if module_of(n) == "llm"}
    assert llm and not any(p.requires_grad for n, p in model.named_parameters() if module_of(n) == "llm")
    assert not llm & {id(p) for g in groups for p in g["params"]}


def test_llm_lora_group_holds_only_the_adapter():
    model = _tiny(Trainable(vision="frozen", abstractor="full", queries="frozen", llm="lora"))
    optim = OptimConfig(lr=1e-3, lr_groups={"llm": 2e-4}, weight_decay=WD)
    groups = _check_groups(model, optim)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"abstractor", "abstractor.no_decay", "llm"}
    names = _names(model)
    llm = [names[id(p)] for p in by_name["llm"]["params"]]
    assert llm and all("lora_" in n for n in llm) and by_name["llm"]["lr"] == 2e-4


def test_all_lr_zero_is_a_config_error():
    model = _tiny(Trainable(abstractor="full", queries="full"))
    with pytest.raises(ValueError, match="nothing to train"):
        param_groups(model, OptimConfig(lr=1e-3, lr_groups={"abstractor": 0.0, "queries": 0}))


def test_schedule_scales_every_group_from_its_own_peak():
    model = _tiny(Trainable(vision="full", abstractor="full", queries="full", llm="full"))
    optim = OptimConfig(lr=1e-3, lr_groups={"vision": 1e-4, "llm": 3e-4}, weight_decay=WD)
    sched = ScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    total = 6
    groups = param_groups(model, optim)
    peak = {g["name"]: g["lr"] for g in groups}
    assert len(set(peak.values())) == 3  # three distinct lrs, so a mix-up between groups would show
    # As owl/train/loop.py builds them.
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sched.factor(s, total))
    batch = {"input_ids": torch.tensor([[1, 40, 41, 42, 43, 2]]), "labels": torch.tensor([[-100, 40, 41, 42, 43, 2]])}
    for step in range(4):
        f = sched.factor(step, total)
        assert f > 0
        for g in opt.param_groups:
            assert g["initial_lr"] == peak[g["name"]]
            assert math.isclose(g["lr"], peak[g["name"]] * f, rel_tol=1e-12), (step, g["name"])
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
        lr_sched.step()
    assert sched.factor(0, total) != sched.factor(3, total)  # the schedule really moved


def test_a_module_at_lr_zero_leaves_no_gradients_behind(tmp_path, monkeypatch):
    """A module at lr 0 is frozen: no gradients left behind, and what is clipped is what is updated."""
    from owl.configtools import read_yaml
    from owl.train.config import train_config_from_dict
    from owl.train.loop import setup, train_step

    monkeypatch.chdir(tmp_path)
    source = json.dumps([{"name": "captions", "format": "captions", "path": str(CAPTIONS)}])
    cfg = train_config_from_dict(
        read_yaml(STAGE1),
        [
            "output_dir=run",
            "train.max_steps=1",
            "train.batch_size=2",
            "train.progress=false",
            "train.tensorboard=false",
            "trainable.llm=full",
            "optim.lr_groups.llm=0",
            f"data.sources={source}",
        ],
    )
    run = setup(cfg)
    in_optimizer = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    train_step(run)
    left = [n for n, p in run.model.named_parameters() if p.grad is not None]
    assert not left, f"{len(left)} parameters keep a gradient after the step, e.g. {left[:3]}"
    assert {id(p) for p in run.params} == in_optimizer  # what is clipped is what is updated


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_cli_logs_lr_by_group(tmp_path):
    """The real command: overrides of optim.lr_groups show up in logs/metrics.jsonl.

    The data source is overridden to the committed dataset (configs/tiny/data/) so the test does not depend on
    how the recipe gets its data.
    """
    source = json.dumps([{"name": "captions", "format": "captions", "path": str(CAPTIONS)}])
    r = run_cli(
        "train",
        STAGE1,
        "output_dir=run",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.progress=false",
        "train.tensorboard=false",
        "checkpoint.every=0",
        "schedule.warmup_steps=0",
        "schedule.name=constant",
        "optim.lr=2e-3",
        "optim.lr_groups.vision=1e-5",
        "optim.lr_groups.queries=0",
        f"data.sources={source}",
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    records = _metrics(tmp_path / "run")
    assert [rec["step"] for rec in records] == [1, 2]
    for rec in records:
        lrs = rec["lr_by_group"]
        # stage 1: vision, abstractor and queries trainable, the LLM frozen; queries at lr 0 are left out.
        assert set(lrs) == {"vision", "vision.no_decay", "abstractor", "abstractor.no_decay"}, lrs
        assert lrs["vision"] == pytest.approx(1e-5) and lrs["vision.no_decay"] == pytest.approx(1e-5)
        assert lrs["abstractor"] == pytest.approx(2e-3) and lrs["abstractor.no_decay"] == pytest.approx(2e-3)
