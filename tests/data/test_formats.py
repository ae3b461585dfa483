"""Format readers on real-shaped records (field layouts from docs/formats.md), all files made in tmp_path."""

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owl.conversation import Message, Sample
from owl.data import Skipped, SourceSpec, count_records, iter_source, parse_mplug_text

SYSTEM = (
    "The following is a conversation between a curious human and AI assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def write_jsonl(path: Path, records: list) -> Path:
    """One line per record; strings are written as they are (to plant broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\xff\xd8 not decoded by the readers")


def read(spec: SourceSpec) -> tuple[list[Sample], list[Skipped]]:
    items = list(iter_source(spec))
    samples = [x for x in items if isinstance(x, Sample)]
    skipped = [x for x in items if isinstance(x, Skipped)]
    assert len(samples) + len(skipped) == len(items)
    return samples, skipped


def roles(sample: Sample) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in sample.messages]


# --- captions -----------------------------------------------------------------------------------------------------


def test_captions_default_fields(tmp_path):
    touch(tmp_path, "images/000123.jpg", "images/000124.jpg")
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"image": "images/000123.jpg", "caption": "a red bus parked by the road"},
            {"image": ["images/000124.jpg"], "caption": "  two dogs on a beach\n", "id": 124},
        ],
    )
    samples, skipped = read(SourceSpec("cc", "captions", str(path)))
    assert skipped == []
    first, second = samples
    assert roles(first) == [("user", "<image>"), ("assistant", "a red bus parked by the road")]
    assert first.images == [str(tmp_path / "images/000123.jpg")]
    assert first.source == "cc" and first.id == "pairs.jsonl:1"
    assert roles(second)[1] == ("assistant", "two dogs on a beach")
    assert second.id == "124"
    assert count_records(SourceSpec("cc", "captions", str(path))) == 2


def test_captions_renamed_fields_prompt_and_image_root(tmp_path):
    touch(tmp_path / "elsewhere", "000001.jpg")
    path = write_jsonl(tmp_path / "data" / "pairs.jsonl", [{"url": "000001.jpg", "text": "a cat", "key": "k1"}])
    spec = SourceSpec(
        "laion",
        "captions",
        str(path),
        image_root=str(tmp_path / "elsewhere"),
        fields={"image": "url", "caption": "text", "id": "key"},
        caption_prompt="Describe the image briefly.",
    )
    (sample,), _ = read(spec)
    assert roles(sample) == [("user", "<image>\nDescribe the image briefly."), ("assistant", "a cat")]
    assert sample.images == [str(tmp_path / "elsewhere" / "000001.jpg")]
    assert sample.id == "k1"


def test_captions_absolute_image_path_must_lie_under_the_image_root(tmp_path):
    touch(tmp_path / "abs", "x.png")
    path = write_jsonl(tmp_path / "d" / "p.jsonl", [{"image": str(tmp_path / "abs" / "x.png"), "caption": "x"}])
    samples, (skip,) = read(SourceSpec("c", "captions", str(path)))  # root: the data file's folder d/
    assert samples == [] and skip.reason == "image_outside_root" and "set the image root" in skip.detail
    for root in (tmp_path, "/"):  # a root that holds it; "/" allows any path
        (sample,), _ = read(SourceSpec("c", "captions", str(path), image_root=str(root)))
        assert sample.images == [str(tmp_path / "abs" / "x.png")]


def test_captions_file_with_planted_bad_lines(tmp_path):
    touch(tmp_path, "1.jpg", "2.jpg", "3.jpg")
    good = [
        {"image": "1.jpg", "caption": "one"},
        {"image": "2.jpg", "caption": "two"},
        {"image": ["3.jpg"], "caption": "three"},
    ]
    lines = [
        good[0],
        '{"image": "1.jpg", "caption": "unterminated',  # malformed_json
        {"image": "1.jpg", "caption": 42},  # bad_type
        {"image": 7, "caption": "x"},  # bad_type
        "",  # blank lines are not records
        {"caption": "no image field"},  # missing_field
        {"image": "1.jpg"},  # missing_field
        good[1],
        {"image": "gone.jpg", "caption": "its file is missing"},  # missing_image
        {"image": ["1.jpg", "2.jpg"], "caption": "two images"},  # image_count_mismatch
        {"image": "1.jpg", "caption": "   "},  # empty
        [1, 2, 3],  # bad_type: not an object
        "\xff\xfe",  # malformed_json
        good[2],
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", lines)
    spec = SourceSpec("planted", "captions", str(path))
    samples, skipped = read(spec)
    assert [s.messages[1].content for s in samples] == ["one", "two", "three"]
    assert Counter(s.reason for s in skipped) == {
        "malformed_json": 2,
        "bad_type": 3,
        "missing_field": 2,
        "missing_image": 1,
        "image_count_mismatch": 1,
        "empty": 1,
    }
    assert all(s.source == "planted" for s in skipped)
    assert skipped[0].where == "pairs.jsonl:2"
    assert [s.where for s in skipped if s.reason == "missing_image"] == ["pairs.jsonl:9"]
    assert "gone.jpg" in next(s.detail for s in skipped if s.reason == "missing_image")
    assert count_records(spec) == len(lines) - 1  # the blank line is not a record


# --- mplug (the reference's instruction lines) ------------------------------------------------------------------------


def render_reference(messages: list[Message]) -> str:
    """The reference template (docs/mplug-owl.md §2), written independently of the parser under test."""
    prefix = {"system": "", "user": "Human: ", "assistant": "AI: "}
    return "\n".join(prefix[m.role] + m.content for m in messages)


def v1_text(messages: list[Message]) -> str:
    """What owl's mplug-owl-v1 template renders (default system prompt), EOS marks removed."""
    from owl.config import MPLUG_SYSTEM_PROMPT
    from owl.template import render, segments_to_text

    return segments_to_text(render("mplug-owl-v1", None, messages, MPLUG_SYSTEM_PROMPT, False)).replace("</s>", "")


def test_mplug_record_from_the_docs(tmp_path):
    touch(tmp_path, "a.jpg")
    text = f"{SYSTEM}\nHuman: <image>\nHuman: What is in the picture?\nAI: A cat on a sofa."
    path = write_jsonl(tmp_path / "sft.jsonl", [{"image": ["a.jpg"], "text": text, "task_type": "llava_sft"}])
    (sample,), skipped = read(SourceSpec("owl", "mplug", str(path)))
    assert skipped == []
    # The fixed preamble stands for the default system prompt and the image line joins its question: the
    # conversation every inference prompt has, which the reference template renders back byte for byte.
    assert roles(sample) == [("user", "<image>\nWhat is in the picture?"), ("assistant", "A cat on a sofa.")]
    assert sample.images == [str(tmp_path / "a.jpg")]
    assert sample.meta == {"task_type": "llava_sft"}
    assert v1_text(sample.messages) == text
    assert render_reference(parse_mplug_text(text)) == text  # the raw parse stays a lossless split


def test_mplug_multi_image_multi_turn_and_text_only(tmp_path):
    touch(tmp_path, "img/a.jpg", "img/b.jpg")
    two = (
        f"{SYSTEM}\nHuman: <image>\nHuman: <image>\nHuman: What differs?\nAI: The left one is red.\n"
        "The right one is blue.\nHuman: Which is bigger?\nAI: The left."
    )
    text_only = f"{SYSTEM}\nHuman: Write a haiku.\nAI: Autumn moonlight—\na worm digs silently\ninto the chestnut."
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"image": ["img/a.jpg", "img/b.jpg"], "text": two, "task_type": "llava_sft"},
            {"text": text_only, "task_type": "gpt4instruct_sft"},
            {"image": [], "text": text_only},
        ],
    )
    (multi, plain, empty_list), skipped = read(SourceSpec("owl", "mplug", str(path)))
    assert skipped == []
    assert [m.role for m in multi.messages] == ["user", "assistant", "user", "assistant"]
    assert multi.messages[0].content == "<image>\n<image>\nWhat differs?"
    assert multi.messages[1].content == "The left one is red.\nThe right one is blue."
    assert len(multi.images) == 2 and multi.num_image_markers() == 2
    assert (
        plain.images == []
        and plain.messages[-1].content == "Autumn moonlight—\na worm digs silently\ninto the chestnut."
    )
    assert plain.meta == {"task_type": "gpt4instruct_sft"}
    assert empty_list.meta == {} and not empty_list.is_multimodal
    for sample, text in [(multi, two), (plain, text_only)]:
        assert v1_text(sample.messages) == text
    own = write_jsonl(tmp_path / "own.jsonl", [{"text": "Be terse.\nHuman: Hi\nAI: Hello."}])
    (custom,), _ = read(SourceSpec("own", "mplug", str(own)))
    assert roles(custom)[0] == ("system", "Be terse.")  # a system text of one's own is kept


def test_mplug_bad_records(tmp_path):
    touch(tmp_path, "a.jpg")
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"image": ["a.jpg"], "text": f"{SYSTEM}\nHuman: What is it?\nAI: A cat."},  # image_count_mismatch
            {"text": f"{SYSTEM}\nHuman: Hello?"},  # no_target
            {"text": f"{SYSTEM}\nHuman: Hi\nAI: "},  # empty
            {"text": f"{SYSTEM}\nHuman: Hi\nAI: look <image>"},  # image_in_non_user_turn
            {"text": ["not", "a", "string"]},  # bad_type
            {"image": ["a.jpg"]},  # missing_field
            {"image": ["missing.jpg"], "text": "Human: <image>\nAI: x"},  # missing_image
        ],
    )
    samples, skipped = read(SourceSpec("owl", "mplug", str(path)))
    assert samples == []
    assert [s.reason for s in skipped] == [
        "image_count_mismatch",
        "no_target",
        "empty",
        "image_in_non_user_turn",
        "bad_type",
        "missing_field",
        "missing_image",
    ]


_line = st.text(st.characters(blacklist_characters="\n<", blacklist_categories=("Cs",)), max_size=12)
_continuation = _line.filter(lambda s: not s.startswith(("Human:", "AI:")))
_content = st.builds(lambda first, rest: "\n".join([first, *rest]), _line, st.lists(_continuation, max_size=2))
_turn = st.one_of(
    st.tuples(st.just("user"), st.one_of(st.just("<image>"), _content)),
    st.tuples(st.just("assistant"), _content),
)


@settings(max_examples=200, deadline=None)
@given(
    system=st.lists(_continuation, max_size=3).filter(lambda lines: "".join(lines).strip()),
    turns=st.lists(_turn, min_size=1, max_size=6),
)
def test_mplug_text_round_trips_through_the_reference_template(system, turns):
    messages = [Message("system", "\n".join(system))] + [Message(role, content) for role, content in turns]
    text = render_reference(messages)
    parsed = parse_mplug_text(text)
    assert parsed == messages
    assert render_reference(parsed) == text


def test_mplug_text_without_system_prompt():
    assert parse_mplug_text("Human: hi\nAI: hello") == [Message("user", "hi"), Message("assistant", "hello")]


# --- LLaVA ------------------------------------------------------------------------------------------------------------


def test_llava_records(tmp_path):
    touch(tmp_path / "coco", "000000033471.jpg", "a.jpg", "b.jpg")
    data = [
        {
            "id": "000000033471",
            "image": "000000033471.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
                {"from": "gpt", "value": "The bus is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "An advertisement."},
            ],
        },
        {
            "id": "end-marker",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "What is shown here?\n<image>"},
                {"from": "gpt", "value": "A kitchen."},
            ],
        },
        {
            "id": "two-images",
            "image": ["a.jpg", "b.jpg"],
            "conversations": [
                {"from": "human", "value": "<image>\n<image>\nCompare the two."},
                {"from": "gpt", "value": "Same room, different light."},
            ],
        },
        {
            "id": "text-only",
            "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}],
        },
    ]
    path = write_json(tmp_path / "llava_instruct.json", data)
    samples, skipped = read(SourceSpec("llava", "llava", str(path), image_root=str(tmp_path / "coco")))
    assert skipped == []
    bus, end, two, text = samples
    assert bus.id == "000000033471"
    assert roles(bus) == [
        ("user", "<image>\nWhat are the colors of the bus?"),
        ("assistant", "The bus is white and red."),
        ("user", "What feature can be seen on the back of the bus?"),
        ("assistant", "An advertisement."),
    ]
    assert bus.images == [str(tmp_path / "coco" / "000000033471.jpg")]
    assert end.messages[0].content == "What is shown here?\n<image>" and len(end.images) == 1
    assert two.images == [str(tmp_path / "coco" / "a.jpg"), str(tmp_path / "coco" / "b.jpg")]
    assert text.images == [] and roles(text) == [("user", "Say hi."), ("assistant", "Hi.")]
    assert count_records(SourceSpec("llava", "llava", str(path))) == 4


def test_llava_images_without_markers_go_before_the_first_question(tmp_path):
    touch(tmp_path, "a.jpg", "b.jpg")
    data = [
        {"image": "a.jpg", "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "A"}]},
        {
            "image": ["a.jpg", "b.jpg"],
            "conversations": [{"from": "human", "value": "Differences?"}, {"from": "gpt", "value": "None."}],
        },
    ]
    samples, skipped = read(SourceSpec("llava", "llava", str(write_json(tmp_path / "l.json", data))))
    assert skipped == []
    assert samples[0].messages[0].content == "<image>\nDescribe."
    assert samples[1].messages[0].content == "<image>\n<image>\nDifferences?"
    assert samples[0].id == "l.json[0]"


def test_llava_planted_bad_records(tmp_path):
    touch(tmp_path, "a.jpg")

    def conv(question: str, answer: str = "ok") -> list[dict]:
        return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]

    data = [
        {"image": "a.jpg", "conversations": conv("<image>\n<image>\nTwo markers, one image")},
        {"conversations": conv("<image>\nmarker, no image")},
        {"image": "a.jpg", "conversations": "not a list"},
        {"image": "a.jpg", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
        {"image": "a.jpg", "conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
        {"image": "missing.jpg", "conversations": conv("<image>\nWhere is it?")},
        {"image": "a.jpg", "conversations": conv("<image>\nLook", "it says <image>")},
        {"image": "a.jpg", "conversations": conv("<image>\nQ", "")},
        "a string where a record should be",
        {"image": "a.jpg", "conversations": conv("<image>\nFine.")},
    ]
    samples, skipped = read(SourceSpec("llava", "llava", str(write_json(tmp_path / "l.json", data))))
    assert len(samples) == 1 and samples[0].id == "l.json[9]"
    assert [s.reason for s in skipped] == [
        "image_count_mismatch",
        "image_count_mismatch",
        "bad_type",
        "bad_type",
        "missing_field",
        "missing_image",
        "image_in_non_user_turn",
        "empty",
        "bad_type",
    ]
    assert [s.where for s in skipped][:2] == ["l.json[0]", "l.json[1]"]


def test_list_formats_also_read_json_lines(tmp_path):
    touch(tmp_path, "a.jpg")
    record = {"image": "a.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    path = write_jsonl(tmp_path / "llava.jsonl", [record, "{broken", record])
    samples, skipped = read(SourceSpec("l", "llava", str(path)))
    assert len(samples) == 2 and [s.reason for s in skipped] == ["malformed_json"]
    assert [s.id for s in samples] == ["llava.jsonl:1", "llava.jsonl:3"]


# --- Alpaca -----------------------------------------------------------------------------------------------------------


def test_alpaca_with_and_without_input(tmp_path):
    data = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "output": "Blue"},
        {"instruction": "", "input": "", "output": "orphan"},
        {"instruction": "Say nothing.", "input": "", "output": ""},
        {"instruction": "No output field."},
        {"instruction": ["list"], "input": "", "output": "x"},
    ]
    samples, skipped = read(SourceSpec("alpaca", "alpaca", str(write_json(tmp_path / "alpaca_data.json", data))))
    assert [roles(s) for s in samples] == [
        [("user", "Give three tips for staying healthy."), ("assistant", "1. Eat well.")],
        [("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")],
        [("user", "Name a colour."), ("assistant", "Blue")],
    ]
    assert all(not s.images for s in samples)
    assert [s.reason for s in skipped] == ["empty", "empty", "missing_field", "bad_type"]


# --- ShareGPT ---------------------------------------------------------------------------------------------------------


def test_sharegpt_roles_system_and_merging(tmp_path):
    data = [
        {
            "id": "QWJhYvA_0",
            "conversations": [
                {"from": "system", "value": "You are terse."},
                {"from": "human", "value": "Summarise Hamlet."},
                {"from": "gpt", "value": "A prince avenges his father."},
                {"from": "human", "value": "Shorter."},
                {"from": "gpt", "value": "Revenge."},
            ],
        },
        {
            "id": "names",
            "conversations": [
                {"from": "user", "value": "Hi"},
                {"from": "assistant", "value": "Hello"},
                {"from": "human", "value": "2+2?"},
                {"from": "chatgpt", "value": "4"},
                {"from": "human", "value": "3+3?"},
                {"from": "bing", "value": "6"},
                {"from": "human", "value": "4+4?"},
                {"from": "bard", "value": "8"},
            ],
        },
        {
            "id": "merge-and-drop",
            "conversations": [
                {"from": "gpt", "value": "Hi! How can I help?"},  # dropped: nothing to answer
                {"from": "human", "value": "First part."},
                {"from": "human", "value": "Second part."},
                {"from": "gpt", "value": "Answer."},
            ],
        },
    ]
    samples, skipped = read(SourceSpec("sharegpt", "sharegpt", str(write_json(tmp_path / "sg.json", data))))
    assert skipped == []
    system, names, merged = samples
    assert system.id == "QWJhYvA_0"
    assert roles(system)[:2] == [("system", "You are terse."), ("user", "Summarise Hamlet.")]
    assert [m.role for m in names.messages] == ["user", "assistant"] * 4
    assert [m.content for m in names.messages if m.role == "assistant"] == ["Hello", "4", "6", "8"]
    assert roles(merged) == [("user", "First part.\n\nSecond part."), ("assistant", "Answer.")]


def test_sharegpt_bad_records(tmp_path):
    data = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "narrator", "value": "..."}]},
        {"conversations": [{"from": "human", "value": "Anyone there?"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]},
        {"conversations": {"from": "human", "value": "not a list"}},
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hey"},
                {"from": "system", "value": "x"},
            ]
        },
        {"conversations": [{"from": "human", "value": "Render <image> tags?"}, {"from": "gpt", "value": "Yes."}]},
        {"conversations": []},
        {"id": "ok", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]},
    ]
    samples, skipped = read(SourceSpec("sg", "sharegpt", str(write_json(tmp_path / "sg.json", data))))
    assert [s.id for s in samples] == ["ok"]
    assert [s.reason for s in skipped] == [
        "unknown_role",
        "no_target",
        "empty",
        "bad_type",
        "misplaced_system",
        "image_count_mismatch",
        "empty",
    ]


# --- files and patterns -----------------------------------------------------------------------------------------------


def test_glob_reads_files_sorted_and_is_deterministic(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "c.jsonl"]:
        write_jsonl(tmp_path / "d" / name, [{"text": f"Human: {name}\nAI: ok"}])
    spec = SourceSpec("m", "mplug", str(tmp_path / "d" / "*.jsonl"))
    first = [s.messages[0].content for s in iter_source(spec)]
    assert first == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert list(iter_source(spec)) == list(iter_source(spec))
    assert count_records(spec) == 3


def test_brace_pattern_reports_a_missing_file_and_reads_the_rest(tmp_path):
    for i in (0, 2):
        write_jsonl(tmp_path / f"part-{i:05d}.jsonl", [{"text": f"Human: {i}\nAI: ok"}])
    spec = SourceSpec("m", "mplug", str(tmp_path / "part-{00000..00002}.jsonl"))
    samples, skipped = read(spec)
    assert [s.messages[0].content for s in samples] == ["0", "2"]
    assert [(s.reason, Path(s.where).name) for s in skipped] == [("missing_file", "part-00001.jsonl")]


def test_unusable_sources_raise_with_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file matches path .*nothing-\*\.jsonl.*data\.sources"):
        list(iter_source(SourceSpec("x", "captions", str(tmp_path / "nothing-*.jsonl"))))
    with pytest.raises(FileNotFoundError, match="is a directory"):
        count_records(SourceSpec("x", "captions", str(tmp_path)))
    obj = write_json(tmp_path / "obj.json", {"data": [{"instruction": "a", "output": "b"}]})
    with pytest.raises(ValueError, match=r"obj\.json holds one JSON object \(keys: data\)"):
        list(iter_source(SourceSpec("x", "alpaca", str(obj))))
    number = write_json(tmp_path / "n.json", 42)
    with pytest.raises(ValueError, match=r"n\.json is not a JSON list"):
        count_records(SourceSpec("x", "sharegpt", str(number)))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"},')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        list(iter_source(SourceSpec("x", "alpaca", str(broken))))


def test_line_formats_also_read_a_json_list(tmp_path):
    touch(tmp_path, "a.jpg")
    path = write_json(tmp_path / "pairs.json", [{"image": "a.jpg", "caption": "x"}, {"image": "a.jpg"}])
    samples, skipped = read(SourceSpec("c", "captions", str(path)))
    assert len(samples) == 1 and [(s.reason, s.where) for s in skipped] == [("missing_field", "pairs.json[1]")]
    assert count_records(SourceSpec("c", "captions", str(path))) == 2
