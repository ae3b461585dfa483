"""``owl eval report`` on a small synthetic ratings file: counts, undo, kappa, judges, the chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from owl.eval.report import consensus, write_report
from tests.eval.data import owleval_dir

QUESTIONS = [
    {"image": "1.jpg", "question_id": 1, "question": "q1", "ability": "a,b", "category": ["single_turn"]},
    {"image": "2.jpg", "question_id": 2, "question": "q2", "ability": "c", "category": ["single_turn", "multi_turn"]},
    {"image": "2.jpg", "question_id": 3, "question": "q3", "ability": "e,f", "category": ["multi_turn"]},
]


def _row(rater: str, q: int, system: str, rating: str) -> dict:
    return {"rater": rater, "question_id": q, "image": f"{q}.jpg", "system": system, "rating": rating, "time": "t"}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    rows = [
        _row("ann", 1, "mPLUG_Owl_7b:v1", "A"),
        _row("ann", 2, "mPLUG_Owl_7b:v1", "B"),
        _row("ann", 3, "mPLUG_Owl_7b:v1", "D"),
        {"rater": "ann", "undo": True},  # cancels ann's D on q3
        _row("ann", 3, "mPLUG_Owl_7b:v1", "A"),
        _row("ann", 1, "BLIP2", "C"),
        _row("ann", 2, "BLIP2", "D"),
        _row("ann", 3, "BLIP2", "C"),
        _row("bob", 1, "mPLUG_Owl_7b:v1", "A"),
        _row("bob", 2, "mPLUG_Owl_7b:v1", "B"),
        _row("bob", 3, "mPLUG_Owl_7b:v1", "B"),
        _row("bob", 1, "BLIP2", "C"),
        _row("bob", 2, "BLIP2", "D"),
        _row("bob", 3, "BLIP2", "D"),
        _row("judge:gpt", 1, "mPLUG_Owl_7b:v1", "A"),
        _row("judge:gpt", 1, "BLIP2", "D"),
    ]
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ratings, data


def test_consensus_ties_to_worse():
    assert consensus("AB") == "B"
    assert consensus("ABD") == "B"
    assert consensus("A") == "A"


def test_report_counts_undo_kappa_chart(files, tmp_path):
    ratings, data = files
    out = tmp_path / "report"
    report = write_report([ratings], data, out)
    owl = report["counts"]["mPLUG-Owl"]
    # q3: ann A (after undo of D), bob B -> consensus B
    assert owl["overall"] == {"A": 1, "B": 2, "C": 0, "D": 0}
    assert owl["single"] == {"A": 1, "B": 1, "C": 0, "D": 0}
    assert owl["multi"] == {"A": 0, "B": 2, "C": 0, "D": 0}
    assert owl["ability"]["c"] == {"A": 0, "B": 1, "C": 0, "D": 0}
    assert report["per_rater"]["ann"]["mPLUG-Owl"]["overall"] == {"A": 2, "B": 1, "C": 0, "D": 0}
    blip = report["counts"]["BLIP-2"]
    assert blip["overall"] == {"A": 0, "B": 0, "C": 1, "D": 2}
    assert report["human_raters"] == ["ann", "bob"]
    pair = report["agreement"]["pairs"][0]
    assert pair["items"] == 6 and pair["percent_agreement"] == pytest.approx(4 / 6)
    assert -1 <= pair["cohen_kappa"] < 1 and pair["weighted_kappa"] > pair["cohen_kappa"]
    assert report["agreement"]["items_rated_by_several"] == 6
    judge = report["judges"]["judge:gpt"]
    assert judge["items_shared_with_humans"] == 2
    assert judge["counts"]["BLIP-2"]["overall"]["D"] == 1
    md = (out / "report.md").read_text()
    assert "| mPLUG-Owl | 1/1/0/0 | 32/10/8/0 | 0/2/0/0 | 31/8/13/0 | 1/2/0/0 |" in md
    assert "Cohen's kappa" in md and "judge:gpt" in md
    assert json.loads((out / "report.json").read_text())["rated_answers"] == 6
    png = out / "owleval_ratings.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fleiss_for_three_raters(files, tmp_path):
    ratings, data = files
    extra = tmp_path / "carl.jsonl"
    extra.write_text(
        json.dumps(_row("carl", 1, "BLIP2", "C")) + "\n" + json.dumps(_row("carl", 2, "BLIP2", "D")) + "\n"
    )
    report = write_report([ratings, extra], data, tmp_path / "r3")
    ag = report["agreement"]
    assert ag["fleiss_items"] == 2 and ag["fleiss_kappa"] == pytest.approx(1.0)
    assert "Fleiss' kappa" in (tmp_path / "r3" / "report.md").read_text()


def test_bad_rating_is_one_line_error(files, tmp_path):
    from owl.errors import DataError

    _, data = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row("x", 1, "BLIP2", "E")) + "\n")
    with pytest.raises(DataError, match="not one of A/B/C/D"):
        write_report([bad], data, tmp_path / "rb")


def test_paper_counts_match_the_owleval_readme():
    """The embedded reference counts are the ones the OwlEval README lists (its table parsed here)."""
    import re

    from owl.eval.report import PAPER

    readme = owleval_dir() / "README.md"
    if not readme.is_file():
        pytest.skip("OwlEval data not found")
    rows = re.findall(
        r"^\| ([\w.-]+) \| (\d+)/(\d+)/(\d+)/(\d+) \| (\d+)/(\d+)/(\d+)/(\d+) \|$", readme.read_text(), re.M
    )
    parsed = {r[0]: {"single": [int(x) for x in r[1:5]], "multi": [int(x) for x in r[5:9]]} for r in rows}
    assert parsed == PAPER
    assert all(sum(c["single"]) == 50 and sum(c["multi"]) == 52 for c in PAPER.values())


def test_judge_only_report_is_labelled(files, tmp_path):
    """With no human rating the chart shows the automatic judge, and the markdown says it is not human."""
    ratings, data = files
    judged = tmp_path / "judged.jsonl"
    judged.write_text("".join(line + "\n" for line in ratings.read_text().splitlines() if '"judge:gpt"' in line))
    report = write_report([judged], data, tmp_path / "rj")
    assert report["human_raters"] == [] and report["counts"] == {} and report["agreement"] is None
    md = (tmp_path / "rj" / "report.md").read_text()
    assert "Automatic judge (optional; an LLM, not human ratings)" in md and "No human ratings" in md
    assert (tmp_path / "rj" / "owleval_ratings.png").stat().st_size > 1000


def test_report_cli(files, tmp_path, capsys):
    import argparse

    from owl.eval.rating_cli import add_parsers

    ratings, data = files
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(["report", str(ratings), "--out", str(tmp_path / "cli"), "--data", str(data)])
    args.func(args)
    assert "2 human rater(s), 1 automatic judge(s), 6 answers rated by humans" in capsys.readouterr().out
    from owl.errors import DataError

    args = parser.parse_args(
        ["report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x"), "--data", str(data)]
    )
    with pytest.raises(DataError, match="does not exist"):
        args.func(args)
