"""Model-backed runs of the standard scorers on tiny sets: outputs in the published formats, scores, manifests,
resume; and `owl eval world` against `owl world eval`."""

from __future__ import annotations

import json

from owl.cli import main
from tests.eval.conftest import eval_main
from tests.eval.test_mmbench import base_rows, write_tsv
from tests.eval.test_mme import write_release
from tests.eval.test_vqa import write_vqa
from tests.helpers import random_image

FLAGS = ["--max-new-tokens", "4", "--no-progress", "--bootstrap", "200"]


def manifest(run) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_vqa_run_scores_and_resumes(eval_model_dir, tmp_path, capsys):
    q = write_vqa(tmp_path)
    (tmp_path / "val2014").mkdir()
    for i in (1, 2):
        random_image(i).save(tmp_path / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    run = tmp_path / "run"
    assert eval_main(["vqa", eval_model_dir, "--data", q, "--out", run, *FLAGS]) == 0
    assert "owl eval vqa: 3 questions, accuracy" in capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert [r["question_id"] for r in results] == [10, 11, 20] and all(
        set(r) == {"question_id", "answer"} for r in results
    )
    m = manifest(run)
    assert m["status"] == "complete" and m["scores"]["n"] == 3 and m["data"]["images"]["count"] == 2
    assert m["generation"]["do_sample"] is False and m["benchmark_args"]["prompt"].startswith("{question}")
    assert eval_main(["vqa", eval_model_dir, "--data", q, "--out", run, *FLAGS]) == 0  # nothing left to answer
    assert manifest(run)["counts"]["answered_this_run"] == 0
    assert json.loads((run / "results.json").read_text()) == results
    # the scorer alone on the written results gives the run's score
    score = ["vqa", "--data", q, "--predictions", run / "results.json", "--bootstrap", "200", "--out", tmp_path / "s"]
    assert eval_main(score) == 0
    assert f"accuracy {m['scores']['accuracy']:.2f}" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "scores.json").read_text()) == m["scores"]


def test_mme_run_writes_the_official_results(eval_model_dir, tmp_path, capsys):
    root = write_release(tmp_path / "MME")
    run = tmp_path / "run"
    assert eval_main(["mme", eval_model_dir, "--data", root, "--out", run, *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "| existence | 2 |" in out and "| posters | 1 |" in out and "**perception** (2 of 10 subtasks)" in out
    lines = (run / "results" / "existence.txt").read_text().splitlines()
    assert len(lines) == 4 and all(len(x.split("\t")) == 4 for x in lines)
    assert lines[0].startswith("a.jpg\tIs there a a? Please answer yes or no.\tYes\t")
    m = manifest(run)
    assert m["status"] == "complete" and m["scores"]["perception"]["subtasks"] == 2
    assert eval_main(["mme", "--predictions", run / "results", "--bootstrap", "200", "--out", tmp_path / "s"]) == 0
    assert json.loads((tmp_path / "s" / "scores.json").read_text()) == m["scores"]


def test_mmbench_run_asks_every_rotation(eval_model_dir, tmp_path, capsys):
    data = tmp_path / "mmbench.tsv"
    write_tsv(data, base_rows())
    run = tmp_path / "run"
    assert eval_main(["mmbench", eval_model_dir, "--data", data, "--out", run, *FLAGS]) == 0
    assert "owl eval mmbench: 2 questions (6 asked), circular accuracy" in capsys.readouterr().out
    judged = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert [j["index"] for j in judged] == [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001]
    m = manifest(run)
    assert m["benchmark_args"]["circular"] is True and m["scores"]["copies"] == 6
    log = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(r["prompt_tokens"] > 5 for r in log)  # the picture's visual tokens are in
    assert eval_main(["mmbench", "--data", data, "--predictions", run / "predictions.jsonl", "--bootstrap", "200"]) == 0
    assert f"circular accuracy {m['scores']['circular']:.2f}" in capsys.readouterr().out


def test_world_under_eval_matches_world_eval(eval_model_dir, tmp_path, capsys):
    from owl.world import WorldConfig, build_world

    world = tmp_path / "world"
    build_world(world, WorldConfig(), seed=3, n_captions=2, n_instructions=2, n_text=1, n_eval=24, progress=False)
    assert main(["world", "eval", str(eval_model_dir), "--world", str(world), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    run = tmp_path / "run"
    args = ["world", eval_model_dir, "--world", world, "--out", run, "--json", "--no-progress", "--bootstrap", "200"]
    assert eval_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {a: s["accuracy"] for a, s in summary.items()} == {a: s["accuracy"] for a, s in before.items()}
    assert all(len(s["ci95"]) == 2 for s in summary.values())
    m = manifest(run)
    assert m["benchmark"] == "world" and m["model"]["id"] == "tiny-owl" and m["generation"]["max_new_tokens"] == 16
    rescored = ["world", "--world", world, "--predictions", run / "predictions.jsonl", "--json", "--bootstrap", "200"]
    assert eval_main(rescored) == 0
    assert json.loads(capsys.readouterr().out) == summary
