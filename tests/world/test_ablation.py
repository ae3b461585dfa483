"""The ablation's statistics and report, and one quick-profile seed end to end."""

from __future__ import annotations

import json

import pytest

from owl.world.ablation import VARIANTS, aggregate, interval, run_ablation, write_report
from tests.helpers import run_cli


def test_interval_is_a_95_percent_t_interval():
    mean, half = interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)
    assert interval([0.4]) == (0.4, 0.0)


def test_report_from_synthetic_results(tmp_path):
    s = {"colour": {"accuracy": 0.9, "chance": 1 / 6, "n": 10}, "overall": {"accuracy": 0.5, "chance": 0.2, "n": 10}}
    low = {k: dict(v, accuracy=v["accuracy"] - 0.2) for k, v in s.items()}
    results = {"runs": {"0": {"both": s, "stage1-only": low}, "1": {"both": low, "stage1-only": low}}}
    agg = aggregate(results)
    assert agg["both"]["colour"][0] == pytest.approx(0.8) and agg["both"]["colour"][2] == 2
    text = write_report(tmp_path, results).read_text()
    assert "| colour | 16.7 | 70.0 ± 0.0 | 80.0 ± 127.1 |" in text
    assert (tmp_path / "ablation.png").stat().st_size > 5000


def test_quick_ablation_two_seeds_through_the_cli(tmp_path):
    r = run_cli("world", "ablation", "--out", tmp_path, "--seeds", "0,1", "--profile", "quick", "train.max_steps=3")
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "report.md").read_text()
    for v in VARIANTS:
        assert v in text
    for seed in (0, 1):
        assert (tmp_path / f"seed{seed}" / "stage2-only" / "model" / "config.json").exists()
    assert "Text-only skill of the untuned LLM" in text
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert runs["1"]["before"] == runs["0"]["before"]  # the untuned LLM is measured once, not per seed
    assert not (tmp_path / "seed1" / "eval-before").exists()


def test_ablation_resumes_finished_runs(tmp_path, monkeypatch):
    """A rerun skips every (seed, variant) already in results.json: nothing is trained again."""
    import owl.train.loop

    done = {v: {"overall": {"accuracy": 0.3, "chance": 0.2, "n": 1}} for v in ("before", *VARIANTS)}
    (tmp_path / "results.json").write_text(json.dumps({"runs": {"0": done}}))
    monkeypatch.setattr(owl.train.loop, "train", lambda _cfg: pytest.fail("trained again"))
    assert "both" in run_ablation(tmp_path, seeds=(0,), profile="quick").read_text()
