"""Fuzz table of bad training-data records, each row with its exact outcome.

Why: a crawl of millions of records always holds some broken lines, wrong types, miscounted ``<image>`` markers and
image paths that point anywhere on the disk. Each such record must cost one counted ``Skipped`` with a specific
reason (what ``SkipStats`` reports), never the run, and never a read outside the image root; the good records
around it must still arrive. Every bad row here is planted as line 2 between two good records of the same JSON
lines file, and the test asserts the reason, the message, the line it points at, and that both neighbours survive.
Odd-but-valid records and file quirks give samples; files that cannot be read at all give one ``DataError``;
over-long samples are truncated (or skipped as ``no_target``) by the processor.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import owl.data.source
from owl.config import preset
from owl.conversation import Message, Sample, SampleError
from owl.data import Skipped, SourceSpec, count_records, iter_source
from owl.errors import DataError, DataFileNotFound
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer

GOOD: dict[str, dict] = {
    "captions": {"image": "a.png", "caption": "a red square"},
    "mplug": {"image": ["a.png"], "text": "Human: <image>\nHuman: What is it?\nAI: A square."},
    "llava": {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}]},
    "alpaca": {"instruction": "Say hi.", "input": "", "output": "Hi."},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
}  # fmt: skip
REASONS = {"malformed_json", "bad_type", "bad_text", "missing_field", "image_count_mismatch", "missing_image", "empty",
           "no_target", "image_outside_root", "unknown_role", "misplaced_system", "image_in_non_user_turn"}  # fmt: skip


def conv(*turns: tuple[str, object], image: object = None) -> str:
    record: dict = {"conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        record["image"] = image
    return json.dumps(record)


def cap(image: object = "a.png", caption: object = "a cat") -> str:
    return json.dumps({"image": image, "caption": caption})


def mplug(text: object, image: object = None) -> str:
    return json.dumps({"text": text} | ({} if image is None else {"image": image}))


def world(tmp_path: Path) -> Path:
    """``tmp_path/root`` (the data folder and image root, holding ``a.png``) beside files that lie outside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 40, 40)).save(root / "a.png")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(b"not to be read")
    (root / "leak.png").symlink_to(tmp_path / "outside" / "secret.png")
    (root / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "inner.png").symlink_to(root / "a.png")
    return root


def read(root: Path, fmt: str, lines: list[str | bytes], name: str = "d.jsonl") -> tuple[list[Sample], list[Skipped]]:
    path = root / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    items = list(iter_source(SourceSpec("src", fmt, str(path))))
    assert all(isinstance(i, (Sample, Skipped)) for i in items)
    assert count_records(SourceSpec("src", fmt, str(path))) == len(items)
    return [i for i in items if isinstance(i, Sample)], [i for i in items if isinstance(i, Skipped)]


# ---------------------------------------------------------------------------------------------- bad records
# (id, format, the bad line, reason, regex its detail must match)
BAD: list[tuple[str, str, str | bytes, str, str]] = [
    ("data-json-two-records-one-line", "captions", cap() + " " + cap(), "malformed_json", r"Extra data"),
    ("data-json-binary-garbage", "captions", b"\x00\xff\xfe\x80\x81garbage", "malformed_json", r"not a JSON line: .*codec can't decode"),
    ("data-json-invalid-utf8-in-string", "captions", b'{"image": "a.png", "caption": "\xff"}', "malformed_json", r"'utf-8' codec can't decode byte 0xff"),
    ("data-json-raw-control-char", "captions", b'{"image": "a.png", "caption": "a\x01b"}', "malformed_json", r"Invalid control character"),
    ("data-json-nul-byte", "captions", b'{"image": \x00}', "malformed_json", r"Expecting value"),
    ("data-json-nesting-100000-deep", "captions", '{"a":' * 100_000, "malformed_json", r"maximum recursion depth exceeded"),
    ("data-json-bare-nan", "captions", "NaN", "bad_type", r"a record must be a JSON object, got a number"),
    ("data-json-infinity-caption", "captions", '{"image": "a.png", "caption": -Infinity}', "bad_type", r"a number \('-inf'\)"),
    ("data-json-lone-surrogate", "captions", '{"image": "a.png", "caption": "bad \\ud800 escape"}', "bad_text", r"assistant text holds a lone surrogate '\\ud800' at character 4"),
    ("data-json-duplicate-key-last-wins", "captions", '{"image": "a.png", "caption": "x", "caption": 3}', "bad_type", r"field 'caption' has the wrong type: a number \('3'\)"),
    ("data-record-list", "captions", "[1, 2]", "bad_type", r"a record must be a JSON object, got a list"),
    ("data-record-string", "captions", '"a.png"', "bad_type", r"got a string"),
    ("data-record-number", "captions", "42", "bad_type", r"got a number"),
    ("data-record-null", "captions", "null", "bad_type", r"got null"),
    ("data-record-boolean", "captions", "true", "bad_type", r"got a boolean"),
    ("data-empty-object", "captions", "{}", "missing_field", r"no 'image' field \(keys: none\)"),
    ("data-missing-caption", "captions", '{"image": "a.png"}', "missing_field", r"no 'caption' field \(keys: image\)"),
    ("data-missing-image", "captions", '{"caption": "x"}', "missing_field", r"no 'image' field \(keys: caption\)"),
    ("data-caption-int", "captions", cap(caption=7), "bad_type", r"field 'caption' has the wrong type: a number \('7'\)"),
    ("data-caption-list", "captions", cap(caption=["a", "b"]), "bad_type", r"field 'caption' has the wrong type: a list"),
    ("data-caption-object", "captions", cap(caption={"en": "x"}), "bad_type", r"field 'caption' has the wrong type: an object"),
    ("data-caption-boolean", "captions", cap(caption=True), "bad_type", r"a boolean \('True'\)"),
    ("data-caption-null", "captions", cap(caption=None), "missing_field", r"no 'caption' field \(keys: image, caption\)"),
    ("data-caption-blank", "captions", cap(caption=" \n\t"), "empty", r"an assistant turn is empty"),
    ("data-caption-has-image-marker", "captions", cap(caption="a <image> here"), "image_in_non_user_turn", r"<image> may only appear in user turns, found in an assistant turn"),
    ("data-image-int", "captions", cap(image=3), "bad_type", r"field 'image' has the wrong type: a number"),
    ("data-image-empty-string", "captions", cap(image=""), "bad_type", r"field 'image' must hold image paths, found a string ''"),
    ("data-image-list-of-int", "captions", cap(image=[1]), "bad_type", r"must hold image paths, found a number 1"),
    ("data-image-none-for-caption", "captions", cap(image=[]), "image_count_mismatch", r"a caption record takes exactly one image, got 0"),
    ("data-image-two-for-caption", "captions", cap(image=["a.png", "a.png"]), "image_count_mismatch", r"exactly one image, got 2"),
    ("data-image-missing-file", "captions", cap(image="gone.png"), "missing_image", r"image file not found: .*root/gone\.png"),
    ("data-image-is-the-root", "captions", cap(image="."), "missing_image", r"image file not found: .*root$"),
    ("data-mplug-two-markers-one-image", "mplug", mplug("Human: <image><image>\nAI: x", ["a.png"]), "image_count_mismatch", r"2 <image> placeholders but 1 images given"),
    ("data-mplug-one-image-no-marker", "mplug", mplug("Human: hi\nAI: x", ["a.png"]), "image_count_mismatch", r"0 <image> placeholders but 1 images given"),
    ("data-mplug-marker-no-image", "mplug", mplug("Human: <image>\nAI: x"), "image_count_mismatch", r"1 <image> placeholders but 0 images given"),
    ("data-mplug-no-assistant-turn", "mplug", mplug("Human: hi\nHuman: anyone?"), "no_target", r"no assistant turn to learn from"),
    ("data-mplug-no-role-prefixes", "mplug", mplug("just some words"), "no_target", r"no assistant turn"),
    ("data-mplug-empty-answer", "mplug", mplug("Human: hi\nAI: "), "empty", r"an assistant turn is empty"),
    ("data-mplug-image-in-answer", "mplug", mplug("Human: hi\nAI: <image>", ["a.png"]), "image_in_non_user_turn", r"found in an assistant turn"),
    ("data-mplug-text-list", "mplug", mplug(["Human: hi", "AI: x"]), "bad_type", r"field 'text' has the wrong type: a list"),
    ("data-llava-conversations-object", "llava", json.dumps({"conversations": {"from": "human"}}), "bad_type", r"field 'conversations' has the wrong type: an object"),
    ("data-llava-turn-is-string", "llava", json.dumps({"conversations": ["hi"]}), "bad_type", r"turn 0 must be an object, got a string"),
    ("data-llava-turn-missing-from", "llava", json.dumps({"conversations": [{"value": "x"}]}), "missing_field", r"turn 0 has no 'from' field"),
    ("data-llava-turn-missing-value", "llava", json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}), "missing_field", r"turn 1 has no 'value' field"),
    ("data-llava-value-int", "llava", conv(("human", "q"), ("gpt", 5)), "bad_type", r"turn 1: 'from' and 'value' must be strings"),
    ("data-llava-system-after-start", "llava", conv(("human", "q"), ("system", "s"), ("gpt", "a")), "misplaced_system", r"turn 1: a system turn after the conversation started"),
    ("data-llava-only-assistant", "llava", conv(("gpt", "a")), "empty", r"record has no conversation turns"),  # dropped: nothing to answer
    ("data-llava-roles-reversed", "llava", conv(("gpt", "a"), ("human", "q")), "no_target", r"no assistant turn to learn from"),
    ("data-llava-two-markers-one-image", "llava", conv(("human", "<image><image>q"), ("gpt", "a"), image="a.png"), "image_count_mismatch", r"2 <image> placeholders but 1 images given"),
    ("data-llava-one-marker-two-images", "llava", conv(("human", "<image>q"), ("gpt", "a"), image=["a.png", "a.png"]), "image_count_mismatch", r"1 <image> placeholders but 2 images given"),
    ("data-llava-marker-in-answer", "llava", conv(("human", "q"), ("gpt", "<image>")), "image_in_non_user_turn", r"found in an assistant turn"),
    ("data-alpaca-no-instruction-or-input", "alpaca", json.dumps({"instruction": "", "input": " ", "output": "x"}), "empty", r"instruction and input are both empty"),
    ("data-alpaca-missing-output", "alpaca", json.dumps({"instruction": "i"}), "missing_field", r"no 'output' field \(keys: instruction\)"),
    ("data-sharegpt-human-only", "sharegpt", conv(("human", "q")), "no_target", r"no assistant turn"),
]  # fmt: skip

OUTSIDE = r"image '{}' resolves to {}, outside the image root .*root; keep images under the root"

# Paths that leave the image root: refused before anything is opened or even checked for existence.
ESCAPES: list[tuple[str, str, str | bytes, str, str]] = [
    ("data-path-dotdot", "captions", cap(image="../outside/secret.png"), "image_outside_root", OUTSIDE.format(r"\.\./outside/secret\.png", r".*/outside/secret\.png")),
    ("data-path-deep-dotdot", "captions", cap(image="../../../../../../etc/passwd"), "image_outside_root", OUTSIDE.format(r"(\.\./)+etc/passwd", "/etc/passwd")),
    ("data-path-dotdot-after-subdir", "captions", cap(image="sub/../../outside/secret.png"), "image_outside_root", r"resolves to .*/outside/secret\.png, outside"),
    ("data-path-absolute-etc-passwd", "captions", cap(image="/etc/passwd"), "image_outside_root", OUTSIDE.format("/etc/passwd", "/etc/passwd")),
    ("data-path-home-tilde", "captions", cap(image="~/.ssh/id_rsa"), "image_outside_root", r"image '~/\.ssh/id_rsa' resolves to .*\.ssh/id_rsa, outside"),
    ("data-path-symlink-file-outside", "captions", cap(image="leak.png"), "image_outside_root", OUTSIDE.format(r"leak\.png", r".*/outside/secret\.png")),
    ("data-path-symlink-dir-outside", "captions", cap(image="linkdir/secret.png"), "image_outside_root", OUTSIDE.format(r"linkdir/secret\.png", r".*/outside/secret\.png")),
    ("data-path-nul-byte", "captions", cap(image="a.png\x00../../etc/passwd"), "bad_type", r"image path 'a\.png\\x00\.\./\.\./etc/passwd' contains a NUL byte"),
    ("data-path-mplug-second-image-escapes", "mplug", mplug("Human: <image><image>\nAI: x", ["a.png", "/etc/shadow"]), "image_outside_root", OUTSIDE.format("/etc/shadow", "/etc/shadow")),
    ("data-path-llava-dotdot", "llava", conv(("human", "<image>q"), ("gpt", "a"), image="../outside/secret.png"), "image_outside_root", r"resolves to .*/outside/secret\.png"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "line", "reason", "pattern"), [c[1:] for c in BAD + ESCAPES], ids=[c[0] for c in BAD + ESCAPES]
)
def test_a_bad_record_is_one_counted_skip_and_its_neighbours_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, line: str | bytes, reason: str, pattern: str
) -> None:
    root = world(tmp_path)
    checked: list[str] = []  # every image path the reader checks on disk: none may lie outside the root
    real_isfile = os.path.isfile
    monkeypatch.setattr(owl.data.source.os.path, "isfile", lambda p: checked.append(str(p)) or real_isfile(p))
    good = json.dumps(GOOD[fmt])
    samples, skipped = read(root, fmt, [good, line, good])
    assert [s.id for s in samples] == ["d.jsonl:1", "d.jsonl:3"]
    assert [(s.reason, s.where, s.source) for s in skipped] == [(reason, "d.jsonl:2", "src")], skipped
    assert re.search(pattern, skipped[0].detail), skipped[0].detail
    assert reason in REASONS
    inside = str(root.resolve()) + os.sep
    assert [p for p in checked if not (os.path.realpath(p) + os.sep).startswith(inside)] == []


# ---------------------------------------------------------------------------------------------- usable oddities
HUGE = "word " * 400_000  # a 2 MB line


# (id, format, line, the (role, content) pairs it must become, its images relative to the root, its id)
ODD: list[tuple[str, str, str | bytes, list[tuple[str, str]], list[str], str]] = [
    ("data-ok-extra-fields-ignored", "captions", json.dumps({"image": "a.png", "caption": "x", "url": "http://x", "width": 5, "id": "k9"}), [("user", "<image>"), ("assistant", "x")], ["a.png"], "k9"),
    ("data-ok-integer-id", "captions", json.dumps({"image": "a.png", "caption": "x", "id": 17}), [("user", "<image>"), ("assistant", "x")], ["a.png"], "17"),
    ("data-ok-boolean-id-ignored", "captions", json.dumps({"image": "a.png", "caption": "x", "id": True}), [("user", "<image>"), ("assistant", "x")], ["a.png"], "d.jsonl:2"),
    ("data-ok-caption-stripped", "captions", cap(caption="  two dogs\n"), [("user", "<image>"), ("assistant", "two dogs")], ["a.png"], "d.jsonl:2"),
    ("data-ok-unicode", "captions", cap(caption="猫 🐈 قطة"), [("user", "<image>"), ("assistant", "猫 🐈 قطة")], ["a.png"], "d.jsonl:2"),
    ("data-ok-escaped-surrogate-pair", "captions", '{"image": "a.png", "caption": "\\ud83d\\ude00"}', [("user", "<image>"), ("assistant", "😀")], ["a.png"], "d.jsonl:2"),
    ("data-ok-bom-mid-file", "captions", b"\xef\xbb\xbf" + cap().encode(), [("user", "<image>"), ("assistant", "a cat")], ["a.png"], "d.jsonl:2"),
    ("data-ok-crlf-line", "captions", cap() + "\r", [("user", "<image>"), ("assistant", "a cat")], ["a.png"], "d.jsonl:2"),
    ("data-ok-huge-line", "captions", cap(caption=HUGE), [("user", "<image>"), ("assistant", HUGE.strip())], ["a.png"], "d.jsonl:2"),
    ("data-ok-path-dotdot-back-inside", "captions", cap(image="sub/../a.png"), [("user", "<image>"), ("assistant", "a cat")], ["a.png"], "d.jsonl:2"),
    ("data-ok-symlink-inside-root", "captions", cap(image="inner.png"), [("user", "<image>"), ("assistant", "a cat")], ["inner.png"], "d.jsonl:2"),
    ("data-ok-llava-greeting-dropped", "llava", conv(("gpt", "Hello!"), ("human", "q"), ("gpt", "a")), [("user", "q"), ("assistant", "a")], [], "d.jsonl:2"),
    ("data-ok-llava-same-speaker-merged", "llava", conv(("human", "q1"), ("human", "q2"), ("gpt", "a")), [("user", "q1\n\nq2"), ("assistant", "a")], [], "d.jsonl:2"),
    ("data-ok-llava-image-without-marker", "llava", conv(("human", "q"), ("gpt", "a"), image="a.png"), [("user", "<image>\nq"), ("assistant", "a")], ["a.png"], "d.jsonl:2"),
    ("data-ok-llava-trailing-question-kept", "llava", conv(("human", "q"), ("gpt", "a"), ("human", "more?")), [("user", "q"), ("assistant", "a"), ("user", "more?")], [], "d.jsonl:2"),
    # The reference's text format is rendered as written: an answer before any question stays (it trains as is).
    ("data-ok-mplug-roles-out-of-order-kept", "mplug", mplug("AI: hi\nHuman: yo"), [("assistant", "hi"), ("user", "yo")], [], "d.jsonl:2"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "line", "messages", "images", "sid"), [c[1:] for c in ODD], ids=[c[0] for c in ODD])
def test_odd_but_valid_records_are_read(
    tmp_path: Path, fmt: str, line: str | bytes, messages: list[tuple[str, str]], images: list[str], sid: str
) -> None:
    root = world(tmp_path)
    samples, skipped = read(root, fmt, [json.dumps(GOOD[fmt]), line, json.dumps(GOOD[fmt])])
    assert skipped == [] and len(samples) == 3
    odd = samples[1]
    assert [(m.role, m.content) for m in odd.messages] == messages
    assert odd.images == [str(root / i) for i in images] and odd.id == sid


# ---------------------------------------------------------------------------------------------- file quirks
GOOD_LINE = cap(caption="x")
# (id, file bytes, number of samples, the ``where`` of each sample)
QUIRKS: list[tuple[str, bytes, list[str]]] = [
    ("data-file-blank-lines-not-counted", f"{GOOD_LINE}\n\n\n{GOOD_LINE}\n".encode(), ["d.jsonl:1", "d.jsonl:4"]),
    ("data-file-whitespace-line-not-counted", f"{GOOD_LINE}\n \t \r\n{GOOD_LINE}\n".encode(), ["d.jsonl:1", "d.jsonl:3"]),
    ("data-file-bom-first-line", f"\ufeff{GOOD_LINE}\n{GOOD_LINE}\n".encode(), ["d.jsonl:1", "d.jsonl:2"]),
    ("data-file-bom-only-line", f"\ufeff\n{GOOD_LINE}\n".encode(), ["d.jsonl:2"]),
    ("data-file-crlf", f"{GOOD_LINE}\r\n{GOOD_LINE}\r\n".encode(), ["d.jsonl:1", "d.jsonl:2"]),
    ("data-file-empty", b"", []),
    ("data-file-only-blank-lines", b"\n\n  \n", []),
    ("data-file-json-list", f"[{GOOD_LINE}, {GOOD_LINE}]".encode(), ["d.jsonl[0]", "d.jsonl[1]"]),
]  # fmt: skip


@pytest.mark.parametrize(("data", "wheres"), [c[1:] for c in QUIRKS], ids=[c[0] for c in QUIRKS])
def test_file_quirks_keep_every_record(tmp_path: Path, data: bytes, wheres: list[str]) -> None:
    root = world(tmp_path)
    (root / "d.jsonl").write_bytes(data)
    spec = SourceSpec("src", "captions", str(root / "d.jsonl"))
    items = list(iter_source(spec))
    assert [i.id for i in items if isinstance(i, Sample)] == wheres and len(items) == len(wheres)
    assert count_records(spec) == len(wheres)


# (id, format, file name or None for a path that does not exist, bytes, error class, regex)
UNREADABLE: list[tuple[str, str, str, bytes | None, type[Exception], str]] = [
    ("data-source-no-such-file", "captions", "nope.jsonl", None, DataFileNotFound, r"no file matches path .*nope\.jsonl"),
    ("data-source-is-a-directory", "captions", "sub", None, DataFileNotFound, r"is a directory: name the files"),
    ("data-source-list-not-valid-json", "captions", "l.json", b'[{"image": "a.png",', DataError, r"l\.json is not valid JSON .*write it as JSON lines"),
    ("data-source-list-too-deep", "captions", "l.json", b"[" * 100_000, DataError, r"is not valid JSON \(maximum recursion depth"),
    ("data-source-llava-one-object", "llava", "l.json", b'{\n  "conversations": []\n}\n', DataError, r"holds one JSON object \(keys: conversations\), not a list"),
    ("data-source-llava-bare-number", "llava", "l.json", b"5\n", DataError, r"is not a JSON list \(it starts with '5'\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "name", "data", "error", "pattern"), [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE]
)
def test_a_source_that_cannot_be_read_is_one_clear_error(
    tmp_path: Path, fmt: str, name: str, data: bytes | None, error: type[Exception], pattern: str
) -> None:
    root = world(tmp_path)
    if data is not None:
        (root / name).write_bytes(data)
    with pytest.raises(error, match=pattern):
        list(iter_source(SourceSpec("src", fmt, str(root / name))))


@pytest.mark.parametrize(
    "fmt", ["llava", "sharegpt"], ids=["data-list-bad-elements-llava", "data-list-bad-elements-sharegpt"]
)
def test_a_list_file_skips_its_bad_elements(tmp_path: Path, fmt: str) -> None:
    """In one JSON list, bad elements are skips pointing at their index; the good ones around them are read."""
    root = world(tmp_path)
    (root / "l.json").write_text(json.dumps([GOOD[fmt], 5, {"conversations": "x"}, GOOD[fmt]]))
    items = list(iter_source(SourceSpec("src", fmt, str(root / "l.json"))))
    assert [(i.reason, i.where) for i in items if isinstance(i, Skipped)] == [
        ("bad_type", "l.json[1]"),
        ("bad_type", "l.json[2]"),
    ]
    assert [i.id for i in items if isinstance(i, Sample)] == ["l.json[0]", "l.json[3]"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.parametrize("mode", [0o000, 0o200], ids=["data-source-unreadable-000", "data-source-write-only"])
def test_an_unreadable_data_file_is_an_error_naming_it(tmp_path: Path, mode: int) -> None:
    root = world(tmp_path)
    (root / "d.jsonl").write_text(GOOD_LINE + "\n")
    (root / "d.jsonl").chmod(mode)
    with pytest.raises(PermissionError, match=r"d\.jsonl"):
        list(iter_source(SourceSpec("src", "captions", str(root / "d.jsonl"))))


# ---------------------------------------------------------------------------------------------- webdataset shards
def shard(members: list[tuple[str, bytes]], cut: int | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()[:cut]


PNG = b"\x89PNG fake: shards keep raw bytes, decoding belongs to the processor"
# (id, members of key 001, between good keys 000 and 002; reason, regex)
WDS: list[tuple[str, list[tuple[str, bytes]], str, str]] = [
    ("data-wds-no-caption", [("001.png", PNG)], "missing_field", r"no 001\.txt and no 'caption' field in 001\.json"),
    ("data-wds-no-image", [("001.txt", b"x")], "missing_image", r"no image member \(jpg/jpeg/png/webp\); found txt"),
    ("data-wds-two-images", [("001.png", PNG), ("001.jpg", PNG), ("001.txt", b"x")], "image_count_mismatch", r"2 image members for one key"),
    ("data-wds-caption-not-utf8", [("001.png", PNG), ("001.txt", b"\xff\xfe caption")], "bad_encoding", r"001\.txt is not UTF-8"),
    ("data-wds-json-malformed", [("001.png", PNG), ("001.json", b'{"caption": ')], "malformed_json", r"001\.json is not JSON"),
    ("data-wds-json-not-object", [("001.png", PNG), ("001.json", b"[1]")], "bad_type", r"001\.json must hold an object, got list"),
    ("data-wds-json-caption-int", [("001.png", PNG), ("001.json", b'{"caption": 3}')], "bad_type", r"field 'caption' must be a string, got int"),
    ("data-wds-blank-caption", [("001.png", PNG), ("001.txt", b"  \n")], "empty", r"an assistant turn is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("members", "reason", "pattern"), [c[1:] for c in WDS], ids=[c[0] for c in WDS])
def test_a_bad_shard_member_is_one_counted_skip(
    tmp_path: Path, members: list[tuple[str, bytes]], reason: str, pattern: str
) -> None:
    good = [("000.png", PNG), ("000.txt", b"a cat"), *members, ("002.png", PNG), ("002.txt", b"a dog")]
    (tmp_path / "s.tar").write_bytes(shard(good))
    items = list(iter_source(SourceSpec("src", "webdataset", str(tmp_path / "s.tar"))))
    assert [i.id for i in items if isinstance(i, Sample)] == ["s.tar:000", "s.tar:002"]
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [(s.reason, s.where) for s in skipped] == [(reason, "s.tar:001")] and re.search(pattern, skipped[0].detail)


SHARDS = [
    ("data-wds-truncated-shard", lambda: shard([("000.png", PNG), ("000.txt", b"a"), ("001.png", PNG * 20), ("001.txt", b"b")], cut=3260), ["s.tar:000"], r"shard unreadable at key 001, rest skipped"),
    ("data-wds-not-a-tar", lambda: b"this is not a tar archive at all" * 40, [], r"shard unreadable, rest skipped"),
    ("data-wds-empty-file", lambda: b"", [], r"shard unreadable, rest skipped: empty file"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "kept", "pattern"), [c[1:] for c in SHARDS], ids=[c[0] for c in SHARDS])
def test_a_damaged_shard_keeps_what_came_before(tmp_path: Path, make, kept: list[str], pattern: str) -> None:
    (tmp_path / "s.tar").write_bytes(make())
    items = list(iter_source(SourceSpec("src", "webdataset", str(tmp_path / "s.tar"))))
    assert [i.id for i in items if isinstance(i, Sample)] == kept
    (skip,) = [i for i in items if isinstance(i, Skipped)]
    assert skip.reason == "corrupt_shard" and skip.where == "s.tar" and re.search(pattern, skip.detail), skip.detail


# ---------------------------------------------------------------------------------------------- over-long samples
def _words(user: int, answer: int) -> Sample:
    return Sample([Message("user", " ".join(["word"] * user)), Message("assistant", " ".join(["yes"] * answer))])


LONG = [
    ("data-long-generation-prompt-refused", Sample([Message("user", "word " * 500)]), True, "prompt_too_long"),
]


@pytest.mark.parametrize(("sample", "gen", "reason"), [c[1:] for c in LONG], ids=[c[0] for c in LONG])
def test_over_long_samples_are_truncated_or_skipped(sample: Sample, gen: bool, reason: str | None) -> None:
    proc = OwlProcessor.from_config(preset("tiny"), byte_tokenizer(), max_length=256)
    if reason is None:
        enc = proc.encode(sample)
        assert len(enc.input_ids) == 256 and sum(x != -100 for x in enc.labels) > 0  # cut to the limit, answer kept
        return
    with pytest.raises(SampleError, match=r"processor\.max_length=256") as info:
        proc.encode(sample, for_generation=gen)
    assert info.value.reason == reason


@pytest.mark.parametrize("limit", [256], ids=["data-long-huge-line-end-to-end"])
def test_a_huge_line_is_read_then_truncated(tmp_path: Path, limit: int) -> None:
    """A 2 MB caption line is one sample; the processor cuts it to max_length, the answer's start kept."""
    root = world(tmp_path)
    samples, skipped = read(root, "captions", [cap(caption=HUGE)])
    assert skipped == [] and len(samples[0].messages[1].content) == len(HUGE.strip())
    enc = OwlProcessor.from_config(preset("tiny"), byte_tokenizer(), max_length=limit).encode(samples[0])
    assert len(enc.input_ids) == limit and sum(x != -100 for x in enc.labels) > 0


# ---------------------------------------------------------------------------------------------- properties
SETTINGS = settings(derandomize=True, max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


@SETTINGS
@given(lines=st.lists(st.text(st.characters(blacklist_characters="\n"), max_size=60), max_size=8))
@pytest.mark.parametrize("fmt", ["captions"], ids=["data-prop-any-text-lines"])
def test_any_text_lines_are_each_a_sample_or_a_counted_skip(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, lines: list[str]
) -> None:
    """Between two good lines, any text: one item per non-blank line (bytes ``strip``, as the reader counts)."""
    root = world(tmp_path_factory.mktemp("p"))
    encoded = [line.encode("utf-8", "surrogatepass") for line in lines]
    samples, skipped = read(root, fmt, [GOOD_LINE.encode(), *encoded, GOOD_LINE.encode()])
    assert len(samples) + len(skipped) == 2 + sum(1 for b in encoded if b.strip())
    assert samples[0].id == "d.jsonl:1" and samples[-1].id == f"d.jsonl:{len(lines) + 2}"
    assert {s.reason for s in skipped} <= REASONS


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from(["a.png", "../x.png", "<image>", "", "gpt"]),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(
            st.sampled_from(["image", "caption", "text", "conversations", "from", "value", "id"]), kids, max_size=4
        )
    ),
    max_leaves=8,
)


@SETTINGS
@given(records=st.lists(JSON, min_size=1, max_size=5))
@pytest.mark.parametrize(
    "fmt",
    ["captions", "mplug", "llava"],
    ids=["data-prop-any-json-captions", "data-prop-any-json-mplug", "data-prop-any-json-llava"],
)
def test_any_json_records_are_each_a_sample_or_a_known_skip(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, records: list[object]
) -> None:
    root = world(tmp_path_factory.mktemp("p"))
    good = json.dumps(GOOD[fmt])
    samples, skipped = read(root, fmt, [good, *[json.dumps(r) for r in records], good])
    assert len(samples) + len(skipped) == len(records) + 2
    assert {s.reason for s in skipped} <= REASONS, skipped
    assert all(os.path.realpath(i).startswith(str(root.resolve())) for s in samples for i in s.images)
