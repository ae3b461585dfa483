"""Fuzz table of bad input lines for `owl generate`: each is reported on its own line, the good ones are answered.

Why: a prompt file of a million lines from a scrape or an export will hold broken JSON, missing fields, wrong
types, images that are gone, corrupt, enormous or outside the folder the run may read. `owl generate` promises
(owl/batch.py) that such a line becomes one output line with its id (the line number when the line has no id of
its own), a one-sentence ``error`` and an ``error_code``; that every other line is still answered; that the summary
on stderr counts each code; and that the run exits 0. Every table row is one line of one input file, between good
lines, and the real CLI (``owl.cli.main``) runs once over it; each row then asserts its own outcome. A hypothesis
property feeds arbitrary text lines through the same CLI and checks that none is lost.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from owl.cli import main
from tests.helpers import random_image

NEW_TOKENS = 3
SKIPPED = "skipped"  # a blank line is no record: no output line (documented: blank lines are passed over)


def _bomb() -> bytes:
    """A PNG header claiming 30000 x 30000 pixels over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(b"\0" * 32)) + chunk(b"IEND", b"")


def _png() -> bytes:
    buf = io.BytesIO()
    random_image(0).save(buf, "PNG")
    return buf.getvalue()


def said(*parts: dict) -> dict:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def url(u: object) -> dict:
    return {"type": "image_url", "image_url": {"url": u}}


Q = {"type": "text", "text": "What is it?"}

# (id, the line: a record without an id (its id is then its line number), a record with one, or raw text/bytes;
#  the error_code, None (answered) or SKIPPED; a fragment the error message must hold)
CASES: list[tuple[str, object, str | None, str]] = [
    ("gen-json-truncated", '{"prompt": "Hi"', "malformed_json", "is not a JSON record"),
    ("gen-json-trailing-garbage", '{"prompt": "Hi"} and more', "malformed_json", "Extra data"),
    ("gen-json-two-records", '{"prompt": "a"}{"prompt": "b"}', "malformed_json", "Extra data"),
    ("gen-json-single-quotes", "{'prompt': 'Hi'}", "malformed_json", "property name"),
    ("gen-json-bare-words", "prompt: what is this?", "malformed_json", "Expecting value"),
    ("gen-json-latin1", '{"prompt": "café"}'.encode("latin-1"), "malformed_json", "utf-8"),
    ("gen-json-nul-bytes", b"\x00\x00\x00", "malformed_json", "is not a JSON record"),
    ("gen-json-deep-nesting", "[" * 60_000, "malformed_json", "is not a JSON record"),
    ("gen-json-huge-integer", '{"prompt": "Hi", "n": ' + "9" * 5000 + "}", "malformed_json", "digits"),
    ("gen-json-nan-prompt", '{"prompt": NaN}', "no_prompt", "no prompt"),
    ("gen-json-bom-mid-file", '\ufeff{"prompt": "Hi"}', None, ""),  # json reads a UTF-8 BOM as the encoding's mark
    ("gen-json-crlf", '{"prompt": "Hi"}\r', None, ""),
    ("gen-blank-line", " \t\r", SKIPPED, ""),
    ("gen-record-array", '[{"prompt": "Hi"}]', "bad_type", "must be a JSON object, got list"),
    ("gen-record-bool", "true", "bad_type", "got bool"),
    ("gen-prompt-missing", {"query": "Hi"}, "no_prompt", "keys: query"),
    ("gen-prompt-empty-record", {}, "no_prompt", "keys: none"),
    ("gen-prompt-null", {"prompt": None}, "no_prompt", "no prompt"),
    ("gen-prompt-list", {"prompt": ["Hi"]}, "no_prompt", "no prompt"),
    ("gen-prompt-object", {"prompt": {"text": "Hi"}}, "no_prompt", "no prompt"),
    ("gen-prompt-whitespace", {"prompt": "\t \n "}, "no_prompt", "no user turn"),
    ("gen-instruction-number", {"instruction": 5}, "no_prompt", "no prompt"),
    ("gen-messages-not-list", {"messages": {"role": "user", "content": "Hi"}}, "bad_type", "must be a list"),
    ("gen-messages-empty", {"messages": []}, "no_prompt", "no user turn"),
    ("gen-messages-unknown-role", {"messages": [{"role": "wizard", "content": "Hi"}]}, "unknown_role", "'wizard'"),
    ("gen-messages-content-number", {"messages": [{"role": "user", "content": 5}]}, "bad_type", "content"),
    ("gen-messages-assistant-only", {"messages": [{"role": "assistant", "content": "Hello"}]}, "no_prompt", "no user turn"),
    ("gen-messages-turn-not-object", {"conversations": ["Hi"]}, "bad_type", "turn"),
    ("gen-part-text-number", said({"type": "text", "text": 5}), "bad_type", "a text part needs a string 'text', got 5"),
    ("gen-part-url-empty", said(url(""), Q), "bad_type", "needs a path or URL"),
    ("gen-part-url-object", said(url({"x": 1}), Q), "bad_type", "needs a path or URL"),
    ("gen-part-remote", said(url("http://169.254.169.254/latest/meta-data"), Q), "remote_image", "not fetched"),
    ("gen-part-data-bad-base64", said(url("data:image/png;base64,@@@"), Q), "bad_image", "not valid base64"),
    ("gen-part-data-bomb", said(url("data:image/png;base64," + base64.b64encode(_bomb()).decode()), Q), "image_too_large", "decompression bomb"),
    ("gen-image-empty-file", {"prompt": "?", "image": "empty.png"}, "bad_image", "empty.png"),
    ("gen-image-truncated", {"prompt": "?", "image": "half.png"}, "bad_image", "half.png"),
    ("gen-image-text-file", {"prompt": "?", "image": "notes.txt"}, "bad_image", "notes.txt"),
    ("gen-image-bomb-file", {"prompt": "?", "image": "bomb.png"}, "image_too_large", "decompression bomb"),
    ("gen-image-directory", {"prompt": "?", "image": "sub"}, "missing_image", "sub"),
    ("gen-image-fifo", {"prompt": "?", "image": "pipe.png"}, "missing_image", "pipe.png"),
    ("gen-image-symlink-loop", {"prompt": "?", "image": "loop.png"}, "missing_image", "loop.png"),
    ("gen-image-name-too-long", {"prompt": "?", "image": "n" * 5000 + ".png"}, "missing_image", "nnnn"),
    ("gen-image-nul-byte", {"prompt": "?", "image": "a.png\x00.txt"}, "bad_type", "NUL byte"),
    ("gen-image-dotdot", {"prompt": "?", "image": "../outside.png"}, "image_outside_root", "--image-root"),
    ("gen-image-home", {"prompt": "?", "image": "~/.ssh/id_rsa"}, "image_outside_root", "--image-root"),
    ("gen-images-nested-list", {"prompt": "?", "images": [["a.png"]]}, "bad_type", "image"),
    ("gen-images-too-many", {"prompt": "?", "images": ["a.png"] * 120}, "prompt_too_long", "max_length=512"),
    ("gen-images-fewer-than-markers", {"prompt": "<image> and <image>?", "image": "a.png"}, "image_count_mismatch", "2"),
    ("gen-id-float", {"id": 1.5, "prompt": "Hi"}, None, ""),  # not an id: the line number is
    ("gen-id-object", {"id": {"n": 1}, "prompt": "Hi"}, None, ""),
    ("gen-params-absurd", {"prompt": "Hi", "max_new_tokens": 10**12, "temperature": -1, "top_p": 7, "seed": "x", "n": 99}, None, ""),
    ("gen-params-stop-garbage", {"prompt": "Hi", "stop": [1, None, ""], "max_length": -5}, None, ""),
    ("gen-reference-number", {"prompt": "Hi", "reference": 5, "answer": None}, None, ""),
]  # fmt: skip


def _ids(table: list[tuple]) -> dict:
    ids = [row[0] for row in table]
    assert len(set(ids)) == len(ids) and all(i.startswith("gen-") for i in ids), ids
    return {"argvalues": [row[1:] for row in table], "ids": ids}


def _line(line: object) -> bytes:
    if isinstance(line, bytes):
        return line
    return (json.dumps(line) if isinstance(line, dict) else line).encode("utf-8")


def _generate(model: Path, inp: Path, out: Path, *extra: str) -> tuple[int, str]:
    """``owl generate`` through the real entry point, in-process; (exit code, stderr)."""
    err = io.StringIO()
    args = ["generate", str(model), "--input", str(inp), "--output", str(out), "--max-new-tokens", str(NEW_TOKENS)]
    with contextlib.redirect_stderr(err):
        code = main([*args, "--batch-size", "4", "--no-progress", *extra])
    return code, err.getvalue()


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-gen-model") / "tiny"
    assert main(["new", "--preset", "tiny", "--out", str(path), "--tokenizer", "byte"]) == 0
    return path


@pytest.fixture(scope="module")
def run(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The data folder, one input file (a good line before every table row), one run; what it wrote and said."""
    base = tmp_path_factory.mktemp("fuzz-gen")
    data = base / "data"
    (data / "sub").mkdir(parents=True)
    png = _png()
    (data / "a.png").write_bytes(png)
    (data / "half.png").write_bytes(png[: len(png) // 2])
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (data / "empty.png").write_bytes(b"")
    (data / "notes.txt").write_text("not an image")
    (data / "bomb.png").write_bytes(_bomb())
    (base / "outside.png").write_bytes(png)
    (data / "link-out.png").symlink_to(base / "outside.png")
    (data / "loop.png").symlink_to(data / "loop.png")
    os.mkfifo(data / "pipe.png")  # opening it would block: the run must not open it
    lines, where = [], {}
    for i, (case, line, _, _) in enumerate(CASES):
        lines.append(_line({"id": f"good-{i}", "prompt": f"Question {i}?"}))
        lines.append(_line(line))
        where[case] = len(lines)
    lines.append(_line({"id": "good-last", "image": "a.png", "prompt": "And this one?"}))
    inp = data / "in.jsonl"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    out = base / "out.jsonl"
    code, err = _generate(model, inp, out)
    return {"code": code, "stderr": err, "records": _records(out), "where": where, "lines": len(lines),
            "inp": inp, "out": out}  # fmt: skip


def _record(run: dict, case: str, line: object) -> dict | None:
    """The output line of a table row: by its own id if it has a usable one, else by its line number."""
    own = line.get("id") if isinstance(line, dict) else None
    want = own if isinstance(own, str) else run["where"][case]
    hits = [r for r in run["records"] if r["id"] == want and (case != "gen-duplicate-id" or "line" in r)]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


@pytest.mark.parametrize(("line", "code", "fragment"), **_ids(CASES))
def test_each_bad_line_is_reported_with_its_line_and_reason(run: dict, line: object, code: str | None, fragment: str,
                                                            request: pytest.FixtureRequest) -> None:  # fmt: skip
    case = request.node.callspec.id
    record = _record(run, case, line)
    if code == SKIPPED:
        assert record is None
        return
    assert record is not None, (case, run["where"][case])
    if code is None:
        assert set(record) == {"id", "answer", "finish_reason", "prompt_tokens", "completion_tokens"}, record
        assert 1 <= record["completion_tokens"] <= NEW_TOKENS and record["finish_reason"] in ("stop", "length")
        return
    assert set(record) == {"id", "error", "error_code"} | ({"line"} if code == "duplicate_id" else set()), record
    assert record["error_code"] == code, record
    error = record["error"]
    assert isinstance(error, str) and error.strip() and "\n" not in error and "Traceback" not in error, record
    assert fragment in error, record
    if code == "malformed_json":
        assert f"line {run['where'][case]} " in error, record  # the message names the line too
    if code == "duplicate_id":
        assert record["line"] == run["where"][case], record


def test_the_run_answers_the_good_lines_counts_the_bad_and_exits_0(run: dict) -> None:
    assert run["code"] == 0, run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"]
    records = run["records"]
    assert len(records) == run["lines"] - sum(c == SKIPPED for _, _, c, _ in CASES)  # one per record: none lost
    good = [r for r in records if str(r["id"]).startswith("good-") and "line" not in r]
    assert len(good) == len(CASES) + 1 and all("answer" in r for r in good), [r for r in good if "answer" not in r]
    want = Counter(c for _, _, c, _ in CASES if c not in (None, SKIPPED))
    answered = len(records) - sum(want.values())
    summary = run["stderr"].strip().splitlines()[-1]
    assert summary.startswith(f"owl generate: {answered} answered, {sum(want.values())} errors ("), summary
    assert re.search(r", 0 skipped \(already in .*\) in [\d.]+ s", summary), summary
    got = dict(re.findall(r"(\w+) (\d+)", summary.split("errors (", 1)[1].split(")", 1)[0]))
    assert {k: int(v) for k, v in got.items()} == dict(want), summary
    assert Counter(r["error_code"] for r in records if "error" in r) == want


def test_a_second_run_redoes_nothing(run: dict, model: Path) -> None:
    """Bad lines are permanent errors: the same input gives them again, so a resumed run skips them."""
    before = run["out"].read_bytes()
    code, err = _generate(model, run["inp"], run["out"])
    assert code == 0 and run["out"].read_bytes() == before, err[-2000:]
    assert f"owl generate: 0 answered, 0 errors, {len(run['records'])} skipped" in err


# ----------------------------------------------------------------------------- property: no line is lost


@pytest.fixture(scope="module")
def fast_load() -> Iterator[None]:
    """Load the tiny model once for every hypothesis example (the CLI loads it per run; the rest stays real)."""
    import owl.models

    real = owl.models.load_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(owl.models, "load_model", cache(lambda path, dtype=None: real(path, dtype=dtype)))
        yield


LINE = st.one_of(
    st.text(max_size=40),
    st.builds(json.dumps, st.dictionaries(
        st.sampled_from(["id", "prompt", "question", "text", "instruction", "image", "images", "messages"]),
        st.recursive(st.none() | st.booleans() | st.integers(-2, 40) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                     max_leaves=6),
        max_size=3)),
)  # fmt: skip


def _expected_id(raw: bytes, lineno: int) -> str:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return str(lineno)
    own = record.get("id") if isinstance(record, dict) else None
    return str(own) if isinstance(own, (str, int)) and not isinstance(own, bool) else str(lineno)


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@pytest.mark.usefixtures("fast_load")
@given(lines=st.lists(LINE, min_size=1, max_size=5))
def test_any_lines_are_each_answered_or_reported(
    model: Path, tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    d = tmp_path_factory.mktemp("prop")
    raw = [b'{"prompt": "first"}'] + [x.replace("\n", " ").encode("utf-8", "surrogatepass") for x in lines]
    (d / "in.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    code, err = _generate(model, d / "in.jsonl", d / "out.jsonl")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    records = _records(d / "out.jsonl")
    want = Counter(_expected_id(x, n) for n, x in enumerate(raw, start=1) if x.strip())
    assert Counter(str(r["id"]) for r in records) == want, (records, raw)
    for r in records:
        answered = {"answer", "finish_reason"} <= set(r) and "error" not in r
        reported = isinstance(r.get("error"), str) and r["error"] and isinstance(r.get("error_code"), str)
        assert answered != bool(reported), r
