"""``processor.compat: mplug-owl`` gives exactly the ids, labels and pixels of the released mPLUG-Owl code.

The reference here is written independently from the reference sources (X-PLUG/mPLUG-Owl, ``mPLUG-Owl/``):
``pipeline/data_utils/xgpt3_dataset.py`` (training loader), ``mplug_owl/processing_mplug_owl.py`` (inference
processor) and ``serve/`` (how the demo writes earlier turns), with the raw SentencePiece model as the slow legacy
``LlamaTokenizer`` it used (``sp.encode`` per call). It never calls owl's processor. Conversations are written by
hand in the reference's data format, so owl's template rendering is checked too.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from owl.config import CLIP_MEAN, CLIP_STD, MPLUG_SYSTEM_PROMPT, ProcessorConfig, preset
from owl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from owl.conversation import Message, Sample
from owl.convert.tokenizer import llama_tokenizer_from_spm
from owl.errors import ConfigError
from owl.processing import OwlProcessor
from tests.helpers import random_image
from tests.sentencepiece_tok import spm_model  # noqa: F401 (a fixture)

CFG = preset("tiny")
V = CFG.num_visual_tokens  # the reference's 65 is 64 queries + 1; the tiny preset has 4 + 1
S = CFG.vision.image_size
SYS = MPLUG_SYSTEM_PROMPT


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_training(sp, conversation: str, max_length: int = 100_000) -> tuple[list[int], list[int]]:
    """``MultiModalDataset._extract_text_token_from_conversation``: (ids, label mask) up to ``enc_length``.

    Media tokens are -1; the label mask is 1 for targets. ``max_length`` is large so no truncation happens (owl
    keeps its own truncation rule)."""
    tok = lambda s: sp.encode(s)  # the slow legacy LlamaTokenizer with add_special_tokens=False
    media_tokens = {"<image>": -1}
    media_lengths = {"<image>": V}
    prompt_chunk = [sp.bos_id()] if sp.bos_id() > 0 else []
    enc_chunk, label_chunk, enc_length = [], [], 0
    if all(m not in conversation for m in media_tokens):
        chunk_strs = re.split("(" + "|".join(map(re.escape, ["AI: ", "\nHuman: "])) + ")", conversation)
        stop = False
        for idx, chunk_str in enumerate(chunk_strs):
            if idx == 0:
                enc_chunk = prompt_chunk + tok(chunk_str)
                enc_length = len(enc_chunk)
                label_chunk = [0] * enc_length
            else:
                if chunk_strs[idx - 1] == "AI: ":
                    cur = tok(chunk_str)
                    if enc_length + len(cur) >= max_length:
                        cur, stop = cur[: max_length - enc_length], True
                    cur += [sp.eos_id()]
                    enc_length += len(cur)
                    enc_chunk += cur
                    label_chunk += [1] * len(cur)
                else:
                    cur = tok(chunk_str)
                    if enc_length + len(cur) >= max_length + 1:
                        cur, stop = cur[: max_length + 1 - enc_length], True
                    enc_length += len(cur)
                    enc_chunk += cur
                    label_chunk += [0] * len(cur)
                if stop:
                    break
    else:
        pattern = "|".join(map(re.escape, list(media_tokens) + ["AI: ", "\nHuman: "]))
        chunk_strs = [x for x in re.split(f"({pattern})", conversation) if len(x) > 0]
        for idx, chunk_str in enumerate(chunk_strs):
            if enc_length >= max_length + 1:
                break
            if idx == 0:
                enc_chunk = prompt_chunk + tok(chunk_str)
                enc_length = len(enc_chunk)
                label_chunk = [0] * enc_length
            elif chunk_str in media_tokens:
                if enc_length + media_lengths[chunk_str] > max_length + 1:
                    break
                enc_chunk += [media_tokens[chunk_str]] * media_lengths[chunk_str]
                enc_length += media_lengths[chunk_str]
                label_chunk += [0] * media_lengths[chunk_str]
            elif chunk_strs[idx - 1] == "AI: ":
                cur = tok(chunk_str)
                if enc_length + len(cur) >= max_length:
                    cur = cur[: max_length - enc_length]
                cur += [sp.eos_id()]
                enc_length += len(cur)
                enc_chunk += cur
                label_chunk += [1] * len(cur)
            else:
                cur = tok(chunk_str)
                if enc_length + len(cur) >= max_length + 1:
                    cur = cur[: max_length + 1 - enc_length]
                enc_length += len(cur)
                enc_chunk += cur
                label_chunk += [0] * len(cur)
    return enc_chunk[:enc_length], label_chunk[:enc_length]


def ref_prompt(sp, prompt: str) -> list[int]:
    """``_tokenize_prompt`` with ``add_BOS=True`` and ``media_info={"<image>": V}``."""
    enc = [sp.bos_id()]
    if "<image>" not in prompt:
        return enc + sp.encode(prompt)
    for chunk in [x for x in re.split("(<image>)", prompt) if len(x) > 0]:
        enc += [-1] * V if chunk == "<image>" else sp.encode(chunk)
    return enc


def ref_prompt_batch(sp, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``_tokenize_prompts_and_batch`` with ``tokens_to_generate=0``: right padding with EOS, and the mask."""
    toks = [ref_prompt(sp, p) for p in prompts]
    width = max(len(t) for t in toks)
    ids = torch.tensor([t + [sp.eos_id()] * (width - len(t)) for t in toks])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in toks])
    return ids, mask


def owl_ids(ids: list[int]) -> list[int]:
    """The reference's media id -1 as owl's placeholder (what the converter maps)."""
    return [IMAGE_PLACEHOLDER_ID if i == -1 else i for i in ids]


def owl_labels(ids: list[int], mask: list[int]) -> list[int]:
    return [i if m else IGNORE_INDEX for i, m in zip(ids, mask)]


# ----------------------------------------------------------------------------- fixtures and conversations


@pytest.fixture(scope="module")
def sp(spm_model):  # noqa: F811 (the fixture)
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(spm_model))


@pytest.fixture(scope="module")
def tok(spm_model):  # noqa: F811
    return llama_tokenizer_from_spm(spm_model)


@pytest.fixture(scope="module")
def proc(tok):
    cfg = dataclasses.replace(CFG, processor=dataclasses.replace(CFG.processor, compat="mplug-owl"))
    return OwlProcessor.from_config(cfg, tok)


def sample(*turns: str, images=()) -> Sample:
    roles = ["user", "assistant"] * len(turns)
    return Sample([Message(r, t) for r, t in zip(roles, turns)], list(images))


ONE_IMAGE = (  # a generation prompt
    sample("<image>\nWhat is in the picture?", images=[random_image(0)]),
    f"{SYS}\nHuman: <image>\nHuman: What is in the picture?\nAI: ",
)
TWO_IMAGES = (
    sample(
        "<image>\nWhat is in the picture?",
        "A black cat is sleeping on a red sofa.",
        "<image>\nCompare it with this one.",
        "The second one shows 2 dogs  playing in the snow.",
        "Which is brighter?",
        "The first one.",
        images=[random_image(1), random_image(2, (30, 50))],
    ),
    f"{SYS}\nHuman: <image>\nHuman: What is in the picture?\nAI: A black cat is sleeping on a red sofa.\n"
    "Human: <image>\nHuman: Compare it with this one.\nAI: The second one shows 2 dogs  playing in the snow.\n"
    "Human: Which is brighter?\nAI: The first one.",
)
TEXT_ONLY = (
    sample("Tell me a fact about owls.", " Owls can turn their heads 270 degrees.", "Really?", "Yes, really!"),
    f"{SYS}\nHuman: Tell me a fact about owls.\nAI:  Owls can turn their heads 270 degrees.\n"
    "Human: Really?\nAI: Yes, really!",
)


def with_answer(s: Sample, answer: str) -> Sample:
    return Sample([*s.messages, Message("assistant", answer)], list(s.images))


CONVERSATIONS = {  # (sample, the reference's conversation text)
    "one_image": (with_answer(ONE_IMAGE[0], "A cat, sleeping."), ONE_IMAGE[1] + "A cat, sleeping."),
    "two_images": TWO_IMAGES,
    "text_only": TEXT_ONLY,
}


def prompt_of(s: Sample, upto: int) -> Sample:
    msgs = s.messages[:upto]
    n = sum(m.content.count("<image>") for m in msgs)
    return Sample(msgs, list(s.images[:n]))


def cut_prompt(text: str, n_answers: int) -> str:
    """The reference demo's prompt before answer ``n_answers``: earlier answers as plain text (serve/conversation.py
    writes ``AI: {answer}\\n`` with post_process_output having removed ``</s>``), then ``AI: ``."""
    return "\nAI: ".join(text.split("\nAI: ")[: n_answers + 1]) + "\nAI: "


# ----------------------------------------------------------------------------- token ids


@pytest.mark.parametrize("name", ["one_image", "two_images", "text_only"])
def test_training_ids_and_labels_equal_the_reference_loader(proc, sp, name):
    s, text = CONVERSATIONS[name]
    ids, mask = ref_training(sp, text)
    e = proc.encode(s)
    assert e.input_ids == owl_ids(ids)
    assert e.labels == owl_labels(owl_ids(ids), mask)
    assert e.num_images == len(s.images)


@pytest.mark.parametrize("name", ["one_image", "two_images", "text_only"])
def test_generation_ids_equal_the_reference_processor(proc, sp, name):
    s, text = CONVERSATIONS[name]
    cases = [(prompt_of(s, 2 * k + 1), cut_prompt(text, k)) for k in range(len(s.messages) // 2)]
    if name == "one_image":
        assert [c[1] for c in cases] == [ONE_IMAGE[1]]
    for s, prompt in cases:
        assert prompt.endswith("AI: ")
        e = proc.encode(s, for_generation=True)
        assert e.input_ids == owl_ids(ref_prompt(sp, prompt)), prompt
        assert all(x == IGNORE_INDEX for x in e.labels)


def test_a_batch_equals_the_reference_row_by_row(proc, sp):
    """Padding differs by design (owl pads generation on the left for ``generate``; the reference padded with EOS
    on the right), so the rows are compared on their attended tokens."""
    two, text2 = TWO_IMAGES
    samples = [ONE_IMAGE[0], prompt_of(two, 3), prompt_of(TEXT_ONLY[0], 1)]
    prompts = [ONE_IMAGE[1], cut_prompt(text2, 1), cut_prompt(TEXT_ONLY[1], 0)]
    batch = proc(samples, for_generation=True)
    ref_ids, ref_mask = ref_prompt_batch(sp, prompts)
    for i in range(len(samples)):
        got = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        assert got == owl_ids(ref_ids[i][ref_mask[i].bool()].tolist())
    assert batch["image_counts"].tolist() == [1, 2, 0]
    train = proc([with_answer(ONE_IMAGE[0], "A cat."), two, TEXT_ONLY[0]])
    texts = [ONE_IMAGE[1] + "A cat.", text2, TEXT_ONLY[1]]
    for i, t in enumerate(texts):
        ids, mask = ref_training(sp, t)
        n = len(ids)
        assert train["input_ids"][i, :n].tolist() == owl_ids(ids)
        assert train["labels"][i, :n].tolist() == owl_labels(owl_ids(ids), mask)
        assert train["attention_mask"][i].sum() == n


def test_the_two_reference_paths_differ_so_the_test_is_not_vacuous(proc, sp, tok):
    """The loader (chunks split at ``AI: ``/``\\nHuman: ``), the processor (whole text) and owl's own segment
    tokenisation give three different id sequences for the same conversation with a SentencePiece tokenizer."""
    s, text = TWO_IMAGES
    loader = owl_ids(ref_training(sp, text)[0])
    processor = owl_ids(ref_prompt(sp, text))
    assert loader != processor
    owl_cfg = dataclasses.replace(CFG, processor=dataclasses.replace(CFG.processor, compat="owl"))
    own = OwlProcessor.from_config(owl_cfg, tok).encode(s).input_ids
    assert own != loader and proc.encode(s).input_ids == loader


def test_truncation_keeps_owls_rule_under_compat(tok):
    cfg = dataclasses.replace(CFG, processor=ProcessorConfig(max_length=30, system_prompt="", compat="mplug-owl"))
    p = OwlProcessor.from_config(cfg, tok)
    e = p.encode(sample("<image>\nq", "a b c d e f g h i j k l m n o p q r s t u v w x y z", images=[random_image(0)]))
    assert len(e.input_ids) == 30 and e.num_images == 1 and e.num_targets > 0
    with pytest.raises(Exception, match="over processor.max_length"):
        p.encode(sample("word " * 40), for_generation=True)


def test_compat_config_is_validated_and_saved():
    with pytest.raises(ConfigError, match=r"processor.compat='llava' is unknown; use 'owl'.*'mplug-owl'"):
        ProcessorConfig(compat="llava")
    with pytest.raises(ConfigError, match="set processor.template: mplug-owl-v1 or processor.compat: owl"):
        ProcessorConfig(template="chat-template", compat="mplug-owl")
    cfg = dataclasses.replace(CFG, processor=ProcessorConfig(compat="mplug-owl"))
    assert type(cfg).from_dict(cfg.to_dict()).processor.compat == "mplug-owl"
    assert ProcessorConfig().compat == "owl"


def test_image_marker_in_the_system_prompt_is_refused(tok):
    cfg = dataclasses.replace(CFG, processor=ProcessorConfig(system_prompt="See <image>", compat="mplug-owl"))
    with pytest.raises(Exception, match="outside the image slots"):
        OwlProcessor.from_config(cfg, tok).encode(sample("q", "a"))


# ----------------------------------------------------------------------------- the fast tokenizer

_SPECIAL = ("<s>", "</s>", "<unk>")
_TEXT = st.text(
    alphabet=st.sampled_from(
        list("abcdefghijklmnopqrstuvwxyzAIH0123456789     \n\n\t.,:;!?'\"()-<>/") + list("éüß日本☃€")
    ),
    max_size=40,
).filter(lambda s: not any(t in s for t in _SPECIAL))


@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_fast_tokenizer_equals_sentencepiece(tok, sp, text):
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_merges_follow_piece_scores_not_ids(spm_model, tmp_path):  # noqa: F811
    """SentencePiece merges the pair whose joined piece scores highest. With scores out of id order (pieces moved to
    the lowest score, as models edited after training have), id-ordered merges differ on ~40% of these strings."""
    import random

    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2 as pb2

    m = pb2.ModelProto()
    m.ParseFromString(spm_model.read_bytes())
    for i, p in enumerate(m.pieces):
        if p.type == 1 and (p.piece.startswith("▁▁") or p.piece in ("he", "in", "▁the")):
            p.score = -1e9 - i
    path = tmp_path / "edited.model"
    path.write_bytes(m.SerializeToString())
    sp2, tok2 = sentencepiece.SentencePieceProcessor(model_file=str(path)), llama_tokenizer_from_spm(path)
    rng = random.Random(0)
    alphabet = [*"the in  a\n", "the", "  ", " the", "in"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert tok2(text)["input_ids"] == sp2.encode(text), text


def test_fast_tokenizer_survives_save_and_autotokenizer(tok, sp, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    for text in [" lead", "  two", "Human: <image>\nHuman: q\nAI: ", "x\n\n y ", "café 日本 ☃ 1234", ""]:
        assert back(text, add_special_tokens=False)["input_ids"] == sp.encode(text) == tok(text)["input_ids"]
        assert back.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert (back.bos_token_id, back.eos_token_id, back.unk_token_id, back.pad_token_id) == (1, 2, 0, 0)
    assert back("hi")["input_ids"] == sp.encode("hi")  # no BOS/EOS added: the reference adds them by hand


# ----------------------------------------------------------------------------- pixels


def ref_pixels_generation(img: Image.Image) -> torch.Tensor:
    """The reference processor: ``img.resize((S, S), 3)`` in the image's own mode, then ``CLIPImageProcessor``.

    Its pinned transformers (4.28.1) converted with a plain ``image.convert("RGB")``; transformers 5 composites
    alpha onto white instead, so the plain conversion is done here and the processor gets RGB (a no-op for it)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    clip = CLIPImageProcessorPil(
        size={"shortest_edge": S}, crop_size={"height": S, "width": S}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    resized = img.resize((S, S), 3).convert("RGB")
    return torch.as_tensor(np.asarray(clip([resized], return_tensors="np")["pixel_values"][0]))


def ref_pixels_training(img: Image.Image) -> torch.Tensor:
    """The reference loader: ``convert('RGB')`` first, then Resize((S, S), BICUBIC), ToTensor, Normalize."""
    arr = np.asarray(img.convert("RGB").resize((S, S), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    arr = (arr - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return torch.as_tensor(arr.transpose(2, 0, 1), dtype=torch.float32)


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgb = random_image(3, (50, 30))
    alpha = Image.fromarray((rng.random((30, 50)) * 255).astype("uint8"))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = rgb.convert("L")
    la.putalpha(alpha)
    return {
        "RGBA": rgba,
        "P": rgb.quantize(16),
        "L": rgb.convert("L"),
        "LA": la,
        "RGB-non-square": random_image(4, (23, 61)),
    }


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "RGB-non-square"])
def test_pixels_equal_the_reference_for_generation_and_training(proc, mode, tmp_path):
    img = _images()[mode]
    path = tmp_path / "x.png"
    img.save(path)
    with Image.open(path) as opened:
        assert opened.mode == img.mode  # the file keeps its mode, as the reference's Image.open(path)
        want_gen, want_train = ref_pixels_generation(opened), ref_pixels_training(opened)
    for src in (img, str(path)):
        prompt = sample("<image>\nWhat?", images=[src])
        gen = proc.encode(prompt, for_generation=True).pixel_values[0]
        train = proc.encode(with_answer(prompt, "It.")).pixel_values[0]
        torch.testing.assert_close(gen, want_gen, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(train, want_train, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_rgba_and_palette_pixels_depend_on_the_order(mode):
    """Resize-then-convert (inference) and convert-then-resize (training) really differ for these modes."""
    img = _images()[mode]
    assert (ref_pixels_generation(img) - ref_pixels_training(img)).abs().max() > 0.1


def test_compat_owl_pixels_are_unchanged(tok):
    img = _images()["RGBA"]
    p = OwlProcessor.from_config(CFG, tok)
    s = sample("<image>\nWhat?", images=[img])
    assert torch.equal(p.encode(s, for_generation=True).pixel_values[0], p.images(img))
    torch.testing.assert_close(p.images(img), ref_pixels_training(img), atol=1e-5, rtol=1e-6)
