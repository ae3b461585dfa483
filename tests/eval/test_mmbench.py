"""MMBench-style multiple choice: choice extraction, rotations, circular scoring, the published TSV layouts."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest

from owl.errors import DataError
from owl.eval import mmbench
from owl.eval.mmbench import CIRCULAR_OFFSET as K
from tests.eval.conftest import eval_main
from tests.helpers import random_image

OPTIONS = {"A": "dog", "B": "cat", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("answer", "choice"),
    [
        ("B", "B"),  # a letter alone
        ("(B)", "B"),
        ("B.", "B"),
        ("Answer: B", "B"),
        ("B. cat", "B"),
        ("The answer is B", "B"),
        ("**C**", "C"),
        ("cat", "B"),  # the option text itself
        ("It is a fish.", "D"),  # the text inside a sentence
        ("A cat sits on the mat", "B"),  # "A" among more than three words may be the article: the text decides
        ("A", "A"),
        ("A dog", "A"),  # "A" among three words or fewer is the letter (VLMEvalKit's rule)
        ("A or B", None),  # two letters and no option text: unmatched
        ("I don't know", None),
        ("", None),
        ("b", None),  # letters are upper case
    ],
)
def test_choice_extraction(answer, choice):
    assert mmbench.extract_choice(answer, OPTIONS) == choice


def test_ambiguous_option_texts_match_nothing():
    assert mmbench.extract_choice("cats", {"A": "cat", "B": "cats"}) is None


def item(index=7, options=None, answer="B", **kw) -> mmbench.MCItem:
    opts = options or {"A": "w", "B": "x", "C": "y"}
    return mmbench.MCItem(index=index, group=index % K, question="Q?", options=opts, answer=answer, **kw)


def test_rotations_move_every_option_through_every_letter():
    copies = mmbench.rotations(item())
    assert [c.index for c in copies] == [7, K + 7, 2 * K + 7]
    assert [c.options for c in copies] == [
        {"A": "w", "B": "x", "C": "y"},
        {"A": "x", "B": "y", "C": "w"},
        {"A": "y", "B": "w", "C": "x"},
    ]
    assert [c.answer for c in copies] == ["B", "A", "C"]  # always the option "x"
    assert all(c.options[c.answer] == "x" for c in copies)


def test_prompt_is_vlmevalkits():
    text = mmbench.prompt_text(item(hint="Look closely."))
    assert text == "Hint: Look closely.\nQuestion: Q?\nOptions:\nA. w\nB. x\nC. y\n" + mmbench.PROMPT_END


def test_circular_scoring_by_hand():
    four = mmbench.rotations(item(1, dict(OPTIONS), "B", category="animals", l2_category="perception"))
    two = mmbench.rotations(item(2, {"A": "yes", "B": "no"}, "A", category="logic", l2_category="reasoning"))
    preds = {
        four[0].index: "B",  # right
        four[1].index: "(A)",  # right: cat is at A now
        four[2].index: "B",  # wrong: cat is at D
        four[3].index: "cat",  # right by the option text
        two[0].index: "A",
        two[1].index: "no",  # wrong: "no" is option A in the rotated copy, the answer B ("yes")
    }
    scores, judged = mmbench.score(four + two, preds)
    assert two[1].options == {"A": "no", "B": "yes"} and two[1].answer == "B"
    assert [j["correct"] for j in judged] == [True, True, False, True, True, False]
    assert scores["n"] == 2 and scores["copies"] == 6
    assert scores["circular"] == 0.0  # each question failed one copy
    assert scores["vanilla"] == 100.0  # copy 0 of both was right
    assert scores["per_category"]["animals"]["circular"] == 0.0 and scores["unmatched"] == 0
    preds[four[2].index], preds[two[1].index] = "D", "B"
    scores, _ = mmbench.score(four + two, preds)
    assert scores["circular"] == 100.0
    preds[two[1].index] = "maybe"
    scores, judged = mmbench.score(four + two, preds)
    assert scores["circular"] == 50.0 and scores["unmatched"] == 1 and judged[-1]["choice"] is None
    assert scores["per_l2_category"]["reasoning"] == {"n": 1, "circular": 0.0, "ci95": [0.0, 0.0], "vanilla": 100.0}


def b64_image(seed: int) -> str:
    buf = io.BytesIO()
    random_image(seed).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, rows: list[dict]) -> None:
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols, delimiter="\t", quoting=csv.QUOTE_ALL)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def base_rows() -> list[dict]:
    return [
        {"index": 0, "question": "What animal?", "hint": "nan", "A": "dog", "B": "cat", "C": "bird", "D": "fish",
         "answer": "B", "category": "animals", "l2-category": "perception", "image": b64_image(0)},
        {"index": 1, "question": "Is it day?", "hint": "Look at the sky.", "A": "yes", "B": "no",
         "answer": "A", "category": "scene", "l2-category": "perception", "image": b64_image(1)},
    ]  # fmt: skip


def test_tsv_rotated_here_or_taken_as_published(tmp_path):
    plain = tmp_path / "plain.tsv"
    write_tsv(plain, base_rows())
    items = mmbench.load_mmbench(plain)
    assert [it.index for it in items] == [0, K, 2 * K, 3 * K, 1, K + 1]
    assert items[0].hint == "" and items[4].hint == "Look at the sky." and items[4].options == {"A": "yes", "B": "no"}
    assert [it.index for it in mmbench.load_mmbench(plain, circular=False)] == [0, 1]
    # VLMEvalKit's layout: the copies are in the file, a copy's image names the row holding the picture
    copy = {**base_rows()[1], "index": K + 1, "A": "no", "B": "yes", "answer": "B", "image": "1"}
    published = tmp_path / "published.tsv"
    write_tsv(published, [*base_rows(), copy])
    items = mmbench.load_mmbench(published)
    assert [(it.index, it.group, it.answer) for it in items] == [(0, 0, "B"), (1, 1, "A"), (K + 1, 1, "B")]
    assert items[2].image == items[1].image
    bad = tmp_path / "bad.tsv"
    write_tsv(bad, [{**base_rows()[0], "answer": "E"}])
    with pytest.raises(DataError, match="answer 'E' is not one of the options A, B, C, D"):
        mmbench.load_mmbench(bad)


def test_scoring_a_predictions_file_through_the_cli(tmp_path, capsys):
    data = tmp_path / "mmbench.tsv"
    write_tsv(data, base_rows())
    preds = tmp_path / "preds.jsonl"
    answers = {0: "B", K: "A", 2 * K: "D", 3 * K: "The answer is C", 1: "yes", K + 1: "B"}
    preds.write_text("".join(json.dumps({"index": i, "prediction": p}) + "\n" for i, p in answers.items()))
    assert eval_main(["mmbench", "--data", data, "--predictions", preds, "--out", tmp_path / "run"]) == 0
    out = capsys.readouterr().out
    assert "owl eval mmbench: 2 questions (6 asked), circular accuracy 100.00 [100.00, 100.00], vanilla 100.00" in out
    judged = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [j["choice"] for j in judged] == ["B", "A", "D", "C", "A", "B"]
    assert eval_main(["mmbench", "--data", data, "--predictions", preds, "--no-circular"]) == 0
    assert "2 questions (2 asked), circular accuracy 100.00" in capsys.readouterr().out
