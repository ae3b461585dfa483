"""OwlEval, the visually-related instruction set of mPLUG-Owl: a model's answers in the published format.

The set (``questions.jsonl``: ``image, question_id, question, ability, category``; images in ``cases/``) has 82
questions on 50 images. Questions that share an image are one dialogue, asked in question_id order: each later
question is asked after the earlier ones *and the model's own answers to them*, as a person chatting with the
model would. So the run goes turn by turn: the first question of every dialogue in one batched round, then the
second questions (with the first answers in their prompts), and so on; a round batches across images.

Output: ``answers.jsonl`` exactly as the published answer files (``image, question_id, question, answer,
model_id``; one line per question, in question_id order) and ``manifest.json``. Answers are rated by people (or a
judge), not scored here. A question whose prompt cannot be answered (too long for the model, an unreadable
image) gets an empty answer and is counted in the manifest; a later turn of its dialogue still gets asked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.errors import DataError, DataFileNotFound
from owl.eval.manifest import data_record
from owl.eval.runner import EvalRun, RunSettings, error_counts, plan
from owl.generation import GenerationOptions

QUESTIONS_NAME = "questions.jsonl"
ANSWERS_NAME = "answers.jsonl"
ANSWER_FIELDS = ("image", "question_id", "question", "answer", "model_id")
"""The published answer files' fields, in their order."""


def find_questions(data: str | Path) -> tuple[Path, Path]:
    """``data`` is the set's folder (with questions.jsonl) or the questions file; returns (file, image folder)."""
    path = Path(data)
    file = path / QUESTIONS_NAME if path.is_dir() else path
    if not file.is_file():
        raise DataFileNotFound(f"OwlEval questions not found: {file} (give the folder with {QUESTIONS_NAME})")
    images = file.parent / "cases"
    return file, images if images.is_dir() else file.parent


def load_questions(file: Path, image_dir: Path) -> list[dict[str, Any]]:
    """The questions, each checked for its fields and its image; a bad line names the file and line."""
    questions, seen = [], set()
    for number, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except ValueError as e:
            raise DataError(f"{file}:{number}: not a JSON record ({e})") from None
        missing = [f for f in ("image", "question_id", "question") if not isinstance(q, dict) or f not in q]
        if missing:
            raise DataError(
                f"{file}:{number}: lacks {', '.join(missing)} (an OwlEval line has image, question_id, ...)"
            )
        if q["question_id"] in seen:
            raise DataError(f"{file}:{number}: question_id {q['question_id']} repeats an earlier line's")
        seen.add(q["question_id"])
        if not (image_dir / q["image"]).is_file():
            raise DataFileNotFound(f"{file}:{number}: image {image_dir / q['image']} not found")
        questions.append(q)
    if not questions:
        raise DataError(f"{file} has no questions")
    return questions


def dialogues(questions: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Questions grouped by image, each group in question_id order; groups in the order of their first id."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        groups.setdefault(q["image"], []).append(q)
    ordered = [sorted(g, key=lambda q: q["question_id"]) for g in groups.values()]
    return sorted(ordered, key=lambda g: g[0]["question_id"])


def dialogue_sample(dialogue: list[dict[str, Any]], turn: int, answers: list[str], image: Path) -> Sample:
    """The prompt for question ``turn`` of a dialogue: the image, every earlier question with the model's own
    answer, then this question."""
    messages = []
    for k, q in enumerate(dialogue[: turn + 1]):
        text = q["question"].strip()
        messages.append(Message("user", f"{IMAGE_TOKEN}\n{text}" if k == 0 else text))
        if k < turn:
            messages.append(Message("assistant", answers[k]))
    return Sample(messages, [str(image)], source="owleval", id=str(dialogue[turn]["question_id"]))


def run_owleval(model_dir: str | None, data: str | None, out: str | Path, settings: RunSettings) -> dict[str, Any]:
    """Answer every OwlEval question not yet answered in ``out``; write answers.jsonl and manifest.json.

    Generation settings: the explicit ones in ``settings``, else the model's own (as the paper ran each system
    with its own), else owl's defaults. Returns the final manifest.
    """
    p = plan("owleval", model_dir, data, settings, {})
    file, image_dir = find_questions(p.data)
    questions = load_questions(file, image_dir)
    record = data_record(file.parent, [file], [image_dir / q["image"] for q in questions])
    run = EvalRun("owleval", out, p, settings, record, GenerationOptions()).start()
    try:
        dlgs = dialogues(questions)
        done = run.records()
        already = sum(1 for q in questions if str(q["question_id"]) in done)
        run.progress(len(questions) - already)
        for turn in range(max(len(d) for d in dlgs)):
            done = run.records()
            prompts = []
            for d in dlgs:
                if turn >= len(d) or str(d[turn]["question_id"]) in done:
                    continue
                earlier = [done.get(str(q["question_id"])) for q in d[:turn]]
                if any(r is None or run.transient(r) for r in earlier):
                    continue  # an earlier turn waits for the next run (--limit, out of memory): so does this one
                answers = [run.text(r) for r in earlier]
                prompts.append(
                    (str(d[turn]["question_id"]), dialogue_sample(d, turn, answers, image_dir / d[0]["image"]))
                )
            run.answer(prompts)
            if run.stopped:
                break
        done = run.records()
        model_id = run.manifest["model"]["id"]
        rows = [_answer_row(q, done.get(str(q["question_id"])), model_id) for q in questions]
        rows = sorted((r for r in rows if r is not None), key=lambda r: r["question_id"])
        answers_path = Path(out) / ANSWERS_NAME
        _write_jsonl(answers_path, rows)
        ids = [str(q["question_id"]) for q in questions]
        errors = error_counts(done, ids)
        counts = {"questions": len(questions), "answered": len(rows) - sum(errors.values()), "errors": errors}
        manifest = run.finish(counts, [answers_path])
    finally:
        run.close()
    _report(manifest, answers_path, already)
    return manifest


def _answer_row(q: dict[str, Any], record: dict[str, Any] | None, model_id: str) -> dict[str, Any] | None:
    if record is None or EvalRun.transient(record):
        return None
    row = {"image": q["image"], "question_id": q["question_id"], "question": q["question"]}
    return {**row, "answer": EvalRun.text(record), "model_id": model_id}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from owl.atomic import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _report(manifest: dict[str, Any], answers: Path, resumed: int) -> None:
    c = manifest["counts"]
    errors = sum(c["errors"].values())
    detail = f" ({', '.join(f'{k} {v}' for k, v in c['errors'].items())})" if errors else ""
    left = c["questions"] - c["answered"] - errors
    rest = f"; {left} left for the next run" if left else ""
    print(
        f"owl eval owleval: {c['answered']} of {c['questions']} answered, {errors} errors{detail}, "
        f"{resumed} from earlier runs{rest}; {manifest['wall_seconds']:.1f} s -> {answers}",
        file=sys.stderr,
    )
