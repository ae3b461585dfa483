"""The ablation's statistics and report, and one quick-profile seed end to end."""

from __future__ import annotations

import pytest

from owl.world.ablation import VARIANTS, aggregate, interval, run_ablation, write_report


def test_interval_is_a_95_percent_t_interval():
    mean, half = interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
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


def test_quick_ablation_one_seed(tmp_path):
    report = run_ablation(tmp_path, seeds=(0,), profile="quick", overrides=["train.max_steps=3"])
    text = report.read_text()
    for v in VARIANTS:
        assert v in text
    assert (tmp_path / "seed0" / "stage2-only" / "model" / "config.json").exists()
    assert "Text-only skill of the untuned LLM" in text
