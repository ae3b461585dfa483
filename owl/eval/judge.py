"""``owl eval judge``: optional automatic A/B/C/D ratings of OwlEval answers from an OpenAI-compatible LLM.

Human rating is the paper's measure but is slow; an LLM judge is cheap and repeatable, and is only worth
anything once its agreement with humans is known. That is why its records use the human ratings format with
the rater ``judge:<model>`` (never a human name), ``owl eval report`` keeps them out of the human counts and
puts their kappa against the human raters beside them instead. Any endpoint that speaks the OpenAI chat API
works (``owl serve`` included). Answers are judged one at a time and appended (flushed, fsynced) as they come,
so a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from owl.errors import DataError
from owl.eval.rating import LETTERS, SCALE, earlier_questions, now, read_ratings

# The scale is the paper's (taken from Self-Instruct), word for word; the judge is asked for the letter alone so
# that extraction need not guess which of several letters in a reasoning text is the verdict.
SYSTEM_PROMPT = (
    "You rate answers of a vision-language assistant. You are given the earlier questions of the dialogue "
    "about the same image (if any), the question, and the assistant's answer. Rate the answer on this scale:\n"
    + "\n".join(f"{k}: {v}" for k, v in SCALE.items())
    + "\nReply with one letter only: A, B, C or D."
)
# Asked once more in the same conversation when a reply holds no clear letter.
REMINDER = "Reply with one letter only: A, B, C or D."

_RATING = re.compile(r"rating\s*[:=]?\s*\**\s*\(?([ABCD])\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W*([ABCD])\s*(?:[.:)\-\u2013\u2014,]|$)")  # "B - minor", "C." but not "A dog"
_LONE = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")


def extract_letter(text: str) -> str | None:
    """The rating in a judge reply, or None when there is no unambiguous one.

    In order: the last ``Rating: X``; a reply that is just the letter (``B``, ``(d)``, ``**C**``); a reply that
    starts with the letter and a punctuation mark (``B - minor errors``, not ``A dog ...``); else the standalone
    capitals A-D only if they are all the same letter. "A dog, but B is fine" is ambiguous and gives None, so the
    judge is asked again rather than guessed for.
    """
    found = _RATING.findall(text)
    if found:
        return found[-1].upper()
    stripped = text.strip().strip(".*()[]`'\" ")
    if stripped.upper() in LETTERS:
        return stripped.upper()
    leading = _LEADING.match(text.strip())
    if leading:
        return leading.group(1)
    lone = set(_LONE.findall(text))
    return lone.pop() if len(lone) == 1 else None


def build_messages(question: dict, earlier: list[str], answer: str, image: Path | None = None) -> list[dict]:
    """The chat messages for one answer (the image as a data URL only when asked for: not every judge sees)."""
    lines = [f"Earlier question {i + 1}: {q}" for i, q in enumerate(earlier)]
    lines += [f"Question: {question['question']}", f"Answer: {answer}"]
    content: list[dict] | str = "\n".join(lines)
    if image is not None:
        kind = "png" if image.suffix.lower() == ".png" else "jpeg"
        url = f"data:image/{kind};base64,{base64.b64encode(image.read_bytes()).decode()}"
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": content}]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


# Statuses that refuse one request (a prompt over the judge's context, an image it cannot take), not the run.
_ITEM_STATUSES = (400, 413, 422)


class _Refused(Exception):
    """The endpoint refused this one request; the answer is left unjudged and the run goes on."""


@dataclass
class JudgeResult:
    """What one ``judge_answers`` run did (the CLI prints it)."""

    added: int = 0  # new ratings appended
    unclear: int = 0  # replies without a clear letter even after the reminder (a rerun asks again)
    refused: int = 0  # requests the endpoint refused with 400/413/422 (a rerun asks again)
    skipped: int = 0  # already judged in the output file
    first_refusal: str = ""


def _with_backoff(call: Callable[[], str], url: str, retries: int, backoff_s: float) -> str:
    """``call()`` retried on connection errors, timeouts, 429 and 5xx with exponential backoff (1, 2, 4, ... x
    ``backoff_s``). 400/413/422 refuse this request only (:class:`_Refused`); any other HTTP error (a wrong key, an
    unknown model, a wrong URL) cannot be fixed by waiting or by the next answer and ends the run."""
    import openai

    for attempt in range(retries + 1):
        try:
            return call()
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
            if attempt == retries:
                what = "unreachable" if isinstance(e, openai.APIConnectionError) else f"answered {e.status_code}"
                raise DataError(f"judge endpoint {url} {what} after {retries + 1} tries ({e})") from None
            time.sleep(backoff_s * 2**attempt)
        except openai.APIStatusError as e:
            if e.status_code in _ITEM_STATUSES:
                raise _Refused(f"{e.status_code}: {e.message[:200]}") from None
            hint = " (is --endpoint the base URL, e.g. http://127.0.0.1:8000/v1?)" if e.status_code == 404 else ""
            raise DataError(f"judge endpoint {url} answered {e.status_code}{hint}: {e.message[:200]}") from None
    raise AssertionError("unreachable")


def judge_answers(
    answers: dict[str, dict[int, str]],
    questions: dict[int, dict],
    out: Path,
    endpoint: str,
    model: str,
    api_key: str | None = None,
    cases: Path | None = None,
    limit: int | None = None,
    retries: int = 4,
    backoff_s: float = 1.0,
    max_tokens: int = 16,
    timeout_s: float = 120.0,
    progress: Callable[[int, int], None] | None = None,
) -> JudgeResult:
    """Judge every (question, system) not yet in ``out`` for this judge, at temperature 0; say what happened.

    A run whose first three requests are all refused stops (the endpoint cannot take these prompts at all)
    rather than going through every answer.
    """
    import openai

    rater = f"judge:{model}"
    done = set()
    if out.exists():
        done = {(int(r["question_id"]), str(r["system"])) for r in read_ratings([out]) if r["rater"] == rater}
    todo = [(q, s) for q in sorted(questions) for s in sorted(answers) if q in answers[s] and (q, s) not in done]
    if limit is not None:
        todo = todo[:limit]
    out.parent.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(
        base_url=endpoint, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "-", max_retries=0, timeout=timeout_s
    )
    result = JudgeResult(skipped=len(done))

    def ask(messages: list[dict]) -> str:
        def call() -> str:
            r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
            return (r.choices[0].message.content or "") if r.choices else ""

        return _with_backoff(call, endpoint, retries, backoff_s)

    for n, (q, system) in enumerate(todo):
        question = questions[q]
        image = cases / question["image"] if cases is not None else None
        messages = build_messages(question, earlier_questions(questions, q), answers[system][q], image)
        try:
            reply = ask(messages)
            letter = extract_letter(reply)
            if letter is None:  # once more, reminded; then left for a rerun rather than guessed
                messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": REMINDER}]
                reply = ask(messages)
                letter = extract_letter(reply)
        except _Refused as e:
            result.refused += 1
            result.first_refusal = result.first_refusal or f"question {q}: {e}"
            if result.refused == 3 and result.added == 0 and result.unclear == 0:
                msg = f"judge endpoint {endpoint} refused the first 3 requests ({result.first_refusal})"
                raise DataError(msg) from None
        else:
            if letter is None:
                result.unclear += 1
            else:
                record = {
                    "rater": rater,
                    "question_id": q,
                    "image": question["image"],
                    "system": system,
                    "rating": letter,
                    "timestamp": now(),
                    "judge_reply": reply,
                }
                _append(out, record)
                result.added += 1
        if progress is not None:
            progress(n + 1, len(todo))
    client.close()
    return result


def _append(out: Path, record: dict) -> None:
    """One judged answer, on disk (flushed, fsynced) before the next request: a killed run loses nothing."""
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
