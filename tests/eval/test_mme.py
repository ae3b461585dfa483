"""MME scoring: the official yes/no extraction, acc / acc+ arithmetic, totals, both data layouts."""

from __future__ import annotations

import json

import pytest

from owl.errors import DataError
from owl.eval import mme
from tests.eval.conftest import eval_main
from tests.helpers import random_image


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("Yes, there is a dog.", "yes"),
        ("NO", "no"),
        ("No.", "no"),
        ("no, it is not", "no"),
        ("Not sure", "no"),  # sic: the first four characters hold "no"
        ("I think yes", "other"),  # ... and only they count
        ("There is a dog", "other"),
        ("", "other"),
        (" yes", "yes"),
    ],
)
def test_yes_no_extraction_is_the_official_rule(answer, label):
    assert mme.extract_yes_no(answer) == label


def rows() -> list[mme.MMERow]:
    """existence: 3 images (2, 1 and 1 right); count: 1 image (both right); code_reasoning: 1 image (none)."""
    r = mme.MMERow
    return [
        r("existence", "a.jpg", "Is there a dog?", "Yes", "Yes"),
        r("existence", "a.jpg", "Is there a cat?", "No", "no."),
        r("existence", "b.jpg", "Is there a car?", "Yes", "No, it is not"),
        r("existence", "b.jpg", "Is there a bus?", "No", "no"),
        r("existence", "c.jpg", "Is there a man?", "Yes", "I think yes"),
        r("existence", "c.jpg", "Is there a cow?", "No", "Not sure"),
        r("count", "d.jpg", "Are there two?", "Yes", "yes"),
        r("count", "d.jpg", "Are there three?", "No", "No"),
        r("code_reasoning", "e.png", "Prints 3?", "No", "Yes"),
        r("code_reasoning", "e.png", "Prints 4?", "Yes", "The output is 4"),
    ]


def test_acc_acc_plus_and_totals_by_hand():
    s = mme.score(rows())
    ex = s["subtasks"]["existence"]
    assert ex["acc"] == pytest.approx(100 * 4 / 6, abs=1e-4)  # questions right / questions
    assert ex["acc_plus"] == pytest.approx(100 / 3, abs=1e-4)  # images with both right / images
    assert ex["score"] == pytest.approx(100.0, abs=1e-3)
    assert ex["other"] == 1 and ex["images"] == 3
    assert s["subtasks"]["count"]["score"] == 200.0
    assert s["subtasks"]["code_reasoning"] == {
        "images": 1, "questions": 2, "acc": 0.0, "acc_plus": 0.0, "score": 0.0, "ci95": [0.0, 0.0], "other": 1
    }  # fmt: skip
    assert s["perception"]["score"] == pytest.approx(300.0, abs=1e-3)
    assert s["perception"]["max"] == 2000 and s["perception"]["subtasks"] == 2
    assert "OCR" in s["perception"]["missing"]
    assert s["cognition"]["score"] == 0.0 and s["cognition"]["max"] == 800
    low, high = s["perception"]["ci95"]
    assert 200.0 <= low <= 300.0 <= high <= 400.0  # count is always 200; existence moves between 0 and 200
    low, high = ex["ci95"]
    assert 0.0 <= low <= 100.0 <= high <= 200.0


def test_an_image_needs_two_questions():
    with pytest.raises(DataError, match="every image has two questions"):
        mme.score(rows()[:3])
    bad = rows()
    bad[0].answer = "Maybe"
    with pytest.raises(DataError, match="must be Yes or No"):
        mme.score(bad)


def write_release(root):
    """A two-subtask MME folder in the release layout: existence (image + txt side by side) and posters
    (images/ + questions_answers_YN/)."""
    (root / "existence").mkdir(parents=True)
    for i, name in enumerate(["a", "b"]):
        random_image(i).save(root / "existence" / f"{name}.jpg")
        (root / "existence" / f"{name}.txt").write_text(
            f"Is there a {name}? Please answer yes or no.\tYes\nIs there a z? Please answer yes or no.\tNo\n"
        )
    (root / "posters" / "images").mkdir(parents=True)
    (root / "posters" / "questions_answers_YN").mkdir()
    random_image(5).save(root / "posters" / "images" / "p1.png")
    (root / "posters" / "questions_answers_YN" / "p1.txt").write_text("Is it Jaws?\tYes\nIs it Alien?\tNo\n")
    return root


def test_release_layout_and_results_round_trip(tmp_path, capsys):
    root = write_release(tmp_path / "MME")
    items, files = mme.load_mme(root)
    assert [(r.task, r.image_name, r.answer) for r in items] == [
        ("existence", "a.jpg", "Yes"),
        ("existence", "a.jpg", "No"),
        ("existence", "b.jpg", "Yes"),
        ("existence", "b.jpg", "No"),
        ("posters", "p1.png", "Yes"),
        ("posters", "p1.png", "No"),
    ]
    assert items[4].image == root / "posters" / "images" / "p1.png" and len(files) == 3
    for r, p in zip(items, ["Yes", "No", "Yes", "Yes", "yes\tsure", "No"]):
        r.prediction = p
    paths = mme.write_results(tmp_path / "results", items)
    assert [p.name for p in paths] == ["existence.txt", "posters.txt"]
    assert (tmp_path / "results" / "posters.txt").read_text().splitlines()[0] == "p1.png\tIs it Jaws?\tYes\tyes sure"
    assert eval_main(["mme", "--predictions", tmp_path / "results", "--out", tmp_path / "scored"]) == 0
    out = capsys.readouterr().out
    assert "| existence | 2 | 75.00 | 50.00 | 125.00 |" in out
    assert "| posters | 1 | 100.00 | 100.00 | 200.00 |" in out
    assert "**perception** (2 of 10 subtasks) | | | | **325.00** / 2000" in out
    scores = json.loads((tmp_path / "scored" / "scores.json").read_text())
    assert scores["perception"]["score"] == 325.0 and scores["cognition"]["subtasks"] == 0


def test_eval_tool_listing_layout(tmp_path):
    root = tmp_path / "MME"
    (root / "eval_tool" / "Your_Results").mkdir(parents=True)
    (root / "OCR").mkdir()
    random_image(1).save(root / "OCR" / "x.jpg")
    (root / "eval_tool" / "Your_Results" / "OCR.txt").write_text("x.jpg\tQ1?\tYes\nx.jpg\tQ2?\tNo\n")
    items, files = mme.load_mme(root)
    assert [(r.task, r.image, r.question) for r in items] == [
        ("OCR", root / "OCR" / "x.jpg", "Q1?"),
        ("OCR", root / "OCR" / "x.jpg", "Q2?"),
    ]
    with pytest.raises(DataError, match="holds no MME subtask"):
        mme.load_mme(tmp_path / "MME" / "OCR")
