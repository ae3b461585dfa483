"""Automatic scorers for Owl-World eval items; every rule is written down here.

All rules are fixed by the world, never tuned to a model's outputs. An eval item names
its rule in ``item["scorer"]["rule"]``; ``item["scorer"]["choices"]`` is the finite answer
space the world can produce for that question (computed from the WorldConfig at
generation time), used for chance levels and by the ``contains`` rule.

Normalisation (:func:`normalize`)
    1. Keep the first non-empty line; within it, keep the first sentence (text up to the
       first ``.``, ``!`` or ``?`` followed by whitespace). Models are trained to answer
       with one short phrase, so what follows is not the answer ("Red. The circle is red
       and ..." is judged on "Red.").
    2. Lower-case; delete apostrophes ("it's" -> "its"); every other non-alphanumeric
       character becomes a space (so "top-left", '"cat"' and "**Red**" lose their marks).
    3. Drop the articles "a", "an", "the" (unless nothing else is left).
    4. Number words zero..twenty become digits ("three" -> "3").
    5. Spelling variants only: "centre" -> "center", "grey" -> "gray", "colour" -> "color".
       No synonyms ("middle" is not "center", "big" is not "large").

Rules (:func:`score`)
    ``exact``     normalize(prediction) == normalize(answer). Used for every image ability
                  (colour, shape, count, position, size, ocr, knowledge, reasoning,
                  multiturn, multiimage) except yes/no questions. "It is red" does not match
                  "red": the tuned model is taught short answers and a verbose answer is a
                  failure to follow the answer style, and "contains" would reward listing
                  several candidates.
    ``yesno``     the decision is the first word of the normalised answer if it is "yes" or
                  "no"; otherwise the single one of yes/no that appears as a word; if both
                  or neither appear, the prediction is wrong. Correct when the decision
                  equals the answer.
    ``form``      (ability "instruction") the requested form must hold on the first
                  non-empty line, stripped of surrounding spaces, quotes and end punctuation,
                  AND the content must match as in ``exact``:
                    caps          at least one letter and no lower-case letter ("RED")
                    lower         no upper-case letter ("red")
                    digit         only the digits 0-9 ("3", not "three")
                    number_word   only letters, no digit ("three", not "3")
                    one_word      a single run of letters ("Star", not "A star")
                    yesno_only    exactly "yes" or "no", any case ("Yes", not "Yes, there is")
    ``contains``  (ability "text" only) the normalised answer occurs as a whole word (or
                  whole-word phrase) anywhere in the normalised prediction, all lines kept,
                  AND no other choice occurs as a whole word, ignoring choices the question
                  itself names. Justified because text-only items also measure the untuned
                  instruct LLM, which answers in full sentences ("Mixing blue and yellow
                  gives green."); the no-other-choice clause stops a list of candidates from
                  scoring, and text questions never contain their own answer.

Chance (:func:`chance`)
    1 / number of distinct choices: e.g. 1/6 for colour with 6 colours, 1/9 for position,
    1/2 for yes/no and first/second, 1/max_objects for "how many shapes". For ``form``
    items it is the chance of the content alone (meeting the form by luck is not counted).
    Items without a finite answer space have chance 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
NUMBER_DIGITS: dict[str, str] = {w: str(i) for i, w in enumerate(_NUMBER_WORDS)}
ARTICLES = frozenset({"a", "an", "the"})
SPELLING: dict[str, str] = {"centre": "center", "grey": "gray", "colour": "color"}
RULES: tuple[str, ...] = ("exact", "yesno", "form", "contains")
FORMS: tuple[str, ...] = ("caps", "lower", "digit", "number_word", "one_word", "yesno_only")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_STRIP = " \t\"'`*.,!?:;()[]"


def first_line(text: str) -> str:
    """The first non-empty line, stripped ('' when there is none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def normalize(text: str, *, first_sentence: bool = True) -> str:
    """Canonical form for comparison; see the module docstring for each step."""
    if first_sentence:
        text = _SENTENCE_END.split(first_line(text), maxsplit=1)[0]
    text = re.sub(r"['\u2019]", "", text.lower())
    tokens = re.sub(r"[^a-z0-9]+", " ", text).split()
    kept = [t for t in tokens if t not in ARTICLES] or tokens
    return " ".join(NUMBER_DIGITS.get(t, SPELLING.get(t, t)) for t in kept)


def yes_no(prediction: str) -> str | None:
    """'yes', 'no', or None when the prediction commits to neither (or to both)."""
    tokens = normalize(prediction).split()
    if tokens and tokens[0] in ("yes", "no"):
        return tokens[0]
    found = {t for t in tokens if t in ("yes", "no")}
    return found.pop() if len(found) == 1 else None


def _has_phrase(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def _form_ok(prediction: str, form: str, answer: str) -> bool:
    line = first_line(prediction)
    core = line.strip(_STRIP)
    content = normalize(core) == normalize(answer)
    if form == "caps":
        return content and any(c.isalpha() for c in line) and not any(c.islower() for c in line)
    if form == "lower":
        return content and not any(c.isupper() for c in line)
    if form == "digit":
        return content and re.fullmatch(r"[0-9]+", core) is not None
    if form == "number_word":
        return content and re.fullmatch(r"[A-Za-z]+(?:[ -][A-Za-z]+)*", core) is not None
    if form == "one_word":
        return content and re.fullmatch(r"[A-Za-z]+", core) is not None
    if form == "yesno_only":
        return core.lower() in ("yes", "no") and core.lower() == normalize(answer)
    raise ValueError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")


def _contains(prediction: str, answer: str, choices: Sequence[str], question: str) -> bool:
    pred = normalize(prediction, first_sentence=False)
    gold = normalize(answer)
    if not _has_phrase(pred, gold):
        return False
    asked = normalize(question, first_sentence=False)
    others = {normalize(c) for c in choices} - {gold}
    return not any(_has_phrase(pred, o) for o in others if not _has_phrase(asked, o))


def _question(item: dict) -> str:
    users = [m["content"] for m in item.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


def score(prediction: str, item: dict) -> bool:
    """Whether ``prediction`` answers the eval item correctly under the item's rule."""
    scorer = item["scorer"]
    rule = scorer["rule"]
    answer = item["answer"]
    if rule == "exact":
        return normalize(prediction) == normalize(answer)
    if rule == "yesno":
        return yes_no(prediction) == normalize(answer)
    if rule == "form":
        return _form_ok(prediction, scorer["form"], answer)
    if rule == "contains":
        return _contains(prediction, answer, scorer.get("choices") or [], _question(item))
    raise ValueError(f"item {item.get('id', '?')} has unknown scorer rule {rule!r}; expected one of {', '.join(RULES)}")


def chance(item: dict) -> float:
    """Probability of a correct answer by guessing uniformly among the item's choices."""
    choices = item.get("scorer", {}).get("choices") or []
    distinct = {normalize(c) for c in choices}
    return 1.0 / len(distinct) if distinct else 0.0


def summarize(items: Sequence[dict], predictions: Sequence[str]) -> dict[str, dict]:
    """Per-ability ``{"n", "correct", "accuracy", "chance"}`` plus an ``"overall"`` entry.

    ``chance`` is the mean chance of the ability's items, so it is comparable with accuracy.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} eval items but {len(predictions)} predictions; give one prediction per item")
    groups: dict[str, list[tuple[bool, float]]] = {}
    for item, prediction in zip(items, predictions):
        result = (score(prediction, item), chance(item))
        groups.setdefault(item["ability"], []).append(result)
        groups.setdefault("overall", []).append(result)
    summary = {}
    for ability in [a for a in groups if a != "overall"] + (["overall"] if groups else []):
        results = groups[ability]
        correct = sum(ok for ok, _ in results)
        summary[ability] = {
            "n": len(results),
            "correct": correct,
            "accuracy": correct / len(results),
            "chance": sum(c for _, c in results) / len(results),
        }
    return summary


def blind_predictions(items: Sequence[dict]) -> list[str]:
    """What a blind answerer says: for each item, the commonest gold answer of its task in ``items`` itself.

    The answer prior a model can learn without looking, measured on the held-out split (so an upper bound of
    it: a model only sees the training split's answers). An ability far above this score reads the image;
    one at it answers from priors. Ties go to the alphabetically first answer.
    """
    counts: dict[str, dict[str, int]] = {}
    for item in items:
        task = counts.setdefault(item.get("task", item["ability"]), {})
        task[item["answer"]] = task.get(item["answer"], 0) + 1
    best = {task: min(c, key=lambda a: (-c[a], a)) for task, c in counts.items()}
    return [best[item.get("task", item["ability"])] for item in items]


def format_summary(summary: dict[str, dict]) -> str:
    """A plain-text table of :func:`summarize` output, chance beside each score."""
    lines = [f"{'ability':<12} {'n':>5} {'accuracy':>9} {'chance':>7}"]
    for ability, row in summary.items():
        lines.append(f"{ability:<12} {row['n']:>5} {row['accuracy']:>9.1%} {row['chance']:>7.1%}")
    return "\n".join(lines)
