"""MME: yes/no questions, two per image, scored as the official ``calculation.py`` of the MME eval tool does.

Data as released (``MME_Benchmark_release_version/``): one folder per subtask. Questions come from the eval tool's
lists when present (``eval_tool/Your_Results/<subtask>.txt``: ``image_name<TAB>question<TAB>Yes|No``), else from
the release's per-image files (``<subtask>/questions_answers_YN/<image>.txt`` beside ``<subtask>/images/``, or
``<subtask>/<image>.txt`` beside the image: ``question<TAB>Yes|No`` lines). Subtasks that are absent are left
out (and named in the scores).

Results are written as the official tool reads them: ``results/<subtask>.txt`` with a fourth column, the model's
answer (tabs and newlines in it become spaces). ``--predictions DIR`` scores such a folder without a model.

Scoring, as ``calculation.py``:

* the answer is lower-cased; "yes" or "no" as a whole is that; otherwise its first four characters decide:
  "yes" in them -> yes, else "no" in them -> no, else "other", which is wrong (and counted). So "Yes, it is" is
  yes, "No." is no, "Not really" is no, and "I think yes" and "There is" are other;
* per subtask: acc = right questions / questions, acc+ = images with both questions right / images, score =
  100 (acc + acc+), at most 200; perception = the sum over its 10 subtasks (at most 2000), cognition over its 4
  (at most 800). Intervals: bootstrap over images, each subtask resampled on its own.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
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

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
RESULTS_DIR = "results"
SCORES_NAME = "scores.json"


@dataclass
class MMERow:
    """One question: its subtask, image, question, the true answer and (once answered) the model's."""

    task: str
    image_name: str
    question: str
    answer: str
    prediction: str = ""
    image: Path | None = None

    @property
    def id(self) -> str:
        return f"{self.task}/{self.image_name}/{self.question}"


def extract_yes_no(answer: str) -> str:
    """'yes', 'no' or 'other', by the official rule (see the module docstring)."""
    a = answer.lower()
    if a in ("yes", "no"):
        return a
    prefix = a[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


# ----------------------------------------------------------------------------- reading


def load_mme(root: str | Path) -> tuple[list[MMERow], list[Path]]:
    """Every question of every subtask present under ``root``; returns (rows, the question files read)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileNotFound(f"MME folder not found: {root}")
    rows: list[MMERow] = []
    files: list[Path] = []
    for task in PERCEPTION + COGNITION:
        task_dir = root / task
        images = task_dir / "images" if (task_dir / "images").is_dir() else task_dir
        listing = root / "eval_tool" / "Your_Results" / f"{task}.txt"
        if listing.is_file():
            files.append(listing)
            for name, question, answer in _tab_lines(listing, 3):
                rows.append(MMERow(task, name, question, answer, image=images / name))
        elif task_dir.is_dir():
            qa_dir = task_dir / "questions_answers_YN" if (task_dir / "questions_answers_YN").is_dir() else task_dir
            for txt in sorted(qa_dir.glob("*.txt")):
                image = next(
                    (images / (txt.stem + s) for s in IMAGE_SUFFIXES if (images / (txt.stem + s)).is_file()), None
                )
                if image is None:
                    raise DataFileNotFound(f"{txt}: no image {txt.stem}.jpg/.png in {images}")
                files.append(txt)
                rows += [MMERow(task, image.name, q, a, image=image) for q, a in _tab_lines(txt, 2)]
    if not rows:
        raise DataError(f"{root} holds no MME subtask ({', '.join(PERCEPTION + COGNITION)})")
    return rows, files


def _tab_lines(path: Path, columns: int) -> list[list[str]]:
    """Tab-separated lines; the last column takes any extra tabs (a model answer may hold one)."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", columns - 1)
        if len(parts) != columns:
            raise DataError(f"{path}:{number}: expected {columns} tab-separated columns, got {len(parts)}")
        out.append(parts)
    return out


def read_results(folder: str | Path) -> list[MMERow]:
    """A results folder as the official tool reads it: ``<subtask>.txt`` with image, question, truth, answer."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileNotFound(f"MME results folder not found: {folder} (one <subtask>.txt per subtask)")
    rows = []
    for task in PERCEPTION + COGNITION:
        path = folder / f"{task}.txt"
        if path.is_file():
            rows += [MMERow(task, n, q, a, p) for n, q, a, p in _tab_lines(path, 4)]
    if not rows:
        raise DataError(f"{folder} holds no <subtask>.txt results ({', '.join(PERCEPTION + COGNITION)})")
    return rows


def write_results(folder: Path, rows: list[MMERow]) -> list[Path]:
    """One official-format file per subtask."""
    from owl.atomic import write_text

    paths = []
    for task in dict.fromkeys(r.task for r in rows):
        lines = [
            "\t".join([r.image_name, r.question, r.answer, " ".join(r.prediction.split())]) + "\n"
            for r in rows
            if r.task == task
        ]
        paths.append(folder / f"{task}.txt")
        write_text(paths[-1], "".join(lines))
    return paths


# ----------------------------------------------------------------------------- scoring


def _per_image(rows: list[MMERow], task: str) -> tuple[np.ndarray, int]:
    """Right answers per image of a subtask (0, 1 or 2) and the number of 'other' answers."""
    images: dict[str, list[bool]] = {}
    other = 0
    for r in rows:
        truth = r.answer.lower()
        if truth not in ("yes", "no"):
            raise DataError(f"MME {task}/{r.image_name}: the true answer must be Yes or No, got {r.answer!r}")
        pred = extract_yes_no(r.prediction)
        other += pred == "other"
        images.setdefault(r.image_name, []).append(pred == truth)
    odd = [name for name, v in images.items() if len(v) != 2]
    if odd:
        raise DataError(f"MME {task}: every image has two questions; {odd[0]} has {len(images[odd[0]])}")
    return np.array([sum(v) for v in images.values()]), other


def _task_score(draws: np.ndarray) -> np.ndarray:
    """100 (acc + acc+) of each draw of per-image right counts ``(B, n)``."""
    return 100.0 * (draws.sum(axis=1) / (2 * draws.shape[1]) + (draws == 2).mean(axis=1))


def score(
    rows: list[MMERow], *, resamples: int = bootstrap.DEFAULT_RESAMPLES, seed: int = bootstrap.DEFAULT_SEED
) -> dict[str, Any]:
    """Per subtask acc, acc+ and score; perception and cognition totals; bootstrap intervals over images."""
    kw = {"resamples": resamples, "seed": seed}
    tasks: dict[str, Any] = {}
    counts: dict[str, np.ndarray] = {}
    for task in PERCEPTION + COGNITION:
        task_rows = [r for r in rows if r.task == task]
        if not task_rows:
            continue
        right, other = _per_image(task_rows, task)
        counts[task] = right
        acc, acc_plus = right.sum() / (2 * len(right)), float((right == 2).mean())
        tasks[task] = {
            "images": len(right),
            "questions": 2 * len(right),
            "acc": round(100.0 * float(acc), 4),
            "acc_plus": round(100.0 * acc_plus, 4),
            "score": round(100.0 * (float(acc) + acc_plus), 4),
            "ci95": bootstrap.interval(right, _task_score, **kw),
            "other": other,
        }
    totals = {}
    for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [t for t in group if t in tasks]
        totals[name] = {
            "score": round(sum(tasks[t]["score"] for t in present), 4),
            "max": 200 * len(group),
            "ci95": bootstrap.interval([counts[t] for t in present], _task_score, **kw),
            "subtasks": len(present),
            "missing": [t for t in group if t not in tasks],
        }
    unit = "image, within each subtask"
    boot = {"resamples": resamples, "seed": seed, "unit": unit, "level": bootstrap.LEVEL}
    return {"benchmark": "mme", **totals, "subtasks": tasks, "bootstrap": boot}


def table(scores: dict[str, Any]) -> str:
    """Markdown: per subtask acc, acc+, score and its interval; then the totals."""
    lines = ["| subtask | images | acc | acc+ | score | 95% CI | other |", "|---|---:|---:|---:|---:|---|---:|"]
    for task, s in scores["subtasks"].items():
        lines.append(
            f"| {task} | {s['images']} | {s['acc']:.2f} | {s['acc_plus']:.2f} | {s['score']:.2f} | "
            f"{bootstrap.describe(s['ci95'])} | {s['other']} |"
        )
    for name in ("perception", "cognition"):
        t = scores[name]
        if t["subtasks"]:
            missing = f" ({t['subtasks']} of {t['subtasks'] + len(t['missing'])} subtasks)" if t["missing"] else ""
            lines.append(
                f"| **{name}**{missing} | | | | **{t['score']:.2f}** / {t['max']} | {bootstrap.describe(t['ci95'])} | |"
            )
    return "\n".join(lines)


def score_predictions(
    predictions: str,
    out: str | None,
    *,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> dict[str, Any]:
    """Score a results folder (the official tool's input) without a model; with ``out``, write scores.json and
    a manifest there."""
    t0 = time.perf_counter()
    rows = read_results(predictions)
    scores = score(rows, resamples=resamples, seed=seed)
    if out is not None:
        files = sorted(Path(predictions).glob("*.txt"))
        record = data_record(predictions, files)
        counts = {"questions": len(rows)}
        mf.record_finished(out, "mme", data=record, scores=scores, seconds=time.perf_counter() - t0, counts=counts)
    print(table(scores))
    return scores


# ----------------------------------------------------------------------------- running


def run_mme(
    model_dir: str | None,
    data: str | None,
    out: str | Path,
    settings: RunSettings,
    *,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
) -> dict[str, Any]:
    """Answer every MME question (batched, resumable), write the official results files and the scores."""
    p = plan("mme", model_dir, data, settings, {"prompt": "{question}"})
    rows, files = load_mme(p.data)
    record = data_record(p.data, files, sorted({r.image for r in rows if r.image is not None}))
    run = EvalRun("mme", out, p, settings, record, SHORT_ANSWERS).start()
    try:
        prompt = p.args["prompt"]
        samples = [
            (r.id, Sample([Message("user", f"{IMAGE_TOKEN}\n" + prompt.format(question=r.question))], [str(r.image)]))
            for r in rows
        ]
        run.answer(samples)
        done = run.records()
        answered = [r for r in rows if r.id in done and not run.transient(done[r.id])]
        for r in answered:
            r.prediction = run.text(done[r.id])
        errors = error_counts(done, [r.id for r in rows])
        counts = {"questions": len(rows), "answered": len(answered) - sum(errors.values()), "errors": errors}
        outputs = write_results(Path(out) / RESULTS_DIR, answered)
        scores = score(rows, resamples=resamples, seed=seed) if len(answered) == len(rows) else None
        if scores is not None:
            outputs.append(Path(out) / SCORES_NAME)
            _write_json(outputs[-1], scores)
        manifest = run.finish(counts, outputs, scores)
    finally:
        run.close()
    left = counts["questions"] - counts["answered"] - sum(errors.values())
    print(f"owl eval mme: {counts['answered']} answered, {sum(errors.values())} errors -> {Path(out) / RESULTS_DIR}",
          file=sys.stderr)  # fmt: skip
    print(table(scores) if scores else f"owl eval mme: {left} questions left; rerun to finish")
    return manifest


def _write_json(path: Path, data: Any) -> None:
    from owl.atomic import write_text

    write_text(path, json.dumps(data, indent=1) + "\n")
