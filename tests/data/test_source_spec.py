"""SourceSpec validation: mistakes in a YAML data.sources entry fail at load time with a message that says the fix."""

import pytest

from owl.data import FORMATS, SourceSpec


def test_defaults_and_field_renames():
    spec = SourceSpec("cc3m", "captions", "data/*.jsonl", fields={"image": "url", "caption": "text"})
    assert spec.weight == 1.0 and spec.image_root is None and spec.caption_prompt == ""
    assert spec.field_name("image") == "url"
    assert spec.field_name("caption") == "text"
    assert spec.field_name("id") == "id"
    assert SourceSpec("a", "alpaca", "a.json").fields == {}


def test_unknown_format_names_it_and_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        SourceSpec("x", "llava_json", "a.json")
    message = str(info.value)
    assert "'llava_json'" in message and "'x'" in message
    for name in FORMATS:
        assert name in message


def test_unknown_field_key_names_it_and_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        SourceSpec("x", "captions", "a.jsonl", fields={"img": "url"})
    message = str(info.value)
    assert "'img'" in message
    assert "image, caption, id" in message
    with pytest.raises(ValueError, match="conversations"):
        SourceSpec("x", "alpaca", "a.json", fields={"conversations": "c"})
    with pytest.raises(ValueError, match="non-empty field name"):
        SourceSpec("x", "captions", "a.jsonl", fields={"image": ""})


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_weight_must_be_a_positive_number(weight):
    with pytest.raises(ValueError, match="weight must be a finite number > 0"):
        SourceSpec("x", "captions", "a.jsonl", weight=weight)


def test_options_that_would_be_ignored_are_rejected():
    with pytest.raises(ValueError, match="caption_prompt only applies"):
        SourceSpec("x", "llava", "a.json", caption_prompt="Describe.")
    with pytest.raises(ValueError, match="image_root does nothing"):
        SourceSpec("x", "webdataset", "s/{0..1}.tar", image_root="/images")
    with pytest.raises(ValueError, match="image_root does nothing"):
        SourceSpec("x", "sharegpt", "a.json", image_root="/images")
    SourceSpec("x", "webdataset", "s.tar", caption_prompt="Describe.")
    SourceSpec("x", "llava", "a.json", image_root="/coco")


def test_name_and_path_are_required():
    with pytest.raises(ValueError, match="name"):
        SourceSpec("", "captions", "a.jsonl")
    with pytest.raises(ValueError, match="path"):
        SourceSpec("x", "captions", "")
