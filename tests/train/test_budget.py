"""train.time_budget_min (owl.train.budget): the step count fitted to the budget once, from the run's own step
times, kept across a resume (which then ends bit-identical to the uninterrupted run), and its config errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from owl.errors import ConfigError
from owl.train import budget as tb
from owl.train import checkpoint as ckpt
from owl.train.config import load_train_config
from owl.train.loop import train
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ROOT / "configs" / "tiny" / "stage1.yaml"


def test_fitted_steps_rounds_down_to_tens_within_the_run_and_the_cap():
    assert tb.fitted_steps(3, 40, 90.0, 6.0) == 10  # 3 + 15 = 18 -> 10
    assert tb.fitted_steps(21, 1000, 600.0, 2.0) == 320  # 21 + 300
    assert tb.fitted_steps(21, 300, 600.0, 2.0) == 300  # the cap
    assert tb.fitted_steps(21, 300, -5.0, 2.0) == 21  # over budget already: stop now
    assert tb.fitted_steps(3, 40, 30.0, 6.0) == 3  # 3 + 5 = 8 rounds to 0: never below the step reached


def test_the_clock_times_the_window_after_the_first_step(monkeypatch):
    now = iter([100.0, 101.5, 105.5, 106.0])  # start, end of step 1, end of step 3 (timing), end (elapsed)
    monkeypatch.setattr(tb.time, "perf_counter", lambda: next(now))
    clock = tb.TimeBudget(minutes=1, measure=2, seconds_before=10.0)  # started at 100
    assert not clock.after_step()  # step 1 ends at 101.5: warm-up, the window starts
    assert not clock.after_step()
    assert clock.after_step()  # two steps timed
    assert clock.seconds_per_step() == pytest.approx((105.5 - 101.5) / 2)
    assert clock.elapsed() == pytest.approx(10.0 + 6.0)


def test_the_window_holds_whole_image_gain_periods():
    assert tb.window(20, 15) == 30 and tb.window(30, 15) == 30 and tb.window(1, 15) == 15
    assert tb.window(20, 0) == 20


def test_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="time_budget_min=0"):
        load_train_config(STAGE1, ["train.time_budget_min=0"])
    with pytest.raises(ConfigError, match="time_budget_measure=0"):
        load_train_config(STAGE1, ["train.time_budget_min=5", "train.time_budget_measure=0"])


def _cfg(out: Path, *extra: str):
    return load_train_config(
        STAGE1,
        [
            f"output_dir={out}",
            "train.progress=false",
            "train.tensorboard=false",
            "train.max_steps=40",
            "train.time_budget_min=2",
            "train.time_budget_measure=2",
            "checkpoint.every=5",
            "checkpoint.keep=5",
            *extra,
        ],
    )


@pytest.fixture()
def slow_steps(monkeypatch):
    """Every step 'takes' 6 s and 30 s have gone when the count is fixed: 90 s left of 120 fit 15 more steps
    after step 3 (the first plus two timed), 18 rounded down to 10."""
    monkeypatch.chdir(ROOT)  # the tiny recipe's data paths are relative to the repository root
    monkeypatch.setattr(tb.TimeBudget, "seconds_per_step", lambda _self: 6.0)
    monkeypatch.setattr(tb.TimeBudget, "elapsed", lambda self: self.seconds_before + 30.0)


@pytest.mark.usefixtures("slow_steps")
def test_the_run_ends_at_the_fitted_count_and_resumes_to_the_same_weights(tmp_path, capsys):
    full = train(_cfg(tmp_path / "full", "checkpoint.every=3"))
    out = capsys.readouterr().out
    assert "time budget 2 min: 6.00 s/step over 2 steps -> 10 steps of at most 40" in out
    assert json.loads((full / "lineage.json").read_text())["steps"] == 10
    three = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints" / "step-000003")["state"]["budget"]
    assert three == {"total": 10, "decided": True, "seconds": 0.0}  # fixed at step 3, before its checkpoint
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "full" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(2e-3 * 0.1)  # the cosine schedule ends at the fitted count, not at 40

    # Interrupted after step 3: the resumed run keeps the decided count (whatever its clock says) and ends with the
    # same weights as the run that was not interrupted.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-000003", part / "checkpoints" / "step-000003")
    resumed = train(_cfg(part, "checkpoint.every=3", "train.time_budget_min=100"))
    assert "the step count was fixed at 10 before this resume" in capsys.readouterr().out
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.usefixtures("slow_steps")
def test_a_run_stopped_before_the_count_was_fixed_measures_again_with_the_time_it_spent(tmp_path):
    train(_cfg(tmp_path / "a", "train.max_steps=2", "checkpoint.every=1"))  # ends before the window is complete
    saved = ckpt.load_checkpoint(tmp_path / "a" / "checkpoints" / "step-000002")["state"]["budget"]
    assert saved == {"total": 2, "decided": False, "seconds": 30.0}
    model = train(_cfg(tmp_path / "a", "train.max_steps=40"))  # 60 s left at step 5: 5 + 10 -> 10
    assert json.loads((model / "lineage.json").read_text())["steps"] == 10


def test_owl_train_prints_the_fitted_count_and_runs_it_and_refuses_a_bad_budget_in_one_line(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    quiet = ["train.progress=false", "train.tensorboard=false", "checkpoint.every=0", "train.time_budget_measure=2"]
    r = run_cli("train", STAGE1, "output_dir=B", "train.time_budget_min=0.1", *quiet, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    line = re.search(r"time budget 0\.1 min: [\d.]+ s/step over 2 steps -> (\d+) steps", r.stdout)
    assert line is not None, r.stdout[-3000:]
    steps = json.loads((tmp_path / "B" / "model" / "lineage.json").read_text())["steps"]
    assert steps == int(line.group(1)) <= 40  # whatever this machine's speed: the printed count is the one run
    bad = run_cli("train", STAGE1, "output_dir=E", "train.time_budget_min=-1", *quiet, cwd=tmp_path)
    assert bad.returncode != 0 and "train.time_budget_min=-1" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "E").exists()
