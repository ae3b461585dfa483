"""MMBench-style multiple choice: options in the prompt, the choice read from a free answer, circular evaluation.

Data as published: a TSV with ``index, question, hint, A, B, C, D, answer, category, l2-category, image`` (image
base64-encoded; rows may have fewer options, an empty option ends them). Files that already hold the circular
copies (VLMEvalKit's layout: copy k of question i has index i + k x 1,000,000, its options rotated, and its
``image`` may be the index of the row that holds the picture) are used as they are; otherwise each question
with N options is asked N times, copy k with the options rotated by k (the option at A moves to the last place
first), under index i + k x 1,000,000.

Prompt (VLMEvalKit's for multiple choice)::

    Hint: <hint>                      (only when there is one)
    Question: <question>
    Options:
    A. <option>
    ...
    Please select the correct answer from the options above.

The choice is read as VLMEvalKit's rule-based matcher does (before it would ask a GPT judge, which owl does not):

1. the option letters: ``.()[],:;!*#{}`` become spaces and the answer is split into words; exactly one option
   letter among the words is the choice ("B", "(B)", "B.", "Answer: B", "B. a cat"); but an "A" among more than
   three words may be the article, so that answer goes to step 2;
2. the option texts: exactly one option whose text (lower-cased) occurs in the answer (lower-cased);
3. otherwise the answer is unmatched: wrong, and counted.

A question is right under circular evaluation only if every copy is right; ``vanilla`` is the accuracy of
copy 0 alone (the options as published). Intervals: bootstrap over questions (a question with all its copies).
"""

from __future__ import annotations

import base64
import csv
import json
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
from owl.eval.vqa import SHORT_ANSWERS

LETTERS = "ABCDEFGHI"
CIRCULAR_OFFSET = 1_000_000
PROMPT_END = "Please select the correct answer from the options above."
PREDICTIONS_NAME = "predictions.jsonl"
SCORES_NAME = "scores.json"


@dataclass
class MCItem:
    """One copy of a question: its own index, the question it copies (``group``) and its options in order."""

    index: int
    group: int
    question: str
    options: dict[str, str]
    answer: str
    hint: str = ""
    category: str = ""
    l2_category: str = ""
    image: str = ""  # base64
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def copy(self) -> int:
        return self.index // CIRCULAR_OFFSET


def _blank(value: Any) -> bool:
    return value is None or str(value).strip() in ("", "nan", "NaN", "None")


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    """The rows of an MMBench TSV (base64 images make fields large: the csv limit is lifted)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFound(f"MMBench file not found: {path}")
    csv.field_size_limit(2**31 - 1)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    need = {"index", "question", "A", "B", "answer"}
    if not rows or not need <= rows[0].keys():
        missing = sorted(need - (rows[0].keys() if rows else set()))
        raise DataError(f"{path}: not an MMBench TSV (missing columns: {', '.join(missing)})")
    return rows


def load_mmbench(path: str | Path, circular: bool = True) -> list[MCItem]:
    """Every copy to ask: the file's own circular copies, or rotations made here (copy 0 only without
    ``circular``)."""
    rows = read_tsv(path)
    images = {str(r["index"]): r.get("image", "") for r in rows}
    items = []
    for number, r in enumerate(rows, start=2):
        try:
            index = int(float(r["index"]))
        except ValueError:
            raise DataError(f"{path}:{number}: index {r['index']!r} is not a number") from None
        options = {}
        for letter in LETTERS:
            if letter not in r or _blank(r[letter]):
                break
            options[letter] = str(r[letter])
        answer = str(r["answer"]).strip()
        if answer not in options:
            raise DataError(f"{path}:{number}: answer {answer!r} is not one of the options {', '.join(options)}")
        image = r.get("image", "") or ""
        if len(image) <= 64 and image in images:  # a circular copy names the row that holds its picture
            image = images[image]
        items.append(
            MCItem(
                index=index,
                group=index % CIRCULAR_OFFSET,
                question=str(r["question"]),
                options=options,
                answer=answer,
                hint="" if _blank(r.get("hint")) else str(r["hint"]),
                category=str(r.get("category", "") or ""),
                l2_category=str(r.get("l2-category", "") or ""),
                image=image,
            )
        )
    if any(it.copy > 0 for it in items):
        return [it for it in items if circular or it.copy == 0]
    return [c for it in items for c in (rotations(it) if circular else [it])]


def rotations(item: MCItem) -> list[MCItem]:
    """The N copies of an N-option question: copy k shows option (i + k) mod N at letter i."""
    letters = list(item.options)
    texts = [item.options[x] for x in letters]
    right = letters.index(item.answer)
    copies = []
    for k in range(len(letters)):
        options = {letters[i]: texts[(i + k) % len(texts)] for i in range(len(letters))}
        answer = letters[(right - k) % len(letters)]
        copies.append(
            MCItem(
                index=item.group + k * CIRCULAR_OFFSET,
                group=item.group,
                question=item.question,
                options=options,
                answer=answer,
                hint=item.hint,
                category=item.category,
                l2_category=item.l2_category,
                image=item.image,
            )
        )
    return copies


def prompt_text(item: MCItem) -> str:
    """The question as VLMEvalKit asks it (see the module docstring)."""
    text = f"Hint: {item.hint}\n" if item.hint else ""
    text += f"Question: {item.question}\nOptions:\n"
    text += "".join(f"{k}. {v}\n" for k, v in item.options.items())
    return text + PROMPT_END


# ----------------------------------------------------------------------------- choice extraction


def _option_letter(answer: str, letters: list[str]) -> str | None:
    words = answer
    for c in ".()[],:;!*#{}":
        words = words.replace(c, " ")
    splits = words.split()
    found = [x for x in letters if x in splits]
    if len(found) != 1:
        return None
    if "A" in splits and len(splits) > 3:  # "A" may be the article ("A cat sits on ...")
        return None
    return found[0]


def _option_text(answer: str, options: dict[str, str]) -> str | None:
    low = answer.lower()
    found = [k for k, v in options.items() if str(v).lower() in low]
    return found[0] if len(found) == 1 else None


def extract_choice(answer: str, options: dict[str, str]) -> str | None:
    """The option letter a free answer chooses, or None (unmatched)."""
    return _option_letter(answer, list(options)) or _option_text(answer, options)


# ----------------------------------------------------------------------------- scoring


def score(
    items: list[MCItem],
    predictions: dict[int, str],
    *,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Circular and vanilla accuracy overall, per category and l2-category; and one judged row per copy."""
    missing = [it.index for it in items if it.index not in predictions]
    if missing:
        raise DataError(f"the predictions lack {len(missing)} of {len(items)} copies (e.g. index {missing[0]})")
    judged = []
    groups: dict[int, list[bool]] = {}
    vanilla: dict[int, bool] = {}
    meta: dict[int, MCItem] = {}
    for it in items:
        choice = extract_choice(predictions[it.index], it.options)
        right = choice == it.answer
        judged.append(
            {"index": it.index, "question": it.group, "copy": it.copy, "prediction": predictions[it.index],
             "choice": choice, "answer": it.answer, "correct": right}
        )  # fmt: skip
        groups.setdefault(it.group, []).append(right)
        if it.copy == 0:
            vanilla[it.group] = right
        meta.setdefault(it.group, it)
    order = list(groups)
    circ = np.array([all(groups[g]) for g in order], dtype=float)
    kw = {"resamples": resamples, "seed": seed}

    def part(mask: np.ndarray) -> dict[str, Any]:
        v = np.array([vanilla.get(g, False) for g, m in zip(order, mask) if m], dtype=float)
        return {
            "n": int(mask.sum()),
            "circular": round(100.0 * float(circ[mask].mean()), 4),
            "ci95": bootstrap.interval(circ[mask], **kw),
            "vanilla": round(100.0 * float(v.mean()), 4) if len(v) else None,
        }

    cats = np.array([meta[g].category for g in order])
    l2 = np.array([meta[g].l2_category for g in order])
    scores = {
        "benchmark": "mmbench",
        **part(np.ones(len(order), dtype=bool)),
        "copies": len(items),
        "unmatched": sum(j["choice"] is None for j in judged),
        "per_category": {c: part(cats == c) for c in sorted(set(cats)) if c},
        "per_l2_category": {c: part(l2 == c) for c in sorted(set(l2)) if c},
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "unit": "question (all its copies)",
            "level": bootstrap.LEVEL,
        },
    }
    return scores, judged


def read_predictions(path: str | Path) -> dict[int, str]:
    """``index`` -> ``prediction`` from JSON lines or a TSV with those columns (VLMEvalKit's result layout)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFound(f"predictions file not found: {path}")
    if path.suffix.lower() in (".tsv", ".csv"):
        csv.field_size_limit(2**31 - 1)
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise DataError(f"{path}:{number}: not a JSON record ({e})") from None
    if not rows or not all(isinstance(r, dict) and {"index", "prediction"} <= r.keys() for r in rows):
        raise DataError(f"{path}: each prediction needs 'index' and 'prediction'")
    return {int(float(r["index"])): "" if r["prediction"] is None else str(r["prediction"]) for r in rows}


def summary_line(scores: dict[str, Any]) -> str:
    return (
        f"owl eval mmbench: {scores['n']} questions ({scores['copies']} asked), circular accuracy "
        f"{scores['circular']:.2f} {bootstrap.describe(scores['ci95'])}, vanilla {scores['vanilla']:.2f}, "
        f"{scores['unmatched']} answers matched no option"
    )


def score_predictions(
    data: str,
    predictions: str,
    out: str | None,
    *,
    circular: bool = True,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> dict[str, Any]:
    """Score a predictions file without a model; with ``out``, write scores.json, the judged copies
    (predictions.jsonl) and a manifest there."""
    t0 = time.perf_counter()
    items = load_mmbench(data, circular)
    scores, judged = score(items, read_predictions(predictions), resamples=resamples, seed=seed)
    if out is not None:
        _write(Path(out) / PREDICTIONS_NAME, "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judged))
        record = data_record(Path(data).parent, [data, predictions])
        mf.record_finished(
            out,
            "mmbench",
            data=record,
            scores=scores,
            seconds=time.perf_counter() - t0,
            counts={"questions": scores["n"], "copies": len(items)},
            benchmark_args={"circular": circular},
        )
    print(summary_line(scores))
    return scores


# ----------------------------------------------------------------------------- running


def _decode(item: MCItem) -> bytes:
    try:
        return base64.b64decode(item.image, validate=False)
    except ValueError:
        return b""  # the processor reports it as a bad image, an error line for this copy


def run_mmbench(
    model_dir: str | None,
    data: str | None,
    out: str | Path,
    settings: RunSettings,
    *,
    circular: bool = True,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> dict[str, Any]:
    """Ask every copy (batched, resumable), write predictions.jsonl and the scores."""
    p = plan("mmbench", model_dir, data, settings, {"circular": circular, "prompt_end": PROMPT_END})
    items = load_mmbench(p.data, p.args["circular"])
    record = data_record(Path(p.data).parent, [p.data])
    run = EvalRun("mmbench", out, p, settings, record, SHORT_ANSWERS).start()
    try:
        samples, pictures = [], {}
        for it in items:
            if it.image and it.group not in pictures:
                pictures[it.group] = _decode(it)  # one decoded copy per question, shared by its rotations
            images = [pictures[it.group]] if it.image else []
            text = f"{IMAGE_TOKEN}\n{prompt_text(it)}" if images else prompt_text(it)
            samples.append((str(it.index), Sample([Message("user", text)], images, source="mmbench", id=str(it.index))))
        run.answer(samples)
        done = run.records()
        preds = {it.index: run.text(done[str(it.index)]) for it in items
                 if str(it.index) in done and not run.transient(done[str(it.index)])}  # fmt: skip
        errors = error_counts(done, [str(it.index) for it in items])
        counts = {"questions": len(items), "answered": len(preds) - sum(errors.values()), "errors": errors}
        outputs = [Path(out) / PREDICTIONS_NAME]
        scores = None
        if len(preds) == len(items):
            scores, judged = score(items, preds, resamples=resamples, seed=seed)
            _write(outputs[0], "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judged))
            outputs.append(Path(out) / SCORES_NAME)
            _write(outputs[1], json.dumps(scores, indent=1) + "\n")
        else:
            lines = [{"index": i, "prediction": t} for i, t in preds.items()]
            _write(outputs[0], "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in lines))
        manifest = run.finish(counts, outputs, scores)
    finally:
        run.close()
    print(f"owl eval mmbench: {counts['answered']} answered, {sum(errors.values())} errors -> {outputs[0]}",
          file=sys.stderr)  # fmt: skip
    print(summary_line(scores) if scores else "owl eval mmbench: copies left; rerun to finish")
    return manifest


def _write(path: Path, text: str) -> None:
    from owl.atomic import write_text

    write_text(path, text)
