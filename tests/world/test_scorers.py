"""Golden cases for every scoring rule, chance levels and the summary."""

from __future__ import annotations

import pytest

from owl.world import chance, format_summary, normalize, score, summarize
from owl.world.scorers import yes_no


def item(answer, rule="exact", choices=("red", "green", "blue", "yellow", "purple", "orange"), question="Q?", **kw):
    return {
        "id": "t",
        "ability": kw.pop("ability", "colour"),
        "answer": answer,
        "messages": [{"role": "user", "content": question}],
        "scorer": {"rule": rule, "choices": list(choices), **kw},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Red.", "red"),
        ("  The RED ball!\nMore text", "red ball"),
        ("Top-left.", "top left"),
        ('"cat"', "cat"),
        ("**Blue**", "blue"),
        ("Three.", "3"),
        ("It's a star. It is big.", "its star"),
        ("In the centre", "in center"),
        ("grey", "gray"),
        ("3.5 apples", "3 5 apples"),
        ("a", "a"),
        ("", ""),
        ("\n\nsecond line", "second line"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("prediction", "ok"),
    [("Red.", True), ("red", True), ("RED", True), ("The red one", False), ("It is red", False), ("Red. Blue.", True),
     ("Blue.", False), ("", False), ("red, green", False)],
)  # fmt: skip
def test_exact_rule(prediction, ok):
    assert score(prediction, item("red")) is ok


def test_exact_rule_numbers_and_positions():
    count = item("3", choices=("1", "2", "3", "4"))
    assert score("three", count) and score("3.", count) and score("Three", count)
    assert not score("4", count) and not score("There are 3 shapes", count)
    pos = item("top left", choices=("top left", "top", "center"))
    assert score("Top left.", pos) and score("top-left", pos) and score("At the top left", pos) is False
    assert score("The top left.", pos)


@pytest.mark.parametrize(
    ("prediction", "answer", "ok"),
    [
        ("Yes.", "yes", True),
        ("yes, there is one", "yes", True),
        ("No", "no", True),
        ("There is none, no.", "no", True),
        ("Yes and no", "yes", True),
        ("maybe", "no", False),
        ("No.", "yes", False),
        ("I think yes, or maybe no", "yes", False),
    ],
)
def test_yesno_rule(prediction, answer, ok):
    assert score(prediction, item(answer, rule="yesno", choices=("yes", "no"))) is ok


def test_yes_no_decision():
    assert yes_no("Yes") == "yes" and yes_no("Definitely not") is None and yes_no("The answer is no.") == "no"


@pytest.mark.parametrize(
    ("form", "answer", "prediction", "ok"),
    [
        ("caps", "RED", "RED", True),
        ("caps", "RED", "RED.", True),
        ("caps", "RED", "Red", False),
        ("caps", "RED", "red", False),
        ("caps", "RED", "BLUE", False),
        ("lower", "red", "red", True),
        ("lower", "red", "Red", False),
        ("digit", "3", "3", True),
        ("digit", "3", "3.", True),
        ("digit", "3", "three", False),
        ("digit", "3", "4", False),
        ("number_word", "three", "three", True),
        ("number_word", "three", "Three.", True),
        ("number_word", "three", "3", False),
        ("one_word", "Star", "star", True),
        ("one_word", "Star", "A star", False),
        ("one_word", "Star", "Star shape", False),
        ("yesno_only", "yes", "Yes", True),
        ("yesno_only", "yes", "yes.", True),
        ("yesno_only", "yes", "Yes, there is", False),
        ("yesno_only", "no", "Yes", False),
    ],
)
def test_form_rule(form, answer, prediction, ok):
    assert score(prediction, item(answer, rule="form", form=form, ability="instruction")) is ok


def test_contains_rule_for_text_items():
    numbers = [str(n) for n in range(26)]
    add = item("7", rule="contains", choices=numbers, question="What is 3 plus 4?", ability="text")
    assert score("7", add) and score("3 plus 4 is 7.", add) and score("The answer is seven.", add)
    assert not score("It is 7 or 8.", add), "naming another choice fails"
    assert not score("77", add) and not score("The answer is 8", add)
    colours = ["red", "green", "blue", "yellow", "orange", "purple"]
    mix = item(
        "green", rule="contains", choices=colours, question="What colour do you get when you mix blue and yellow?"
    )
    assert score("Mixing blue and yellow gives green.", mix)
    assert not score("You get green, or maybe orange.", mix)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    first = item("m", rule="contains", choices=letters, question='What is the first letter of the word "moon"?')
    assert score('The first letter of the word "moon" is "M".', first)
    assert not score("moon", first)


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="unknown scorer rule 'fuzzy'"):
        score("x", item("x", rule="fuzzy"))


def test_chance():
    assert chance(item("red")) == pytest.approx(1 / 6)
    assert chance(item("yes", rule="yesno", choices=("yes", "no"))) == 0.5
    assert chance(item("3", choices=("1", "2", "3", "4"))) == 0.25
    assert chance(item("x", choices=())) == 0.0


def test_summarize_per_ability_and_overall():
    items = [item("red"), item("blue"), item("yes", rule="yesno", choices=("yes", "no"), ability="reasoning")]
    summary = summarize(items, ["Red", "green", "yes"])
    assert summary["colour"] == {"n": 2, "correct": 1, "accuracy": 0.5, "chance": pytest.approx(1 / 6)}
    assert summary["reasoning"]["accuracy"] == 1.0 and summary["reasoning"]["chance"] == 0.5
    assert summary["overall"]["n"] == 3 and summary["overall"]["correct"] == 2
    assert list(summary)[-1] == "overall"
    assert "colour" in format_summary(summary) and "50.0%" in format_summary(summary)
    with pytest.raises(ValueError, match="2 eval items but 1 predictions"):
        summarize(items[:2], ["red"])


def test_blind_answerer_says_each_tasks_commonest_answer():
    """The prior a model can learn without looking: per task, the commonest held-out answer (ties: first a-z)."""
    from owl.world.scorers import blind_predictions

    def item(task, answer, ability="colour"):
        return {"ability": ability, "task": task, "answer": answer, "scorer": {"rule": "exact", "choices": []}}

    items = [item("at", "red"), item("at", "red"), item("at", "blue"), item("of", "green"), item("of", "blue")]
    items.append(item("count_all", "2", "count"))
    assert blind_predictions(items) == ["red", "red", "red", "blue", "blue", "2"]
    s = summarize(items, blind_predictions(items))
    assert s["colour"]["accuracy"] == pytest.approx(3 / 5) and s["count"]["accuracy"] == 1.0


def test_demo_targets_need_accuracy_and_a_margin_over_blind():
    from owl.world.demo import check_targets

    summary = {"colour": {"accuracy": 0.82, "chance": 1 / 6}, "count": {"accuracy": 0.76, "chance": 0.25}}
    blind = {"colour": {"accuracy": 0.25}, "count": {"accuracy": 0.6}}
    rows = {what: met for what, _, met in check_targets(summary, None, blind)}
    assert rows == {"colour": True, "colour above blind": True, "count": True, "count above blind": False}
