"""The ablation's statistics and report, and one quick-profile seed end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


def test_stage2_only_trains_the_abstractor_a_recipe_freezes_after_stage1(tmp_path, monkeypatch):
    """Without stage 1 a frozen abstractor would stay random: the stage2-only variant trains it; the others keep
    the recipe (here stage 2 freezes it through a stage2.-prefixed override, which reaches stage 2 only)."""
    import owl.train.loop

    seen = {}

    class Stop(Exception):
        pass

    def fake_train(cfg):
        seen[Path(cfg.output_dir).name] = cfg
        if Path(cfg.output_dir).name == "stage2-only":
            raise Stop

    done = {v: {"overall": {"accuracy": 0.3, "chance": 0.2, "n": 1}} for v in ("before", "stage1-only", "both")}
    (tmp_path / "results.json").write_text(json.dumps({"runs": {"0": done}}))
    monkeypatch.setattr(owl.train.loop, "train", fake_train)
    monkeypatch.setattr("owl.world.evaluate.evaluate_world", lambda *a, **k: {"summary": done["both"]}, raising=True)
    monkeypatch.setattr("owl.models.load_model", lambda _d: torch.nn.Linear(1, 1))
    monkeypatch.setattr("owl.processing.OwlProcessor.from_pretrained", classmethod(lambda _cls, _d: None))
    over = ["stage2.trainable.abstractor=frozen", "stage2.trainable.queries=frozen"]
    with pytest.raises(Stop):
        run_ablation(tmp_path, seeds=(0,), profile="quick", overrides=over)
    assert seen["stage1"].trainable.abstractor == "full"  # the stage2. prefix does not reach stage 1
    assert seen["both-no-text"].trainable.abstractor == "frozen"
    assert seen["both-no-text"].trainable.queries == "frozen"
    assert seen["stage2-only"].trainable.abstractor == "full" and seen["stage2-only"].trainable.queries == "full"
    assert seen["stage2-only"].init_from is None


def test_visual_mean_and_the_two_claims_read_off_the_intervals(tmp_path):
    """The visual mean is taken within each seed; the report says whether both stages beat stage 2 alone on it
    (intervals apart) and whether text-only data keeps the text skill (here: intervals overlap)."""
    from owl.world.ablation import VISUAL, verdicts

    def summary(visual: float, text: float) -> dict:
        s = {a: {"accuracy": visual, "chance": 0.2, "n": 60} for a in VISUAL}
        s["text"] = {"accuracy": text, "chance": 0.04, "n": 60}
        s["overall"] = {"accuracy": visual, "chance": 0.2, "n": 420}
        return s

    runs = {
        str(seed): {
            "both": summary(0.50 + 0.01 * seed, 0.80),
            "stage2-only": summary(0.25 + 0.01 * seed, 0.78),
            "both-no-text": summary(0.50, 0.70 + 0.1 * seed),
            "before": {
                "text": {"accuracy": 0.30, "chance": 0.04, "n": 60},
                "overall": {"accuracy": 0.30, "chance": 0.04, "n": 60},
            },
        }
        for seed in range(3)
    }
    runs["0"]["both"]["colour"]["accuracy"] = 0.56  # one ability off the mean: the row averages within the seed
    agg = aggregate({"runs": runs})
    assert agg["both"]["visual mean"][0] == pytest.approx((0.51 + 0.51 + 0.52) / 3)
    lines = verdicts(agg)
    assert "intervals do not overlap" in lines[0] and lines[0].startswith("- both stages vs stage 2 alone")
    assert "intervals overlap" in lines[1] and "text" in lines[1]
    assert len(lines) == 3 and "vs the untuned LLM" in lines[2] and "both higher" in lines[2]
    # paired by seed: both - stage2-only is 0.26, 0.25, 0.25 by seed, so the difference's interval is tight
    assert "paired difference" not in lines[0]  # no raw results given
    paired = verdicts(agg, {"runs": runs})
    assert "paired difference +25.3 ± 1.4 over 3 seeds" in paired[0] and "(excludes 0)" in paired[0]
    assert "paired difference +0.0 ± 24.8 over 3 seeds (includes 0)" in paired[1]
    text = write_report(tmp_path, {"runs": runs}).read_text()
    assert "| visual mean | 20.0 |" in text and "both higher, intervals do not overlap" in text
    assert text.count("| visual mean |") == 1
    assert "| overall | 20.0 |" in text  # not the untuned LLM's overall row, which is over the text items only
    one = verdicts(aggregate({"runs": {"0": runs["0"]}}))
    assert all("one seed" in line for line in one)
