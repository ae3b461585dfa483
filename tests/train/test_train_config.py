"""Training recipes: validation, overrides, schedules, shipped configs."""

from __future__ import annotations

import glob
import math

import pytest

from owl.configtools import ConfigError
from owl.train.config import ScheduleConfig, load_train_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = """
output_dir: out
data:
  sources: [{name: a, format: captions, path: a.jsonl}]
"""


def test_overrides_and_defaults(tmp_path):
    cfg = load_train_config(
        write(tmp_path, BASE),
        ["optim.lr=3e-4", "trainable.llm=lora", "init_from=x", "train.max_steps=7", "data.mix=per_batch"],
    )
    assert cfg.optim.lr == 3e-4 and cfg.trainable.llm == "lora" and cfg.init_from == "x"
    assert cfg.train.max_steps == 7 and cfg.data.mix == "per_batch" and cfg.uses_lora
    assert cfg.data.sources[0].name == "a" and cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key optim.lrr; did you mean optim.lr"),
        ("trainabel.llm=lora", "unknown config key trainabel; did you mean trainable"),
        ("trainable.llm=partial", "trainable.llm='partial' is unknown; use one of frozen, full, lora"),
        ("trainable.abstractor=lora", "trainable.abstractor=lora is not supported"),
        ("schedule.name=step", "schedule.name='step' is unknown"),
        ("optim.lr_groups.vison=1e-4", "optim.lr_groups.vison is not a module"),
        ("train.epochs=2", "give exactly one of train.max_steps or train.epochs"),
        ("data.sources.0=x", "data.sources"),
    ],
)
def test_errors_name_the_key_and_the_fix(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(write(tmp_path, BASE + "train: {max_steps: 5}\n"), [override])


def test_bad_source_is_a_config_error(tmp_path):
    text = BASE.replace("format: captions", "format: csv")
    with pytest.raises(ConfigError, match=r"data.sources\[0\]|unknown format 'csv'"):
        load_train_config(write(tmp_path, text))


def test_cosine_and_linear_schedules_golden():
    s = ScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    got = [s.factor(i, 10) for i in range(10)]
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert got == pytest.approx(expected, abs=1e-12)
    lin = ScheduleConfig(name="linear", warmup_steps=0)
    assert [lin.factor(i, 4) for i in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert ScheduleConfig(name="constant", warmup_steps=4).factor(1, 10) == 0.5


def test_wsd_schedule_holds_then_decays_over_the_last_steps():
    s = ScheduleConfig(name="wsd", warmup_steps=2, decay_steps=4, min_lr_ratio=0.2)
    got = [s.factor(i, 10) for i in range(10)]
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0] + [0.2 + 0.8 * (1 - k / 4) for k in range(4)]
    assert got == pytest.approx(expected, abs=1e-12)
    # decay longer than the run after warmup: the decay starts right after warmup
    assert ScheduleConfig(name="wsd", warmup_steps=2, decay_steps=50).factor(2, 10) == 1.0
    with pytest.raises(ConfigError, match="decay_steps=0 must be > 0"):
        ScheduleConfig(name="wsd")
    with pytest.raises(ConfigError, match="applies to schedule.name=wsd only"):
        ScheduleConfig(name="cosine", decay_steps=5)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/**/stage*.yaml", recursive=True)))
def test_shipped_recipes_parse(path):
    cfg = load_train_config(path)
    assert cfg.output_dir and cfg.data.sources


def test_paper_hyperparameters_in_7b_recipes():
    s1 = load_train_config("configs/mplug-owl-7b/stage1.yaml")
    s2 = load_train_config("configs/mplug-owl-7b/stage2.yaml")
    assert (s1.trainable.vision, s1.trainable.abstractor, s1.trainable.llm) == ("full", "full", "frozen")
    assert s1.optim.betas == (0.9, 0.98) and s1.optim.eps == 1e-6 and s1.schedule.name == "cosine"
    assert s1.train.max_steps == 50_000 and s1.data.max_length == 512
    assert (s2.trainable.vision, s2.trainable.abstractor, s2.trainable.llm) == ("frozen", "full", "lora")
    assert s2.optim.lr == 2e-5 and s2.optim.betas == (0.9, 0.999) and s2.schedule.warmup_steps == 50
    assert s2.train.max_steps == 2000 and s2.data.max_length == 1024 and s2.data.mix == "per_batch"
    assert (s2.lora.r, s2.lora.alpha, s2.lora.dropout) == (8, 32, 0.05)
