"""The one tokenisation path: template text, <image> expansion, label masks, truncation, bad inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from owl.config import MPLUG_SYSTEM_PROMPT, preset
from owl.conversation import IMAGE_TOKEN, Message, Sample, SampleError
from owl.models import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from owl.processing import OwlProcessor
from owl.template import render, segments_to_text
from owl.tokenizer import byte_tokenizer
from tests.helpers import random_image

TOK = byte_tokenizer()
CFG = preset("tiny")
V = CFG.num_visual_tokens


def proc(**changes) -> OwlProcessor:
    cfg = preset("tiny")
    cfg.processor = dataclasses.replace(cfg.processor, **changes)
    return OwlProcessor.from_config(cfg, TOK)


def conv(*turns, images=()):
    roles = ["user", "assistant"] * len(turns)
    return Sample([Message(r, t) for r, t in zip(roles, turns)], list(images))


def test_v1_template_text_exactly():
    s = conv(
        "<image>\nWhat is in the picture?", "A cat on a sofa.", "What colour is it?", "Black.", images=[random_image(0)]
    )
    text = segments_to_text(render("mplug-owl-v1", TOK, s.messages, MPLUG_SYSTEM_PROMPT, False))
    assert text == (
        f"{MPLUG_SYSTEM_PROMPT}\nHuman: <image>\nHuman: What is in the picture?\nAI: A cat on a sofa.</s>\n"
        "Human: What colour is it?\nAI: Black.</s>"
    )
    prompt = segments_to_text(render("mplug-owl-v1", TOK, s.messages[:3], MPLUG_SYSTEM_PROMPT, True))
    assert prompt.endswith("Human: What colour is it?\nAI: ")


def test_v1_several_images_one_line_each_and_inline_markers_stay():
    s = Sample([Message("user", "<image>\n<image>\nCompare them.")], [random_image(0), random_image(1)])
    text = segments_to_text(render("mplug-owl-v1", TOK, s.messages, "", True))
    assert text == "Human: <image>\nHuman: <image>\nHuman: Compare them.\nAI: "
    s = Sample([Message("user", "Is <image> bigger than <image>?")], [random_image(0), random_image(1)])
    assert (
        segments_to_text(render("mplug-owl-v1", TOK, s.messages, "", True))
        == "Human: Is <image> bigger than <image>?\nAI: "
    )


def test_labels_cover_exactly_answers_and_eos():
    p = proc()
    e = p.encode(conv("Hi?", "Hello.", "Bye?", "Bye."))
    targets = [t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE_INDEX]
    assert TOK.decode(targets) == "Hello.</s>Bye.</s>"
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(e.input_ids, e.labels))
    assert e.input_ids[0] == TOK.bos_token_id


def test_generation_prompt_is_a_prefix_of_training_tokens():
    """Train and inference tokenise identically: the prompt ids are exactly the training ids before the answer."""
    p = proc()
    img = random_image(3)
    train = p.encode(conv("<image>\nWhat?", "A dog.", "And?", "Done.", images=[img]))
    for upto in (1, 3):
        s = conv("<image>\nWhat?", "A dog.", "And?", images=[img])
        s.messages = s.messages[:upto]
        prompt = p.encode(s, for_generation=True)
        assert train.input_ids[: len(prompt.input_ids)] == prompt.input_ids
        first_answer_label = train.labels[len(prompt.input_ids)]
        assert first_answer_label != IGNORE_INDEX  # the next token is the answer's first target
        assert all(lab == IGNORE_INDEX for lab in prompt.labels)


def test_chat_template_path_targets_and_prefix():
    p = proc(template="chat-template", system_prompt="")
    s = conv("<image>\nWhat?", "A dog.", "More?", "No.", images=[random_image(1)])
    e = p.encode(s)
    targets = TOK.decode([t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE_INDEX])
    assert targets == "A dog.</s>No.</s>"
    assert e.input_ids.count(IMAGE_PLACEHOLDER_ID) == V
    s.messages = s.messages[:3]
    prompt = p.encode(s, for_generation=True)
    assert e.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert TOK.decode([i for i in prompt.input_ids if i >= 0]).endswith("<|user|>\nMore?</s>\n<|assistant|>\n")


@settings(max_examples=60, deadline=None)
@given(
    turns=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.text(st.characters(codec="utf-8", exclude_characters="<"), max_size=12),
            st.text(min_size=1, max_size=12),
        ),
        min_size=1,
        max_size=3,
    ),
    template=st.sampled_from(["mplug-owl-v1", "chat-template"]),
)
def test_placeholder_and_label_properties(turns, template):
    p = proc(template=template, system_prompt="")
    msgs, images = [], []
    for n_img, question, answer in turns:
        msgs += [Message("user", IMAGE_TOKEN * n_img + question), Message("assistant", answer)]
        images += [random_image(len(images))] * n_img
    e = p.encode(Sample(msgs, images))
    ids, labels = torch.tensor(e.input_ids), torch.tensor(e.labels)
    is_img = ids == IMAGE_PLACEHOLDER_ID
    assert int(is_img.sum()) == V * len(images) and e.num_images == len(images)
    assert (labels[is_img] == IGNORE_INDEX).all()  # image slots carry no loss
    tgt = labels != IGNORE_INDEX
    assert torch.equal(labels[tgt], ids[tgt])  # labels copy the ids where they are targets
    assert int((ids[tgt] == TOK.eos_token_id).sum()) >= len(turns)  # every answer ends with EOS
    # every image run is whole: run starts are V apart or separated by text
    starts = [i for i in range(len(ids)) if is_img[i] and (i == 0 or not is_img[i - 1])]
    runs = sum(int(is_img[s : s + V].all()) for s in starts)
    assert sum((int(is_img[s:].long().cumprod(0).sum()) // V) for s in starts) == len(images) and runs == len(starts)


def test_truncation_never_cuts_an_image_and_drops_no_target_samples():
    p = proc(max_length=40)
    with pytest.raises(SampleError) as err:
        p.encode(conv("x" * 60, "answer"))
    assert err.value.reason == "no_target" and "max_length=40" in str(err.value)
    p = proc(max_length=20, system_prompt="")
    s = Sample([Message("user", "Look " + "<image>" + " now please"), Message("assistant", "ok")], [random_image(0)])
    with pytest.raises(SampleError, match="no answer tokens left"):
        p.encode(s)
    p = proc(max_length=30, system_prompt="")
    s = conv("<image>\nq", "a" * 40, images=[random_image(0)])
    e = p.encode(s)
    assert len(e.input_ids) == 30 and e.num_images == 1 and e.num_targets > 0


def test_prompt_too_long_for_generation_is_refused():
    with pytest.raises(SampleError, match="over processor.max_length"):
        proc(max_length=20).encode(Sample([Message("user", "y" * 50)]), for_generation=True)


def test_bad_images_are_clear_errors(tmp_path):
    p = proc()
    with pytest.raises(SampleError, match="image file not found: .*missing.png") as e:
        p.encode(conv("<image>q", "a", images=[str(tmp_path / "missing.png")]))
    assert e.value.reason == "missing_image"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(SampleError, match="cannot read image .*bad.jpg") as e:
        p.encode(conv("<image>q", "a", images=[str(bad)]))
    assert e.value.reason == "bad_image"
    with pytest.raises(SampleError, match="2 <image> placeholders but 1 images given"):
        p.encode(conv("<image><image>q", "a", images=[random_image(0)]))
    big = proc(max_image_pixels=100)
    with pytest.raises(SampleError, match="over the cap"):
        big.encode(conv("<image>q", "a", images=[random_image(0)]))


def test_image_preprocessing_matches_clip_recipe():
    import numpy as np
    from PIL import Image

    img = random_image(5, size=(50, 30))
    p = proc()
    x = p.images(img)
    ref = np.asarray(img.resize((28, 28), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    ref = (ref - np.array(CFG.vision.image_mean)) / np.array(CFG.vision.image_std)
    torch.testing.assert_close(x, torch.tensor(ref.transpose(2, 0, 1), dtype=torch.float32))


def test_augmentation_is_deterministic_per_rng():
    import numpy as np

    from owl.images import Augment

    p = OwlProcessor.from_config(CFG, TOK, augment=Augment())
    img = random_image(7, size=(64, 48))
    a = p.images(img, np.random.default_rng(1))
    b = p.images(img, np.random.default_rng(1))
    c = p.images(img, np.random.default_rng(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(p.images(img), OwlProcessor.from_config(CFG, TOK).images(img))  # no rng: no augmentation


def test_collate_padding_sides():
    p = proc()
    items = [p.encode(conv("a", "b")), p.encode(conv("longer question", "b"))]
    right, left = p.collate(items, "right"), p.collate(items, "left")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    assert right["pixel_values"] is None and right["image_counts"].tolist() == [0, 0]


def test_plain_template_is_image_then_caption_with_only_the_caption_as_target(tmp_path):
    """A source's ``template: plain`` (the paper's stage 1): no system prompt or role markers, fewer tokens."""
    from owl.data import SourceSpec, iter_source

    random_image(0).save(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_text('{"image": "a.png", "caption": "A red circle."}\n')
    plain = next(iter_source(SourceSpec("c", "captions", str(tmp_path / "c.jsonl"), template="plain")))
    chat = next(iter_source(SourceSpec("c", "captions", str(tmp_path / "c.jsonl"))))
    assert plain.template == "plain" and chat.template is None
    p = proc()
    assert segments_to_text(p.segments(plain, False)) == "<image>A red circle.</s>"
    enc, full = p.encode(plain), p.encode(chat)
    caption = TOK("A red circle.", add_special_tokens=False)["input_ids"]
    assert enc.input_ids == [IMAGE_PLACEHOLDER_ID] * V + caption + [TOK.eos_token_id]
    assert enc.labels == [IGNORE_INDEX] * V + caption + [TOK.eos_token_id]
    assert len(enc.input_ids) < len(full.input_ids)
    with pytest.raises(ValueError, match="template 'chat' is unknown"):
        SourceSpec("c", "captions", "x.jsonl", template="chat")
