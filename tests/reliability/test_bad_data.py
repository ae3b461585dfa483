"""Bad training records, one table row each: every row is planted between two good records of the same file, and
reading the file must give the two good samples plus exactly one counted skip with the row's reason, pointing at
the bad line. One bad line in a crawl of millions costs one count, never the run. Files that cannot be read at all
are one clear error instead, and over-long samples are truncated or skipped by the processor as documented.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from owl.config import preset
from owl.conversation import Message, Sample, SampleError
from owl.data import Skipped, SourceSpec, iter_source
from owl.errors import DataError, DataFileNotFound
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from tests.helpers import random_image

GOOD = {
    "captions": {"image": "a.png", "caption": "a red square"},
    "mplug": {"image": ["a.png"], "text": "Human: <image>\nHuman: What is it?\nAI: A square."},
    "llava": {"id": "g", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                             {"from": "gpt", "value": "A square."}]},
    "alpaca": {"instruction": "Say hi.", "input": "", "output": "Hi."},
    "sharegpt": {"id": "g", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
}  # fmt: skip
LIST_FORMATS = ("llava", "alpaca", "sharegpt")  # written as one JSON list, the bad record in the middle


def _llava(*turns: tuple[str, object], image: object = "a.png") -> dict:
    record: dict = {"id": "b", "conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        record["image"] = image
    return record


HI, YO = ("human", "<image>\nHi"), ("gpt", "Yo.")

# (id, format, the bad record: a dict/list/scalar dumped as JSON, or a str written as the raw line, reason)
CASES: list[tuple[str, str, object, str]] = [
    ("data-json-truncated", "captions", '{"image": "a.png", "capt', "malformed_json"),
    ("data-json-trailing-comma", "captions", '{"image": "a.png", "caption": "x",}', "malformed_json"),
    ("data-json-single-quotes", "captions", "{'image': 'a.png', 'caption': 'x'}", "malformed_json"),
    ("data-json-two-records-on-one-line", "captions", '{"image": "a.png", "caption": "x"} {"image": "a.png"}', "malformed_json"),
    ("data-json-unquoted-key", "captions", '{image: "a.png", caption: "x"}', "malformed_json"),
    ("data-json-control-bytes", "captions", "\x00\x01\x02garbage\x7f", "malformed_json"),
    ("data-json-python-repr", "captions", "Sample(image='a.png')", "malformed_json"),
    ("data-json-nan-caption", "captions", '{"image": "a.png", "caption": NaN}', "bad_type"),
    ("data-record-is-list", "captions", [1, 2], "bad_type"),
    ("data-record-is-string", "captions", "a caption with no image", "malformed_json"),
    ("data-record-is-json-string", "captions", '"a caption"', "bad_type"),
    ("data-record-is-number", "captions", "42", "bad_type"),
    ("data-record-is-null", "captions", "null", "bad_type"),
    ("data-captions-no-image-field", "captions", {"caption": "x"}, "missing_field"),
    ("data-captions-no-caption-field", "captions", {"image": "a.png"}, "missing_field"),
    ("data-captions-renamed-fields", "captions", {"url": "a.png", "text": "x"}, "missing_field"),
    ("data-captions-caption-number", "captions", {"image": "a.png", "caption": 5}, "bad_type"),
    ("data-captions-caption-list", "captions", {"image": "a.png", "caption": ["a", "b"]}, "bad_type"),
    ("data-captions-caption-null", "captions", {"image": "a.png", "caption": None}, "missing_field"),
    ("data-captions-caption-object", "captions", {"image": "a.png", "caption": {"en": "x"}}, "bad_type"),
    ("data-captions-image-number", "captions", {"image": 7, "caption": "x"}, "bad_type"),
    ("data-captions-image-empty-string", "captions", {"image": "", "caption": "x"}, "bad_type"),
    ("data-captions-image-list-of-numbers", "captions", {"image": [1], "caption": "x"}, "bad_type"),
    ("data-captions-two-images", "captions", {"image": ["a.png", "a.png"], "caption": "x"}, "image_count_mismatch"),
    ("data-captions-no-images", "captions", {"image": [], "caption": "x"}, "image_count_mismatch"),
    ("data-captions-empty-caption", "captions", {"image": "a.png", "caption": ""}, "empty"),
    ("data-captions-blank-caption", "captions", {"image": "a.png", "caption": " \n\t "}, "empty"),
    ("data-image-file-missing", "captions", {"image": "nope.png", "caption": "x"}, "missing_image"),
    ("data-image-is-a-directory", "captions", {"image": "sub", "caption": "x"}, "missing_image"),
    ("data-image-escapes-with-dotdot", "captions", {"image": "../outside.png", "caption": "x"}, "image_outside_root"),
    ("data-image-escapes-deep-dotdot", "captions", {"image": "sub/../../outside.png", "caption": "x"}, "image_outside_root"),
    ("data-image-absolute-outside", "captions", {"image": "/etc/hostname", "caption": "x"}, "image_outside_root"),
    ("data-image-symlink-out-of-root", "captions", {"image": "link-out.png", "caption": "x"}, "image_outside_root"),
    ("data-image-symlinked-folder-out", "captions", {"image": "dir-out/outside.png", "caption": "x"}, "image_outside_root"),
    ("data-image-home-dir", "captions", {"image": "~/.ssh/id_rsa", "caption": "x"}, "image_outside_root"),
    ("data-image-file-url", "captions", {"image": "file:///etc/passwd", "caption": "x"}, "missing_image"),
    ("data-mplug-extra-placeholder", "mplug", {"image": ["a.png"], "text": "Human: <image>\nHuman: <image>\nAI: x"}, "image_count_mismatch"),
    ("data-mplug-missing-placeholder", "mplug", {"image": ["a.png"], "text": "Human: hi\nAI: x"}, "image_count_mismatch"),
    ("data-mplug-placeholder-no-image", "mplug", {"text": "Human: <image>\nHuman: hi\nAI: x"}, "image_count_mismatch"),
    ("data-mplug-no-ai-turn", "mplug", {"text": "Human: hi"}, "no_target"),
    ("data-mplug-empty-ai-turn", "mplug", {"text": "Human: hi\nAI: "}, "empty"),
    ("data-mplug-empty-text", "mplug", {"text": ""}, "empty"),
    ("data-mplug-no-text", "mplug", {"image": ["a.png"]}, "missing_field"),
    ("data-mplug-text-number", "mplug", {"text": 3.5}, "bad_type"),
    ("data-mplug-image-dict", "mplug", {"image": {"path": "a.png"}, "text": "Human: <image>\nAI: x"}, "bad_type"),
    ("data-llava-no-conversations", "llava", {"id": "b", "image": "a.png"}, "missing_field"),
    ("data-llava-conversations-string", "llava", {"id": "b", "conversations": "Hi / Yo"}, "bad_type"),
    ("data-llava-empty-conversations", "llava", _llava(image=None), "empty"),
    ("data-llava-turn-not-object", "llava", {"id": "b", "conversations": ["Hi", "Yo"]}, "bad_type"),
    ("data-llava-turn-without-value", "llava", {"id": "b", "conversations": [{"from": "human"}]}, "missing_field"),
    ("data-llava-value-number", "llava", _llava(("human", 1), ("gpt", 2), image=None), "bad_type"),
    ("data-llava-unknown-speaker", "llava", _llava(HI, ("robot", "beep")), "unknown_role"),
    ("data-llava-late-system-turn", "llava", _llava(HI, YO, ("system", "be terse")), "misplaced_system"),
    ("data-llava-only-human", "llava", _llava(HI), "no_target"),
    ("data-llava-only-gpt", "llava", _llava(("gpt", "Yo."), image=None), "empty"),
    ("data-llava-empty-answer", "llava", _llava(HI, ("gpt", "  ")), "empty"),
    ("data-llava-placeholder-no-image", "llava", _llava(HI, YO, image=None), "image_count_mismatch"),
    ("data-llava-two-placeholders-one-image", "llava", _llava(("human", "<image><image>Hi"), YO), "image_count_mismatch"),
    ("data-llava-image-escapes-root", "llava", _llava(HI, YO, image="../outside.png"), "image_outside_root"),
    ("data-alpaca-no-output", "alpaca", {"instruction": "Say hi.", "input": ""}, "missing_field"),
    ("data-alpaca-empty-output", "alpaca", {"instruction": "Say hi.", "input": "", "output": ""}, "empty"),
    ("data-alpaca-nothing-asked", "alpaca", {"instruction": "", "input": "", "output": "Hi."}, "empty"),
    ("data-alpaca-output-list", "alpaca", {"instruction": "Say hi.", "input": "", "output": ["Hi."]}, "bad_type"),
    ("data-alpaca-record-is-string", "alpaca", "Say hi. -> Hi.", "bad_type"),
    ("data-sharegpt-conversations-null", "sharegpt", {"id": "b", "conversations": None}, "missing_field"),
    ("data-sharegpt-unknown-speaker", "sharegpt", {"id": "b", "conversations": [{"from": "narrator", "value": "x"}]}, "unknown_role"),
    ("data-sharegpt-bot-greeting-only", "sharegpt", {"id": "b", "conversations": [{"from": "gpt", "value": "Hello!"}]}, "empty"),
]  # fmt: skip
OK_CASES: list[tuple[str, str, object]] = [
    ("data-extra-fields-ignored", "captions", {"image": "a.png", "caption": "x", "license": "cc-by", "score": 0.3}),
    ("data-unicode-caption", "captions", {"image": "a.png", "caption": "un carré rouge 🟥 — 赤い四角"}),
    ("data-huge-caption-line", "captions", {"image": "a.png", "caption": "word " * 200_000}),
    ("data-image-symlink-inside-root", "captions", {"image": "link-in.png", "caption": "x"}),
    ("data-image-dotdot-staying-inside", "captions", {"image": "sub/../a.png", "caption": "x"}),
    ("data-llava-merged-consecutive-turns", "llava", _llava(HI, ("human", "and?"), YO)),
    ("data-sharegpt-greeting-then-question", "sharegpt", {"id": "b", "conversations": [{"from": "gpt", "value": "Hi!"}, {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}),
]  # fmt: skip


def _world(tmp_path: Path) -> Path:
    """data/ (the image root: a.png, sub/, link-in.png, and links out) beside outside.png, which it must not reach."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    random_image(0).save(data / "a.png")
    random_image(1).save(tmp_path / "outside.png")
    (data / "link-in.png").symlink_to(data / "a.png")
    (data / "link-out.png").symlink_to(tmp_path / "outside.png")
    (data / "dir-out").symlink_to(tmp_path)
    return data


def _line(record: object) -> str:
    return record if isinstance(record, str) else json.dumps(record)


def _read(tmp_path: Path, fmt: str, bad: object) -> tuple[list[Sample], list[Skipped]]:
    data = _world(tmp_path)
    if fmt in LIST_FORMATS:
        text = "[" + ",\n".join([json.dumps(GOOD[fmt]), _line(bad) if not isinstance(bad, str) else json.dumps(bad),
                                 json.dumps(GOOD[fmt])]) + "]"  # fmt: skip
    else:
        text = "\n".join([json.dumps(GOOD[fmt]), _line(bad), json.dumps(GOOD[fmt])]) + "\n"
    path = data / ("d.json" if fmt in LIST_FORMATS else "d.jsonl")
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    items = list(iter_source(SourceSpec("s", fmt, str(path))))
    return [i for i in items if isinstance(i, Sample)], [i for i in items if isinstance(i, Skipped)]


@pytest.mark.parametrize(("fmt", "bad", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_record_is_one_counted_skip_and_its_neighbours_survive(tmp_path: Path, fmt, bad, reason: str) -> None:
    samples, skipped = _read(tmp_path, fmt, bad)
    assert len(samples) == 2, skipped
    assert [s.reason for s in skipped] == [reason], skipped
    where = skipped[0].where
    assert where.endswith(":2") or where.endswith("[1]"), where  # the bad record's line or list index
    assert skipped[0].detail and "\n" not in skipped[0].detail
    if reason == "image_outside_root":
        assert "outside the image root" in skipped[0].detail and "set the image root" in skipped[0].detail


@pytest.mark.parametrize(("fmt", "record"), [c[1:] for c in OK_CASES], ids=[c[0] for c in OK_CASES])
def test_unusual_but_valid_records_are_read(tmp_path: Path, fmt, record) -> None:
    samples, skipped = _read(tmp_path, fmt, record)
    assert len(samples) == 3 and skipped == []


def test_image_root_slash_allows_images_anywhere(tmp_path: Path) -> None:
    """data-image-root-slash: the documented way to use images outside the data folder."""
    data = _world(tmp_path)
    (data / "d.jsonl").write_text(json.dumps({"image": str(tmp_path / "outside.png"), "caption": "x"}) + "\n")
    (sample,) = iter_source(SourceSpec("s", "captions", str(data / "d.jsonl"), image_root="/"))
    assert isinstance(sample, Sample) and sample.images == [str(tmp_path / "outside.png")]


# ----------------------------------------------------------------------------- files that cannot be read at all

FILE_CASES = [
    ("data-file-missing", "captions", lambda d: d / "none.jsonl", DataFileNotFound, r"no file matches path .*none.jsonl"),
    ("data-file-is-directory", "captions", lambda d: d, DataFileNotFound, r"is a directory: name the files"),
    ("data-file-glob-matches-nothing", "captions", lambda d: d / "*.parquet", DataFileNotFound, r"no file matches"),
    ("data-file-list-format-single-object", "llava", lambda d: _text(d / "x.json", json.dumps(GOOD["llava"], indent=1)), DataError, r"x.json"),
    ("data-file-list-format-number", "alpaca", lambda d: _text(d / "x.json", "42"), DataError, r"is not a JSON list \(it starts with '4'\)"),
    ("data-file-list-truncated", "llava", lambda d: _text(d / "x.json", "[" + json.dumps(GOOD["llava"]) + ", {"), DataError, r"x.json"),
]  # fmt: skip


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("fmt", "make", "kind", "pattern"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_an_unreadable_source_is_one_clear_error(tmp_path: Path, fmt, make, kind, pattern: str) -> None:
    path = make(_world(tmp_path))
    with pytest.raises(kind) as info:
        list(iter_source(SourceSpec("s", fmt, str(path))))
    assert re.search(pattern, str(info.value)), str(info.value)


SHAPE_CASES = [  # whole-file quirks that must read as the same three good records
    ("data-file-utf8-bom", lambda lines: "\ufeff" + "\n".join(lines) + "\n"),
    ("data-file-crlf-line-ends", lambda lines: "\r\n".join(lines) + "\r\n"),
    ("data-file-blank-lines", lambda lines: "\n\n" + "\n\n  \n".join(lines) + "\n\n"),
    ("data-file-no-final-newline", lambda lines: "\n".join(lines)),
    ("data-file-json-list-of-captions", lambda lines: "[" + ",".join(lines) + "]"),
]


@pytest.mark.parametrize("shape", [c[1] for c in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES])
def test_file_quirks_read_the_same_records(tmp_path: Path, shape) -> None:
    data = _world(tmp_path)
    (data / "d.jsonl").write_text(shape([json.dumps(GOOD["captions"])] * 3), encoding="utf-8")
    items = list(iter_source(SourceSpec("s", "captions", str(data / "d.jsonl"))))
    assert len(items) == 3 and all(isinstance(i, Sample) for i in items), items


def test_a_lost_shard_among_several_is_counted_not_fatal(tmp_path: Path) -> None:
    """data-file-one-of-three-missing: a brace pattern naming a file that is gone."""
    data = _world(tmp_path)
    for i in (0, 2):
        (data / f"p{i}.jsonl").write_text(json.dumps(GOOD["captions"]) + "\n")
    items = list(iter_source(SourceSpec("s", "captions", str(data / "p{0..2}.jsonl"))))
    assert [i.reason for i in items if isinstance(i, Skipped)] == ["missing_file"]
    assert sum(isinstance(i, Sample) for i in items) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_image_is_a_counted_bad_image(tmp_path: Path) -> None:
    """data-image-unreadable: chmod 000."""
    data = _world(tmp_path)
    (data / "a.png").chmod(0)
    proc = OwlProcessor.from_config(preset("tiny"), byte_tokenizer())
    sample = Sample([Message("user", "<image>"), Message("assistant", "x")], images=[str(data / "a.png")])
    with pytest.raises(SampleError) as info:
        proc.encode(sample)
    assert info.value.reason == "bad_image"


# ----------------------------------------------------------------------------- over-long samples (the processor)


def _long(user_words: int, answer_words: int, images: int = 0) -> Sample:
    user = "<image>" * images + " ".join(["word"] * user_words)
    return Sample([Message("user", user), Message("assistant", " ".join(["yes"] * answer_words))],
                  images=[random_image(i) for i in range(images)])  # fmt: skip


LENGTH_CASES = [
    ("data-long-answer-truncated", _long(5, 500), None),
    ("data-long-prompt-no-answer-left", _long(500, 5), "no_target"),
    ("data-long-with-image-not-cut-mid-image", _long(20, 200, images=1), None),
]


@pytest.mark.parametrize(("sample", "reason"), [c[1:] for c in LENGTH_CASES], ids=[c[0] for c in LENGTH_CASES])
def test_over_long_samples_are_truncated_or_skipped(sample: Sample, reason: str | None) -> None:
    proc = OwlProcessor.from_config(preset("tiny"), byte_tokenizer(), max_length=400)
    if reason is not None:
        with pytest.raises(SampleError) as info:
            proc.encode(sample)
        assert info.value.reason == reason and "processor.max_length=400" in str(info.value)
        return
    enc = proc.encode(sample)
    assert len(enc.input_ids) <= 400 and any(x != -100 for x in enc.labels)
    assert enc.pixel_values is None or enc.pixel_values.shape[0] == len(sample.images)


def test_a_prompt_over_the_limit_is_refused_for_generation() -> None:
    """data-long-generation-prompt: inference never truncates a prompt silently."""
    proc = OwlProcessor.from_config(preset("tiny"), byte_tokenizer(), max_length=64)
    with pytest.raises(SampleError) as info:
        proc.encode(Sample([Message("user", "word " * 100)]), for_generation=True)
    assert info.value.reason == "prompt_too_long"


@settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.one_of(st.text(max_size=80), st.builds(json.dumps, st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["image", "caption", "x"]), kids, max_size=3),
    max_leaves=6))), min_size=1, max_size=8))  # fmt: skip
def test_any_lines_become_samples_or_counted_skips(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    d = tmp_path_factory.mktemp("h")
    random_image(0).save(d / "a.png")
    lines = [line.replace("\n", " ").replace("\r", " ").replace("\x0b", " ").replace("\x0c", " ")
             .replace("\x1c", " ").replace("\x1d", " ").replace("\x1e", " ").replace("\x85", " ")
             .replace("\u2028", " ").replace("\u2029", " ") for line in lines]  # fmt: skip
    (d / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    as_list = next((x for x in lines if x.strip()), "").lstrip("\ufeff \t").startswith("[")
    try:
        items = list(iter_source(SourceSpec("s", "captions", str(d / "d.jsonl"))))
    except DataError as e:  # a file starting with "[" is read as one JSON list, and this one is not valid JSON
        assert as_list, e
        return
    assert all(isinstance(i, (Sample, Skipped)) for i in items)
    if as_list:  # one JSON list: its elements are the records, whatever the lines
        return
    assert len(items) == sum(1 for line in lines if line.strip() and line.strip() != "\ufeff")
    assert all(isinstance(i, (Sample, Skipped)) for i in items)
