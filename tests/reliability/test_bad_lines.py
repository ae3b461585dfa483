"""Bad input lines for `owl generate`, one table row each, all in one input file between good lines and run once
through the real CLI: every bad line becomes one error line in the output (its id, a readable ``error``, an
``error_code``), every good line is answered, the summary counts each code, and the run exits 0. One bad record
in a million-prompt file must cost one line, not the run.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from owl.cli import main
from tests.helpers import png_claiming, random_image


def _parts(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def _url(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# (id, the line: a dict (given this id) or raw text (its id is then its line number), error_code or None: answered)
CASES: list[tuple[str, object, str | None]] = [
    ("gen-good-prompt", {"prompt": "Hi"}, None),
    ("gen-good-image", {"prompt": "What is it?", "image": "a.png"}, None),
    ("gen-good-id-is-bool", {"prompt": "Hi", "id": True}, None),  # not an id: the line number is
    ("gen-malformed-json", '{"id": "x", "prompt": ', "malformed_json"),
    ("gen-binary-garbage", "\x00\x01garbage\x7f", "malformed_json"),
    ("gen-deeply-nested", "{" + '"a":[' * 30000, "malformed_json"),
    ("gen-two-records-one-line", '{"prompt": "a"} {"prompt": "b"}', "malformed_json"),
    ("gen-record-list", "[1, 2]", "bad_type"),
    ("gen-record-string", '"just a prompt"', "bad_type"),
    ("gen-record-number", "42", "bad_type"),
    ("gen-record-null", "null", "bad_type"),
    ("gen-no-prompt-field", {"query": "Hi"}, "no_prompt"),
    ("gen-prompt-number", {"prompt": 5}, "no_prompt"),
    ("gen-prompt-empty", {"prompt": ""}, "no_prompt"),
    ("gen-prompt-blank", {"prompt": " \n\t"}, "no_prompt"),
    ("gen-duplicate-id", {"prompt": "Hi", "id": "gen-good-prompt"}, "duplicate_id"),
    ("gen-image-missing", {"prompt": "What?", "image": "nope.png"}, "missing_image"),
    ("gen-image-corrupt", {"prompt": "What?", "image": "corrupt.png"}, "bad_image"),
    ("gen-image-not-an-image", {"prompt": "What?", "image": "notes.txt"}, "bad_image"),
    ("gen-image-escapes-root", {"prompt": "What?", "image": "../outside.png"}, "image_outside_root"),
    ("gen-image-absolute-outside", {"prompt": "What?", "image": "/etc/hostname"}, "image_outside_root"),
    ("gen-image-symlink-out", {"prompt": "What?", "image": "link-out.png"}, "image_outside_root"),
    ("gen-image-number", {"prompt": "What?", "image": 5}, "bad_type"),
    ("gen-image-list-of-null", {"prompt": "What?", "images": [None]}, "bad_type"),
    ("gen-image-count-mismatch", {"prompt": "<image> and <image>?", "image": "a.png"}, "image_count_mismatch"),
    ("gen-part-file-url-outside", {"messages": _parts(_url("file:///etc/passwd"), {"type": "text", "text": "?"})}, "image_outside_root"),
    ("gen-part-traversal", {"messages": _parts(_url("../../../../etc/passwd"), {"type": "text", "text": "?"})}, "image_outside_root"),
    ("gen-part-remote-url", {"messages": _parts(_url("https://example.com/cat.png"), {"type": "text", "text": "?"})}, "remote_image"),
    ("gen-part-bad-base64", {"messages": _parts(_url("data:image/png;base64,!!!"), {"type": "text", "text": "?"})}, "bad_image"),
    ("gen-part-data-not-image", {"messages": _parts(_url(_b64(b"plain text")), {"type": "text", "text": "?"})}, "bad_image"),
    ("gen-part-bomb", {"messages": _parts(_url(_b64(png_claiming(30000, 30000))), {"type": "text", "text": "?"})}, "image_too_large"),
    ("gen-part-unknown-type", {"messages": _parts({"type": "audio", "audio": "x"})}, "bad_type"),
    ("gen-part-not-object", {"messages": _parts("Hi")}, "bad_type"),
    ("gen-part-url-missing", {"messages": _parts({"type": "image_url"})}, "bad_type"),
    ("gen-conversations-not-list", {"conversations": "Hi"}, "bad_type"),
    ("gen-conversation-unknown-role", {"conversations": [{"from": "narrator", "value": "Hi"}]}, "unknown_role"),
    ("gen-conversation-answer-only", {"conversations": [{"from": "gpt", "value": "Hello"}]}, "no_prompt"),
    ("gen-messages-system-only", {"messages": [{"role": "system", "content": "Be brief."}]}, "no_prompt"),
    ("gen-prompt-over-length", {"prompt": "word " * 1000}, "prompt_too_long"),
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Write the model, the files and the input; run `owl generate` once; return what it wrote and said."""
    root = tmp_path_factory.mktemp("gen")
    data = root / "data"
    data.mkdir()
    random_image(0).save(data / "a.png")
    random_image(1).save(root / "outside.png")
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "notes.txt").write_text("not an image")
    (data / "link-out.png").symlink_to(root / "outside.png")
    model = root / "model"
    assert main(["new", "--preset", "tiny", "--out", str(model), "--tokenizer", "byte",
                 "--set", "processor.max_length=2048"]) == 0  # fmt: skip
    lines, ids = [], {}
    for case, line, _ in CASES:
        if isinstance(line, dict):
            line = {"id": case, **line}
            lines.append(json.dumps(line))
        else:
            lines.append(line)
        own = line.get("id") if isinstance(line, dict) else None
        ids[case] = own if isinstance(own, str) else str(len(lines))  # no usable id: the line number is the id
    (data / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    out = root / "out.jsonl"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["generate", str(model), "--input", str(data / "in.jsonl"), "--output", str(out),
                     "--max-new-tokens", "3", "--batch-size", "4", "--no-progress"])  # fmt: skip
    records = [json.loads(x) for x in out.read_text().splitlines()]
    return {"code": code, "stderr": err.getvalue(), "records": records, "ids": ids}


def _find(run: dict, case: str) -> dict:
    want = run["ids"][case]
    hits = [r for r in run["records"] if str(r["id"]) == want]
    if want == "gen-good-prompt":  # the duplicate shares its id: told apart by its line
        hits = [r for r in hits if ("line" in r) == (case == "gen-duplicate-id")]
    assert len(hits) == 1, (case, want, hits)
    return hits[0]


@pytest.mark.parametrize(("line", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_line_is_answered_or_reported(run: dict, line: object, code: str | None, request) -> None:
    case = request.node.callspec.id
    record = _find(run, case)
    if isinstance(line, str):  # not a JSON object: reported under its line number
        assert str(record["id"]).isdigit()
    if code is None:
        assert "error" not in record and record["completion_tokens"] <= 3 and isinstance(record["answer"], str)
        return
    assert record["error_code"] == code, record
    assert isinstance(record["error"], str) and record["error"] and "\n" not in record["error"]
    if code == "image_outside_root":
        assert "--image-root" in record["error"]


def test_the_run_completes_and_counts_every_error(run: dict) -> None:
    assert run["code"] == 0, run["stderr"][-3000:]
    assert len(run["records"]) == len(CASES)  # one output line per input line, none lost, none doubled
    wanted: dict[str, int] = {}
    for _, _, code in CASES:
        if code is not None:
            wanted[code] = wanted.get(code, 0) + 1
    summary = run["stderr"].strip().splitlines()[-1]
    answered = sum(1 for c in CASES if c[2] is None)
    assert summary.startswith(f"owl generate: {answered} answered, {sum(wanted.values())} errors ("), summary
    for code, n in wanted.items():
        assert re.search(rf"\b{code} {n}\b", summary), (code, n, summary)
    assert "Traceback" not in run["stderr"]


@settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.one_of(st.text(max_size=40), st.builds(json.dumps, st.dictionaries(
    st.sampled_from(["id", "prompt", "image", "images", "messages", "conversations", "text", "question"]),
    st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=8),
                 lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                 max_leaves=5), max_size=4))), min_size=1, max_size=6))  # fmt: skip
def test_any_lines_are_each_answered_or_reported(tmp_path_factory: pytest.TempPathFactory, lines) -> None:
    """Every line is read as one record, and each record either becomes a prompt or carries one error code: the
    reading and checking `owl generate` does before batching, without the model (the table above runs it)."""
    from owl.batch import read_records, to_sample
    from owl.conversation import SampleError

    d = tmp_path_factory.mktemp("h")
    clean = [x.translate({c: " " for c in (10, 11, 12, 13, 28, 29, 30, 133, 0x2028, 0x2029)}) for x in lines]
    clean = [x for x in clean if x.strip()] or ["{}"]
    if clean[0].lstrip("\ufeff \t").startswith("["):
        clean.insert(0, "{}")  # a leading "[" would make the file one JSON list
    (d / "in.jsonl").write_text("\n".join(clean) + "\n", encoding="utf-8", errors="surrogatepass")
    prompts = list(read_records(d / "in.jsonl"))
    assert len(prompts) == len(clean)
    for p in prompts:
        if p.error:
            assert p.error_code in ("malformed_json", "duplicate_id")
            continue
        try:
            sample, _ = to_sample(p.record, str(d))
        except SampleError as e:
            assert e.reason and str(e)
            continue
        assert sample.messages[-1].role == "user"
