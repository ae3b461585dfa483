"""OwlEval human rating: the data side (questions, answers, blind order, the append-only ratings file).

The paper's headline comparison is a human A/B/C/D rating of each system's answers, but the per-answer
ratings were never published; this module lets anyone redo it blind. Ratings are one JSON line each
(``rater, question_id, image, system, rating, timestamp``), appended, flushed and fsynced the moment a button
is pressed, so a closed tab or a killed process loses at most the rating in flight. An undo is itself an
appended record (``{"rater", "undo": true, "timestamp"}``) that cancels that rater's latest rating still in
force, never a rewrite: the file stays a complete log that a crash cannot truncate, and :func:`read_ratings`
replays it. The browser side lives in :mod:`owl.eval.rating_app`.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from owl.errors import DataError, DataFileNotFound

LETTERS = ("A", "B", "C", "D")
SCALE = {
    "A": "Correct and satisfying response.",
    "B": "Acceptable response with minor imperfections.",
    "C": "Responds to the instruction but has significant errors.",
    "D": "Irrelevant or invalid response.",
}
ABILITIES = {  # names as in the OwlEval README
    "a": "instruction understanding",
    "b": "visual understanding",
    "c": "optical character recognition",
    "d": "knowledge transfer",
    "e": "reasoning",
    "f": "multi-turn dialogue",
}
# model_id in the published answer files -> the name the paper's figure uses
DISPLAY = {
    "MMreact": "MM-REACT",
    "BLIP2": "BLIP-2",
    "llava-13b": "LLaVA",
    "mPLUG_Owl_7b:v1": "mPLUG-Owl",
    "minigpt4_13b": "MiniGPT-4",
    "openflanmingo": "OpenFlamingo",
}


def display_name(system: str) -> str:
    """The paper's name for a published system (unknown systems keep their own id)."""
    return DISPLAY.get(system, system)


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in _numbered_jsonl(path)]


def _numbered_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DataFileNotFound(f"{path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not a JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: a JSON object per line expected")
            rows.append((n, row))
    return rows


def load_questions(data: str | Path) -> dict[int, dict]:
    """questions.jsonl of an OwlEval folder, by question_id."""
    return {int(q["question_id"]): q for q in _read_jsonl(Path(data) / "questions.jsonl")}


def load_answers(paths: list[str | Path]) -> dict[str, dict[int, str]]:
    """system (model_id, else the file stem) -> question_id -> answer, for each answers file."""
    out: dict[str, dict[int, str]] = {}
    for p in paths:
        rows = _read_jsonl(Path(p))
        if not rows:
            raise DataError(f"{p} has no answers")
        system = str(rows[0].get("model_id") or Path(p).stem)
        if system in out:
            raise DataError(f"{p}: system {system!r} is given twice")
        out[system] = {int(r["question_id"]): str(r.get("answer", "")) for r in rows}
    return out


def default_answer_files(data: str | Path) -> list[Path]:
    """The six published answer files of DATA/answers."""
    files = sorted((Path(data) / "answers").glob("*.jsonl"))
    if not files:
        raise DataFileNotFound(f"no answers/*.jsonl under {data}: pass --answers or --data")
    return files


def read_ratings(paths: list[str | Path]) -> list[dict]:
    """The ratings in force after undo records: each undo cancels its rater's latest rating still in force.

    Files are replayed in the order given. A rater who rated the same (question, system) twice keeps the later
    rating (the page never asks twice, but two sessions of one rater into two files may).
    """
    stacks: dict[str, list[dict]] = {}
    for p in paths:
        for n, r in _numbered_jsonl(Path(p)):
            rater = str(r.get("rater", ""))
            stack = stacks.setdefault(rater, [])
            if r.get("undo"):
                if stack:
                    stack.pop()
                continue
            if r.get("rating") not in LETTERS:
                raise DataError(f"{p}:{n}: rating {r.get('rating')!r} is not one of A/B/C/D")
            if not rater or "question_id" not in r or "system" not in r:
                raise DataError(f"{p}:{n}: a rating needs rater, question_id and system")
            stack.append(r)
    latest: dict[tuple, dict] = {}
    for rater, stack in stacks.items():
        for r in stack:
            latest[(rater, int(r["question_id"]), str(r["system"]))] = r
    return list(latest.values())


def now() -> str:
    """UTC timestamp of a record (ISO 8601, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def earlier_questions(questions: dict[int, dict], question_id: int) -> list[str]:
    """The dialogue so far: questions on the same image with a smaller question_id, in order."""
    image = questions[question_id]["image"]
    return [questions[k]["question"] for k in sorted(questions) if k < question_id and questions[k]["image"] == image]


@dataclass
class RatingSession:
    """One rater's blind pass over the answers: fixed per-rater order, resumable from the ratings file.

    Questions keep their question_id order (so a dialogue reads turn by turn); the systems' answers to each
    question are shuffled by a generator seeded with ``seed`` and the rater's name, so the order is stable
    across reloads and restarts but differs between raters (no position bias shared by everyone). The page
    addresses answers by random ids drawn once per session: a hash of (rater, question, system) would let
    anyone who knows the six public model ids unblind the page by hashing them.
    """

    answers: dict[str, dict[int, str]]
    questions: dict[int, dict]
    rater: str
    out: Path
    cases: Path
    seed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.rater or self.rater.startswith("judge:"):
            raise DataError("--rater must be a non-empty name not starting with 'judge:'")
        rng = random.Random(f"owleval-rate:{self.seed}:{self.rater}")
        qids = sorted(q for q in self.questions if all(q in a for a in self.answers.values()))
        if not qids:
            raise DataError("the answers files share no question with questions.jsonl")
        self.items: list[tuple[int, str]] = []
        systems = sorted(self.answers)
        for q in qids:  # question order kept (dialogues read naturally); systems shuffled within each question
            order = systems[:]
            rng.shuffle(order)
            self.items += [(q, s) for s in order]
        self.ids = {item: secrets.token_hex(8) for item in self.items}
        self.by_id = {opaque: item for item, opaque in self.ids.items()}
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def rated(self) -> dict[tuple[int, str], str]:
        """This rater's ratings in force in the output file (undo applied)."""
        if not self.out.exists():
            return {}
        mine = [r for r in read_ratings([self.out]) if r.get("rater") == self.rater]
        return {(int(r["question_id"]), str(r["system"])): r["rating"] for r in mine}

    def state(self) -> dict:
        """What the page shows next: the first unrated item (blind) and the progress."""
        done = self.rated()
        total = len(self.items)
        for pos, (q, s) in enumerate(self.items):
            if (q, s) not in done:
                question = self.questions[q]
                answer_no = [s2 for q2, s2 in self.items if q2 == q].index(s) + 1
                return {
                    "done": len(done),
                    "total": total,
                    "finished": False,
                    "item": {
                        "id": self.ids[(q, s)],
                        "position": pos + 1,
                        "image": f"/image/{question['image']}",
                        "dialogue": earlier_questions(self.questions, q),
                        "question": question["question"],
                        "answer": self.answers[s][q],
                        "answer_no": answer_no,
                        "answers_for_question": len(self.answers),
                    },
                }
        return {"done": len(done), "total": total, "finished": True, "item": None}

    def _append(self, record: dict) -> None:
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rate(self, opaque: str, rating: str) -> dict:
        """Append one rating (fsynced before returning) and give the next state."""
        if rating not in LETTERS:
            raise DataError(f"rating must be one of A/B/C/D, not {rating!r}")
        if opaque not in self.by_id:
            raise DataError("unknown answer id (the rating server was restarted): reload the page")
        q, s = self.by_id[opaque]
        with self._lock:
            self._append(
                {
                    "rater": self.rater,
                    "question_id": q,
                    "image": self.questions[q]["image"],
                    "system": s,
                    "rating": rating,
                    "timestamp": now(),
                }
            )
            return self.state()

    def undo(self) -> dict:
        """Append an undo record (cancels this rater's latest rating) and give the next state."""
        with self._lock:
            if self.rated():
                self._append({"rater": self.rater, "undo": True, "timestamp": now()})
            return self.state()
