"""`owl eval owleval` on a tiny random model over the whole published set: answers, manifest, rerun, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from owl.conversation import IMAGE_TOKEN
from owl.eval.owleval import dialogue_sample, dialogues, load_questions
from tests.eval.conftest import eval_main
from tests.eval.data import owleval_dir

OWLEVAL = owleval_dir()
pytestmark = pytest.mark.skipif(not (OWLEVAL / "questions.jsonl").is_file(), reason="needs ../shared/owleval")
FLAGS = ["--max-new-tokens", "8", "--batch-size", "16", "--no-progress"]


def lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(eval_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("owleval") / "run"
    assert eval_main(["owleval", eval_model_dir, "--data", OWLEVAL, "--out", out, *FLAGS]) == 0
    return out


def test_dialogues_carry_the_models_own_answers():
    questions = load_questions(OWLEVAL / "questions.jsonl", OWLEVAL / "cases")
    dlgs = dialogues(questions)
    assert len(questions) == 82 and len(dlgs) == 50
    floor_plan = next(d for d in dlgs if d[0]["image"] == "10.jpg")
    assert [q["question_id"] for q in floor_plan] == list(range(15, 23))
    sample = dialogue_sample(floor_plan, 2, ["three", "4 m"], OWLEVAL / "cases" / "10.jpg")
    roles = [(m.role, m.content) for m in sample.messages]
    assert roles == [
        ("user", f"{IMAGE_TOKEN}\n{floor_plan[0]['question']}"),
        ("assistant", "three"),
        ("user", floor_plan[1]["question"]),
        ("assistant", "4 m"),
        ("user", floor_plan[2]["question"]),
    ]
    assert sample.images == [str(OWLEVAL / "cases" / "10.jpg")]


def test_all_82_answers_in_the_published_format_with_a_manifest(first_run):
    answers = lines(first_run / "answers.jsonl")
    published = lines(OWLEVAL / "answers" / "mPLUG_Owl_7b_answer.jsonl")
    assert [a["question_id"] for a in answers] == [p["question_id"] for p in published] == list(range(1, 83))
    assert all(list(a) == ["image", "question_id", "question", "answer", "model_id"] for a in answers)
    assert {a["model_id"] for a in answers} == {"tiny-owl"}
    questions = {q["question_id"]: q for q in lines(OWLEVAL / "questions.jsonl")}
    assert all(a["image"] == questions[a["question_id"]]["image"] for a in answers)
    assert len({a["answer"] for a in answers}) > 40  # the random model answers each prompt differently
    m = json.loads((first_run / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["answered"] == 82 and m["counts"]["errors"] == {}
    assert m["model"]["id"] == "tiny-owl" and len(m["model"]["sha256"]) == 64
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(m["model"]["files"])
    assert m["model"]["template"] == "mplug-owl-v1" and m["model"]["compat"] == "owl"
    assert m["generation"]["max_new_tokens"] == 8 and m["generation"]["do_sample"] is False
    assert m["run"] == {"batch_size": 16, "device": "cpu", "dtype": "fp32"}
    assert m["data"]["files"] == {"questions.jsonl": m["data"]["files"]["questions.jsonl"]}
    assert m["data"]["images"]["count"] == 50 and "cases/10.jpg" in m["data"]["images"]["files"]
    assert m["software"]["torch"] and m["software"]["transformers"] and m["machine"]["cpu"]
    assert m["wall_seconds"] > 0 and m["outputs"]["answers.jsonl"]


def test_a_manifest_rerun_reproduces_the_answers(first_run, tmp_path, capsys):
    out = tmp_path / "again"
    assert eval_main(["owleval", "--manifest", first_run / "manifest.json", "--out", out, "--no-progress"]) == 0
    assert (out / "answers.jsonl").read_bytes() == (first_run / "answers.jsonl").read_bytes()
    old, new = (json.loads((d / "manifest.json").read_text()) for d in (first_run, out))
    for key in ("model", "data", "generation", "run", "benchmark_args"):
        assert new[key] == old[key], key
    capsys.readouterr()
    assert eval_main(["owleval", "--manifest", first_run / "manifest.json", "--out", tmp_path / "x", "--greedy"]) == 2
    assert capsys.readouterr().err.strip() == (
        "owl: error: --manifest reruns with the recorded generation settings; drop --greedy/--sample"
    )


def test_resume_after_an_interrupted_run_gives_the_same_answers(first_run, eval_model_dir, tmp_path):
    out = tmp_path / "pieces"
    args = ["owleval", eval_model_dir, "--data", OWLEVAL, "--out", out, *FLAGS]
    assert eval_main([*args, "--limit", "30"]) == 0  # stopped after 30 answers: some dialogues half done
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "incomplete" and len(lines(out / "answers.jsonl")) == 30
    with open(out / "generations.jsonl", "a") as f:
        f.write('{"id": "81", "answ')  # what a kill in the middle of a write leaves
    assert eval_main(args) == 0
    assert (out / "answers.jsonl").read_bytes() == (first_run / "answers.jsonl").read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["answered_this_run"] == 52
    assert m["wall_seconds_total"] > m["wall_seconds"]


def test_a_changed_model_or_data_is_one_error_unless_forced(first_run, eval_model_dir, tmp_path, capsys):
    changed = tmp_path / "tiny-owl"
    shutil.copytree(eval_model_dir, changed)
    with open(changed / "tokenizer_config.json", "a") as f:
        f.write("\n")
    base = ["owleval", changed, "--manifest", first_run / "manifest.json", "--no-progress", "--limit", "1"]
    assert eval_main([*base, "--out", tmp_path / "a"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("owl: error: --manifest ") and "model sha256" in err and "tokenizer_config.json" in err
    assert err.endswith("pass --force to run anyway") and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists()
    assert eval_main([*base, "--out", tmp_path / "b", "--force"]) == 0
    assert "warning" in capsys.readouterr().err and len(lines(tmp_path / "b" / "answers.jsonl")) == 1
    data = tmp_path / "owleval"
    shutil.copytree(OWLEVAL, data, ignore=shutil.ignore_patterns("answers"))
    (data / "cases" / "1.jpg").write_bytes((data / "cases" / "2.jpg").read_bytes())
    manifest = first_run / "manifest.json"
    assert eval_main(["owleval", "--manifest", manifest, "--data", data, "--out", tmp_path / "c", "--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert "data sha256" in err and "cases/1.jpg" in err


def test_resuming_with_other_settings_is_refused(first_run, eval_model_dir, capsys):
    args = ["owleval", eval_model_dir, "--data", OWLEVAL, "--out", first_run, "--max-new-tokens", "5"]
    assert eval_main(args) == 2
    err = capsys.readouterr().err
    assert "holds another run's answers (generation: max_new_tokens 8 -> 5)" in err
