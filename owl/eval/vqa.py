"""VQAv2: open-ended answers scored with the official accuracy and answer normalisation.

Files as published: a questions file ``{"questions": [{"image_id", "question", "question_id"}], "data_subtype":
"val2014", ...}``, an annotations file ``{"annotations": [{"question_id", "answers": [ten {"answer", ...}],
"answer_type", "question_type", ...}]}`` and COCO images (``COCO_val2014_000000458752.jpg``). Results are written
in the challenge's results format, ``[{"question_id": ..., "answer": "..."}]``, which ``--predictions`` reads back.

Scoring follows the official script (GT-Vision-Lab/VQA, ``vqaEval.py``) rule for rule, quirks included, because a
VQAv2 number is only comparable when computed the same way:

* the prediction: newlines and tabs become spaces, strip, then :func:`process_punctuation` and
  :func:`process_digit_article` (lower case, number words zero..ten and "none" to digits, articles dropped,
  contractions given their apostrophe: "dont" -> "don't");
* punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space or the
  text has a comma between digits ("1,000" -> "1000"), else replaced by a space ("black-white" -> "black white");
  a period not followed by a digit is deleted ("yes." -> "yes", "2.5" stays);
* the ten human answers get only the punctuation step, and only when they are not all the same;
* accuracy of a question: for each of the 10 leave-one-out sets of 9 annotators, min(#matching / 3, 1); their
  mean. The score is the mean over questions, in percent, overall and per answer type (and question type).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.errors import DataError, DataFileNotFound
from owl.eval import bootstrap
from owl.eval import manifest as mf
from owl.eval.manifest import data_record
from owl.eval.runner import EvalRun, RunSettings, error_counts, plan
from owl.generation import GenerationOptions

PROMPT = "{question}\nAnswer the question using a single word or phrase."
"""LLaVA-1.5's VQAv2 prompt (after the image)."""

SHORT_ANSWERS = GenerationOptions(do_sample=False, max_new_tokens=32)
"""Benchmark defaults under the user's flags: greedy, short (the model's own file comes after these)."""

RESULTS_NAME = "results.json"
SCORES_NAME = "scores.json"

# ----------------------------------------------------------------------------- the official normalisation

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
"""The official map, as is (its capitalised keys never match: the words are lower-cased first)."""

MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is the official pattern (a lookahead, not behind)
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PERIOD_COUNT = int(re.UNICODE)  # sic: the official script passes re.UNICODE as sub()'s count, i.e. 32 periods at most


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: delete or space out punctuation, drop periods not before a digit."""
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower case, number words to digits, no articles, contractions."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official script compares it."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def accuracy(prediction: str, human_answers: list[str]) -> float:
    """One question's VQA accuracy in [0, 1]: mean over leave-one-out annotator sets of min(#matches / 3, 1)."""
    res = normalize_answer(prediction)
    gts = list(human_answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    accs = [min(1.0, sum(a == res for a in gts[:i] + gts[i + 1 :]) / 3.0) for i in range(len(gts))]
    return sum(accs) / len(accs)


# ----------------------------------------------------------------------------- the data


@dataclass
class VQAItem:
    question_id: int
    image_id: int
    question: str
    image: Path
    answers: list[str] = field(default_factory=list)
    answer_type: str = ""
    question_type: str = ""


def default_annotations(questions: Path) -> Path:
    """The official file beside the questions: v2_OpenEnded_mscoco_val2014_questions.json ->
    v2_mscoco_val2014_annotations.json."""
    name = questions.name.replace("_OpenEnded", "").replace("questions", "annotations")
    return questions.with_name(name)


def _read_json(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataFileNotFound(f"VQAv2 file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path} is not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path} has no {key!r} list (the VQAv2 {key} file format)")
    return data


def image_path(root: Path, subtype: str, image_id: int) -> Path:
    """COCO's file name for an image id (``COCO_val2014_000000458752.jpg``), or a plain id name found there."""
    names = [f"COCO_{subtype}_{image_id:012d}.jpg", f"{image_id:012d}.jpg", f"{image_id}.jpg", f"{image_id}.png"]
    return next((root / n for n in names if (root / n).is_file()), root / names[0])


def load_vqa(
    questions: str | Path, annotations: str | Path | None = None, image_root: str | Path | None = None
) -> tuple[list[VQAItem], list[Path]]:
    """Questions joined with their annotations (when given); returns (items, the data files read)."""
    qpath = Path(questions)
    qdata = _read_json(qpath, "questions")
    subtype = str(qdata.get("data_subtype", "val2014"))
    root = Path(image_root) if image_root else next(
        (d for d in (qpath.parent / subtype, qpath.parent / "images", qpath.parent) if d.is_dir()), qpath.parent
    )  # fmt: skip
    files = [qpath]
    anns: dict[int, dict] = {}
    if annotations is not None:
        apath = Path(annotations)
        anns = {a["question_id"]: a for a in _read_json(apath, "annotations")["annotations"]}
        files.append(apath)
    items = []
    for q in qdata["questions"]:
        a = anns.get(q["question_id"], {})
        if annotations is not None and not a:
            raise DataError(f"question {q['question_id']} has no annotation in {annotations}")
        items.append(
            VQAItem(
                question_id=q["question_id"],
                image_id=q["image_id"],
                question=q["question"],
                image=image_path(root, subtype, q["image_id"]),
                answers=[x["answer"] for x in a.get("answers", [])],
                answer_type=a.get("answer_type", ""),
                question_type=a.get("question_type", ""),
            )
        )
    return items, files


# ----------------------------------------------------------------------------- scoring


def score(
    items: list[VQAItem],
    predictions: dict[int, str],
    *,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> dict[str, Any]:
    """Accuracy overall, per answer type and per question type, with bootstrap intervals over questions."""
    ids = {it.question_id for it in items}
    missing = sorted(ids - predictions.keys())
    extra = sorted(predictions.keys() - ids)
    if missing or extra:  # the official loader asserts the two id sets are equal
        what = f"{len(missing)} questions unanswered (e.g. {missing[:3]})" if missing else ""
        what += ("; " if missing and extra else "") + (f"{len(extra)} unknown ids (e.g. {extra[:3]})" if extra else "")
        raise DataError(f"the predictions do not match the questions: {what}")
    acc = np.array([accuracy(predictions[it.question_id], it.answers) for it in items])
    kw = {"resamples": resamples, "seed": seed}

    def part(mask: np.ndarray) -> dict[str, Any]:
        values = acc[mask]
        return {
            "n": int(mask.sum()),
            "accuracy": round(100.0 * float(values.mean()), 4) if len(values) else None,
            "ci95": bootstrap.interval(values, **kw),
        }

    answer_types = np.array([it.answer_type for it in items])
    question_types = np.array([it.question_type for it in items])
    return {
        "benchmark": "vqa",
        **part(np.ones(len(items), dtype=bool)),
        "per_answer_type": {t: part(answer_types == t) for t in sorted(set(answer_types))},
        "per_question_type": {
            t: {
                "n": int((question_types == t).sum()),
                "accuracy": round(100.0 * float(acc[question_types == t].mean()), 4),
            }
            for t in sorted(set(question_types))
        },
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "question", "level": bootstrap.LEVEL},
    }


def read_results(path: str | Path) -> dict[int, str]:
    """A results file in the challenge format ``[{"question_id", "answer"}]``."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFound(f"predictions file not found: {path}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path} is not JSON ({e}); VQAv2 results are a list of question_id/answer objects") from None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"question_id", "answer"} <= r.keys() for r in rows
    ):
        raise DataError(f"{path}: VQAv2 results are a JSON list of {{'question_id': ..., 'answer': ...}}")
    return {r["question_id"]: str(r["answer"]) for r in rows}


def summary_line(scores: dict[str, Any]) -> str:
    types = ", ".join(f"{t} {s['accuracy']:.2f}" for t, s in scores["per_answer_type"].items() if t)
    return (
        f"owl eval vqa: {scores['n']} questions, accuracy {scores['accuracy']:.2f} "
        f"{bootstrap.describe(scores['ci95'])}" + (f" ({types})" if types else "")
    )


def score_predictions(
    data: str,
    predictions: str,
    out: str | None,
    *,
    annotations: str | None = None,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> dict[str, Any]:
    """Score a results file without a model; with ``out``, write scores.json and a manifest there."""
    t0 = time.perf_counter()
    ann = annotations or _existing(default_annotations(Path(data)))
    if ann is None:
        raise DataFileNotFound(f"no annotations beside {data}; give --annotations (the VQAv2 annotations file)")
    items, files = load_vqa(data, ann)
    scores = score(items, read_results(predictions), resamples=resamples, seed=seed)
    if out is not None:
        record = data_record(Path(data).parent, [*files, predictions])
        counts = {"questions": len(items)}
        mf.record_finished(out, "vqa", data=record, scores=scores, seconds=time.perf_counter() - t0, counts=counts)
    print(summary_line(scores))
    return scores


# ----------------------------------------------------------------------------- running


def run_vqa(
    model_dir: str | None,
    data: str | None,
    out: str | Path,
    settings: RunSettings,
    *,
    annotations: str | None = None,
    image_root: str | None = None,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> dict[str, Any]:
    """Answer every question (batched, resumable), write results.json, and score it when annotations exist."""
    p = plan("vqa", model_dir, data, settings, {"prompt": PROMPT, "annotations": annotations, "image_root": image_root})
    ann = p.args.get("annotations") or _existing(default_annotations(Path(p.data)))
    items, files = load_vqa(p.data, ann, p.args.get("image_root"))
    record = data_record(Path(p.data).parent, files, [it.image for it in items if it.image.is_file()])
    run = EvalRun("vqa", out, p, settings, record, SHORT_ANSWERS).start()
    try:
        prompt = p.args["prompt"]
        run.answer([(str(it.question_id), _sample(it, prompt)) for it in items])
        done = run.records()
        results = [{"question_id": it.question_id, "answer": run.text(done[str(it.question_id)])} for it in items
                   if str(it.question_id) in done and not run.transient(done[str(it.question_id)])]  # fmt: skip
        path = Path(out) / RESULTS_NAME
        _write_json(path, results)
        errors = error_counts(done, [str(it.question_id) for it in items])
        counts = {"questions": len(items), "answered": len(results) - sum(errors.values()), "errors": errors}
        scores = None
        if ann and len(results) == len(items):
            scores = score(items, {r["question_id"]: r["answer"] for r in results}, resamples=resamples, seed=seed)
            _write_json(Path(out) / SCORES_NAME, scores)
        manifest = run.finish(counts, [path, Path(out) / SCORES_NAME], scores)
    finally:
        run.close()
    _print(scores, counts, path)
    return manifest


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _sample(item: VQAItem, prompt: str) -> Sample:
    text = f"{IMAGE_TOKEN}\n" + prompt.format(question=item.question)
    return Sample([Message("user", text)], [str(item.image)], source="vqa", id=str(item.question_id))


def _write_json(path: Path, data: Any) -> None:
    from owl.atomic import write_text

    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _print(scores: dict[str, Any] | None, counts: dict[str, Any], results: Path) -> None:
    errors = sum(counts["errors"].values())
    print(f"owl eval vqa: {counts['answered']} answered, {errors} errors -> {results}", file=sys.stderr)
    if scores is not None:
        print(summary_line(scores))
    elif counts["answered"] + errors < counts["questions"]:
        print(f"owl eval vqa: {counts['questions'] - counts['answered'] - errors} questions left; rerun to finish")
    else:
        print("owl eval vqa: no annotations (--annotations), so no score: results.json is ready for the server")
