"""``owl eval judge`` against a fake OpenAI-compatible server in this process (no network): prompt, letter
extraction, the reminder, retries with backoff, resume, the CLI and the report's judge section."""

from __future__ import annotations

import argparse
import json
import socket
import threading

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from owl.errors import DataError
from owl.eval.judge import REMINDER, SYSTEM_PROMPT, JudgeResult, extract_letter, judge_answers
from owl.eval.rating import read_ratings

QUESTIONS = {
    1: {"image": "1.jpg", "question_id": 1, "question": "What is it?", "ability": "b", "category": ["single_turn"]},
    2: {"image": "1.jpg", "question_id": 2, "question": "Why?", "ability": "e,f", "category": ["multi_turn"]},
}
ANSWERS = {"good": {1: "GOOD answer", 2: "GOOD again"}, "bad": {1: "BAD answer", 2: "BAD again"}}


def _completion(text: str, model: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture(scope="module")
def fake_server():
    """Canned replies: 'A' for GOOD answers, 'Rating: D' for BAD ones; 'MUDDLE' answers get an ambiguous reply
    until reminded; 'FLAKY' answers fail with 503 on the first try. Records every request body."""
    app = FastAPI()
    seen: list[dict] = []
    failed: set[str] = set()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> JSONResponse:
        seen.append(body)
        text = body["messages"][1]["content"]
        if "TOOLONG" in text:
            return JSONResponse({"error": {"message": "prompt too long", "type": "invalid_request"}}, status_code=400)
        if "FLAKY" in text and text not in failed:
            failed.add(text)
            return JSONResponse({"error": {"message": "busy", "type": "server_error"}}, status_code=503)
        if "MUDDLE" in text:
            reply = "B" if body["messages"][-1]["content"] == REMINDER else "A dog, but B is also fine"
        else:
            reply = "A" if "GOOD" in text else "The answer is wrong.\nRating: D"
        return JSONResponse(_completion(reply, body["model"]))

    @app.post("/bad/v1/chat/completions")
    def unauthorised() -> JSONResponse:
        return JSONResponse({"error": {"message": "bad key", "type": "auth"}}, status_code=401)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("Rating: B", "B"),
        ("**Rating:** C", "C"),
        ("A", "A"),
        ("(d)", "D"),
        ("**C**", "C"),
        ("B - acceptable, minor errors", "B"),
        ("I think B.\nRating: A", "A"),
        ("I would say C.", "C"),
        ("A dog, but B is also fine", None),
        ("none", None),
    ],
)
def test_extract_letter(reply, letter):
    assert extract_letter(reply) == letter


def test_prompt_states_scale_and_asks_one_letter():
    for letter, words in zip("ABCD", ("Correct and satisfying", "minor imperfections", "significant errors", "Irrel")):
        assert f"{letter}: " in SYSTEM_PROMPT and words in SYSTEM_PROMPT
    assert "one letter" in SYSTEM_PROMPT


def test_judge_resumable(fake_server, tmp_path):
    url, seen = fake_server
    seen.clear()
    out = tmp_path / "judged.jsonl"
    assert judge_answers(ANSWERS, QUESTIONS, out, url + "/v1", "fake", limit=1).added == 1
    result = judge_answers(ANSWERS, QUESTIONS, out, url + "/v1", "fake")
    assert result == JudgeResult(added=3, skipped=1)  # resumes: only the three not yet judged
    assert judge_answers(ANSWERS, QUESTIONS, out, url + "/v1", "fake").added == 0
    rows = read_ratings([out])
    assert {(r["question_id"], r["system"]): r["rating"] for r in rows} == {
        (1, "bad"): "D",
        (1, "good"): "A",
        (2, "bad"): "D",
        (2, "good"): "A",
    }
    assert {r["rater"] for r in rows} == {"judge:fake"} and all(r["timestamp"] for r in rows)
    assert len(seen) == 4 and seen[0]["messages"][0]["content"] == SYSTEM_PROMPT
    assert seen[0]["temperature"] == 0
    q2 = [s for s in seen if "Why?" in s["messages"][-1]["content"]][0]["messages"][-1]["content"]
    assert "Earlier question 1: What is it?" in q2


def test_reminder_and_backoff(fake_server, tmp_path):
    url, seen = fake_server
    seen.clear()
    answers = {"muddled": {1: "MUDDLE"}, "flaky": {1: "FLAKY but GOOD"}}
    out = tmp_path / "j.jsonl"
    assert judge_answers(answers, QUESTIONS, out, url + "/v1", "fake", backoff_s=0.01).added == 2
    got = {r["system"]: r["rating"] for r in read_ratings([out])}
    assert got == {"muddled": "B", "flaky": "A"}  # reminded once; retried after the 503
    assert len(seen) == 4
    with pytest.raises(DataError, match="answered 503 after 1 tries"):
        judge_answers({"x": {1: "FLAKY again"}}, QUESTIONS, tmp_path / "k.jsonl", url + "/v1", "m", retries=0)
    refused = {"long": {1: "TOOLONG", 2: "GOOD"}}
    result = judge_answers(refused, QUESTIONS, tmp_path / "r.jsonl", url + "/v1", "m")
    assert (result.added, result.refused) == (1, 1) and "question 1: 400" in result.first_refusal
    with pytest.raises(DataError, match="refused the first 3 requests"):
        judge_answers({s: {1: "TOOLONG"} for s in "xyz"}, QUESTIONS, tmp_path / "r2.jsonl", url + "/v1", "m")
    with pytest.raises(DataError, match="answered 401"):
        judge_answers(answers, QUESTIONS, tmp_path / "l.jsonl", url + "/bad/v1", "m", backoff_s=0.01)


def _parser() -> argparse.ArgumentParser:
    from owl.eval.rating_cli import add_parsers

    parser = argparse.ArgumentParser(prog="owl eval")
    add_parsers(parser.add_subparsers())
    return parser


def test_judge_cli_report_and_bad_endpoint(fake_server, tmp_path, capsys):
    url, _ = fake_server
    data = tmp_path / "data"
    (data / "answers").mkdir(parents=True)
    (data / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS.values()))
    for system, rows in ANSWERS.items():
        (data / "answers" / f"{system}.jsonl").write_text(
            "".join(json.dumps({"question_id": q, "answer": a, "model_id": system}) + "\n" for q, a in rows.items())
        )
    parser = _parser()
    out = tmp_path / "j.jsonl"
    args = parser.parse_args(
        ["judge", "--endpoint", url + "/v1", "--model", "m", "--out", str(out), "--data", str(data)]
    )
    args.func(args)
    assert "automatic judge judge:m: 4 new rating(s)" in capsys.readouterr().out
    assert len(read_ratings([out])) == 4
    # a human rated two of the same answers: the report shows the judge apart, with its agreement
    human = tmp_path / "h.jsonl"
    human.write_text(
        "".join(
            json.dumps({"rater": "ann", "question_id": q, "system": s, "rating": r}) + "\n"
            for q, s, r in ((1, "good", "A"), (1, "bad", "C"))
        )
    )
    args = parser.parse_args(["report", str(out), str(human), "--out", str(tmp_path / "rep"), "--data", str(data)])
    args.func(args)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Automatic judge (optional; an LLM, not human ratings)" in md
    assert "| judge:m | human consensus | 2 |" in md and "| judge:m | ann | 2 |" in md
    dead = ["judge", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path / "x.jsonl")]
    args = parser.parse_args([*dead, "--data", str(data), "--retries", "0"])
    with pytest.raises(DataError, match="unreachable"):
        args.func(args)


def test_show_prompt_and_help(capsys):
    parser = _parser()
    args = parser.parse_args(["judge", "--show-prompt"])
    args.func(args)
    assert capsys.readouterr().out.strip() == SYSTEM_PROMPT
    with pytest.raises(SystemExit):
        parser.parse_args(["judge", "--help"])
    assert "Reply with one letter only" in capsys.readouterr().out
    args = parser.parse_args(["judge", "--model", "m"])
    with pytest.raises(DataError, match="--endpoint, --out"):
        args.func(args)
