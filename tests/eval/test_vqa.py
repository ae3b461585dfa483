"""VQAv2 scoring: the official normalisation and leave-one-out accuracy against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from owl.errors import DataError
from owl.eval import vqa
from owl.eval.bootstrap import interval
from tests.eval.conftest import eval_main


@pytest.mark.parametrize(
    ("prediction", "normalised"),
    [
        ("two", "2"),  # number words to digits
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("Yes.", "yes"),  # a period not before a digit goes
        ("yes", "yes"),
        ("2.5", "2.5"),  # ... one before a digit stays
        ("3.", "3"),
        ("1,000", "1000"),  # a comma between digits: punctuation deleted, not spaced
        ("1,000 people!", "1000 people"),  # ... and then every listed mark is deleted
        ("black-white", "black white"),  # a mark touching no space becomes a space
        ("black - white", "black white"),  # one touching a space is deleted
        ("A dog", "dog"),  # articles dropped
        ("the Eiffel tower", "eiffel tower"),
        ("an apple", "apple"),
        ("dont know", "don't know"),  # contractions get their apostrophe
        ("isnt", "isn't"),
        ("Im", "im"),  # sic: the official map's capitalised keys never match (words are lower-cased first)
        ("  red\n", "red"),
        ("left\tside", "left side"),
        ("(b)", "b"),
    ],
)
def test_normalisation_follows_the_official_script(prediction, normalised):
    assert vqa.normalize_answer(prediction) == normalised


def test_accuracy_over_the_ten_leave_one_out_subsets():
    assert vqa.accuracy("two", ["2"] * 10) == 1.0
    assert vqa.accuracy("Yes.", ["yes"] * 10) == 1.0
    # 3 annotators said 1000 (one wrote "1,000"): dropping one of them leaves 2 matches (2/3), dropping another 3 (1)
    assert vqa.accuracy("1,000", ["1000", "1000", "1,000"] + ["many"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    # 2 of 10 said dog: 1 match left when one of them is dropped (1/3), 2 otherwise (2/3): 0.6
    assert vqa.accuracy("A dog", ["dog", "dog"] + ["cat"] * 8) == pytest.approx(0.6)
    assert vqa.accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    assert vqa.accuracy("green", ["red"] * 10) == 0.0
    assert vqa.accuracy("don't know", ["don't know"] * 10) == 1.0
    # sic: human answers all alike are compared as given, so "two" never matches a prediction normalised to "2"
    assert vqa.accuracy("two", ["two"] * 10) == 0.0
    # human answers that differ get the punctuation step only (no lower-casing, no number words)
    assert vqa.accuracy("yes", ["yes."] * 4 + ["no"] * 6) == 1.0


def write_vqa(tmp_path):
    """A three-question VQAv2 set in the published files."""
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 1, "question": "How many dogs?", "question_id": 10},
            {"image_id": 1, "question": "Is it sunny?", "question_id": 11},
            {"image_id": 2, "question": "What animal?", "question_id": 20},
        ],
    }

    def ann(qid, answers, kind, qtype):
        return {
            "question_id": qid,
            "image_id": qid // 10,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
            "multiple_choice_answer": answers[0],
            "answer_type": kind,
            "question_type": qtype,
        }

    annotations = {
        "annotations": [
            ann(10, ["2"] * 10, "number", "how many"),
            ann(11, ["yes"] * 10, "yes/no", "is it"),
            ann(20, ["dog", "dog"] + ["cat"] * 8, "other", "what"),
        ]
    }
    q = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    q.write_text(json.dumps(questions))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    return q


def test_score_per_answer_type_with_intervals(tmp_path):
    q = write_vqa(tmp_path)
    items, files = vqa.load_vqa(q, vqa.default_annotations(q))
    assert [f.name for f in files] == [
        "v2_OpenEnded_mscoco_val2014_questions.json",
        "v2_mscoco_val2014_annotations.json",
    ]
    assert items[0].image.name == "COCO_val2014_000000000001.jpg"
    scores = vqa.score(items, {10: "two", 11: "No", 20: "a dog"})
    assert scores["accuracy"] == pytest.approx(100 * (1 + 0 + 0.6) / 3, abs=1e-4)
    assert scores["per_answer_type"]["number"]["accuracy"] == 100.0
    assert scores["per_answer_type"]["yes/no"]["accuracy"] == 0.0
    assert scores["per_answer_type"]["other"]["accuracy"] == pytest.approx(60.0)
    assert scores["per_question_type"]["what"] == {"n": 1, "accuracy": pytest.approx(60.0)}
    low, high = scores["ci95"]
    assert 0.0 <= low <= scores["accuracy"] <= high <= 100.0
    assert vqa.score(items, {10: "two", 11: "No", 20: "a dog"})["ci95"] == [low, high]  # seeded
    with pytest.raises(DataError, match="1 questions unanswered"):
        vqa.score(items, {10: "2", 11: "yes"})


def test_bootstrap_interval_is_seeded_and_stratified():
    values = np.array([1.0] * 30 + [0.0] * 70)
    a, b = interval(values, seed=1), interval(values, seed=1)
    assert a == b and a[0] < 30.0 < a[1]
    assert interval(values, seed=2) != a
    # parts resampled on their own: a part that is all right adds exactly 100 to every draw
    both = interval([values, np.ones(5)], seed=1)
    assert both == [x + 100.0 for x in a]
    assert interval(np.array([])) is None


def test_scoring_a_results_file_through_the_cli(tmp_path, capsys):
    q = write_vqa(tmp_path)
    results = tmp_path / "results.json"
    rows = [
        {"question_id": 10, "answer": "2"},
        {"question_id": 11, "answer": "yes"},
        {"question_id": 20, "answer": "cat"},
    ]
    results.write_text(json.dumps(rows))
    assert eval_main(["vqa", "--data", q, "--predictions", results, "--out", tmp_path / "run"]) == 0
    out = capsys.readouterr().out
    # cat: 8 of 10; dropping a cat leaves 7 matches (1), dropping a dog 8 (1): 1.0
    assert "owl eval vqa: 3 questions, accuracy 100.00 [100.00, 100.00]" in out
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert scores["accuracy"] == 100.0 and manifest["model"] is None and manifest["status"] == "complete"
    assert set(manifest["data"]["files"]) == {q.name, "v2_mscoco_val2014_annotations.json", "results.json"}


def test_cli_errors_are_one_line(tmp_path, capsys):
    q = write_vqa(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question_id": 10, "answer": "2"}]))
    assert eval_main(["vqa", "--data", q, "--predictions", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("owl: error: the predictions do not match the questions: 2 questions unanswered")
    assert len(err.splitlines()) == 1
    assert eval_main(["vqa", "--predictions", bad]) == 2
    assert "give --data too" in capsys.readouterr().err
