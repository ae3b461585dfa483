"""``owl convert`` on tiny checkpoints in the released mPLUG-Owl layout (LLaMA and BLOOM; one .bin, sharded .bin,
sharded safetensors): round trips give identical tensors, and the converted model's logits equal an independent
re-computation of the reference forward pass (tests/mplug_owl_reference.py)."""

from __future__ import annotations

import json

import pytest
import torch

from owl.cli import main
from owl.constants import IMAGE_PLACEHOLDER_ID
from owl.convert.mplug_owl import open_shard, weight_files
from owl.errors import CheckpointError
from owl.generation import GenerationOptions, generate
from owl.models import load_model
from owl.tokenizer import byte_tokenizer
from tests.mplug_owl_reference import (
    ABSTRACTOR_FFN,
    NUM_QUERIES,
    random_state,
    reference_config,
    reference_logits,
    write_reference_dir,
)
from tests.sentencepiece_tok import VOCAB_SIZE, spm_model  # noqa: F401

V = NUM_QUERIES + 1  # visual positions per image
CASES = [("llama", "bin"), ("llama", "bin-sharded"), ("bloom", "bin"), ("bloom", "safetensors-sharded")]


def _tokenizer_files(family: str, spm_path, tmp_path) -> dict[str, bytes]:
    if family == "llama":
        return {"tokenizer.model": spm_path.read_bytes()}
    byte_tokenizer().save_pretrained(tmp_path / "tok")
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    return {n: (tmp_path / "tok" / n).read_bytes() for n in names if (tmp_path / "tok" / n).exists()}


def _vocab(family: str) -> int:
    return VOCAB_SIZE if family == "llama" else 259


def _read_all(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in weight_files(path):
        with open_shard(f) as shard:
            out |= {n: (shard[n] if isinstance(shard, dict) else shard.get_tensor(n)).clone() for n in shard.keys()}
    return out


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def converted(request, tmp_path_factory, spm_model):  # noqa: F811
    family, layout = request.param
    tmp = tmp_path_factory.mktemp(f"{family}-{layout}")
    cfg = reference_config(family, _vocab(family))
    state = random_state(cfg, seed=3)
    src = write_reference_dir(tmp / "ref", cfg, state, layout, _tokenizer_files(family, spm_model, tmp))
    assert main(["convert", "from-mplug-owl", str(src), str(tmp / "owl")]) == 0
    return family, cfg, state, src, tmp / "owl"


def test_round_trip_gives_identical_tensors(converted, tmp_path):
    family, _, state, src, owl_dir = converted
    assert main(["convert", "to-mplug-owl", str(owl_dir), str(tmp_path / "back")]) == 0
    back = _read_all(tmp_path / "back")
    expected = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    assert set(back) == set(expected)
    for k, v in expected.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    record = json.loads((owl_dir / "mplug_owl.json").read_text())
    dropped = [k for k in state if k.endswith("inv_freq")]
    assert record["dropped"] == sorted(dropped) and (family == "bloom" or dropped)  # old LLaMA buffers: recomputed
    ref_cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert ref_cfg["visual_abstractor_config"]["intermediate_size"] == ABSTRACTOR_FFN  # the weights' width, now right
    assert ref_cfg["text_config"]["model_type"] == family
    assert (tmp_path / "back" / "preprocessor_config.json").exists()
    if family == "llama":
        assert (tmp_path / "back" / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()


def test_converted_config_records_reference_behaviour(converted):
    family, _, _, _, owl_dir = converted
    cfg = json.loads((owl_dir / "config.json").read_text())
    assert cfg["abstractor"]["intermediate_size"] == ABSTRACTOR_FFN  # config.json said 4096
    assert cfg["abstractor"]["ffn_layer_norm_eps"] == 1e-6 and cfg["abstractor"]["layer_norm_eps"] == 1e-5
    assert cfg["processor"]["compat"] == "mplug-owl" and cfg["processor"]["template"] == "mplug-owl-v1"
    assert cfg["llm"]["normalize_visual_embeds"] is (family != "bloom")
    gen = json.loads((owl_dir / "generation_config.json").read_text())
    assert (gen["do_sample"], gen["top_k"], gen["max_length"]) == (True, 3, 512)  # the reference's built-in settings


def _batches(vocab: int) -> dict[str, tuple[list[list[int]], list[int]]]:
    """Reference-style id lists (-1 runs for images) and images per sample: one image; two images + a batch;
    text only."""
    g = torch.Generator().manual_seed(7)

    def words(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    one = [1, *words(6), *[-1] * V, *words(9)]
    two = [1, *words(5), *[-1] * V, *words(3), *[-1] * V, *words(7)]
    other = [1, *words(4), *[-1] * V, *words(2)]
    text = [1, *words(17)]
    return {
        "one-image": ([one], [1]),
        "two-images-and-a-batch": ([two, other, text], [2, 1, 0]),
        "text-only": ([text], [0]),
    }


@pytest.mark.parametrize("case", ["one-image", "two-images-and-a-batch", "text-only"])
def test_logits_equal_the_reference_forward(converted, case):
    family, cfg, state, _, owl_dir = converted
    rows, counts = _batches(_vocab(family))[case]
    width = max(map(len, rows))
    ids = torch.tensor([r + [2] * (width - len(r)) for r in rows])  # right padding, as the reference
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    torch.manual_seed(11)
    pixels = torch.randn(sum(counts), 3, 28, 28) if sum(counts) else None
    expected = reference_logits(cfg, state, ids, mask, pixels, counts)
    model = load_model(owl_dir).eval()
    owl_ids = ids.masked_fill(ids < 0, IMAGE_PLACEHOLDER_ID)
    with torch.no_grad():
        got = model(owl_ids, mask, pixels, torch.tensor(counts)).logits
    valid = mask.bool()
    assert expected[valid].abs().max() > 0.5  # not a vacuous comparison of near-zero logits
    assert (got[valid] - expected[valid]).abs().max().item() <= 1e-5


def test_bloom_visual_tokens_bypass_the_embedding_norm_also_while_decoding(converted):
    """Greedy generation from the converted model equals an argmax loop over the reference forward (no KV cache):
    the prompt's visual tokens skip BLOOM's embedding LayerNorm, every decoded token goes through it."""
    family, cfg, state, _, owl_dir = converted
    rows, counts = _batches(_vocab(family))["one-image"]
    torch.manual_seed(5)
    pixels = torch.randn(1, 3, 28, 28)
    model = load_model(owl_dir).eval()
    ids = list(rows[0])
    for _ in range(4):
        t = torch.tensor([ids])
        logits = reference_logits(cfg, state, t, torch.ones_like(t), pixels, counts)
        ids.append(int(logits[0, -1].argmax()))
    expected = ids[len(rows[0]) :]
    owl_ids = torch.tensor([rows[0]]).masked_fill(torch.tensor([rows[0]]) < 0, IMAGE_PLACEHOLDER_ID)
    with torch.no_grad():
        embeds = model.embed(owl_ids, pixels, torch.tensor(counts))
        out = model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(owl_ids),
            max_new_tokens=4,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert out[0].tolist() == expected
    if family == "bloom":  # and the bypass matters: with the visual tokens through the norm, the logits move
        from owl.config import OwlConfig
        from owl.models import build_model
        from owl.models.checkpoint import load_state

        config = OwlConfig.load(owl_dir / "config.json")
        config.llm.normalize_visual_embeds = True
        through, _, _ = build_model(config)
        through.load_state_dict(load_state(owl_dir), strict=False)
        through.llm.tie_weights()
        with torch.no_grad():
            a = model(owl_ids, pixel_values=pixels, image_counts=torch.tensor(counts)).logits
            b = through.eval()(owl_ids, pixel_values=pixels, image_counts=torch.tensor(counts)).logits
        assert (a - b).abs().max() > 1e-2


def test_generate_runs_on_the_converted_model_with_its_processor(converted):
    _, _, _, _, owl_dir = converted
    from owl.conversation import Message, Sample
    from owl.processing import OwlProcessor
    from tests.helpers import random_image

    model, proc = load_model(owl_dir).eval(), OwlProcessor.from_pretrained(owl_dir)
    img = random_image(seed=1)
    samples = [
        Sample([Message("user", "<image>\nWhat is in the picture?")], [img]),
        Sample([Message("user", "Why is this meme funny?")], []),
    ]
    options = GenerationOptions(max_new_tokens=3, do_sample=False)
    batched = generate(model, proc, samples, options)
    one_by_one = [generate(model, proc, [s], options)[0] for s in samples]
    assert [c.text for c in batched] == [c.text for c in one_by_one]


# ----------------------------------------------------------------------------- bad input


def _write(tmp_path, family="llama", mutate=None, spm=None):
    cfg = reference_config(family, _vocab(family))
    state = random_state(cfg, seed=0, old_rotary=False)
    if mutate:
        mutate(cfg, state)
    files = {"tokenizer.model": spm.read_bytes()} if spm else _tokenizer_files("bloom", None, tmp_path)
    return write_reference_dir(tmp_path / "ref", cfg, state, "bin", files)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda _c, s: s.update({"vision_model.extra.weight": torch.zeros(2)}), "not part of mPLUG-Owl"),
        (lambda _c, s: s.pop("abstractor.vit_eos"), "missing: abstractor.vit_eos"),
        (lambda _c, s: s.update({"query_tokens": torch.zeros(1, 7, 32)}), "wrong shape"),
        (lambda c, _s: c.update({"model_type": "llava"}), "not 'mplug-owl'"),
    ],
    ids=["unknown", "missing", "shape", "not-mplug-owl"],
)
def test_bad_checkpoints_are_one_clear_error_and_write_nothing(tmp_path, capsys, mutate, words, spm_model):  # noqa: F811
    src = _write(tmp_path, mutate=mutate, spm=spm_model)
    assert main(["convert", "from-mplug-owl", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("owl: error:") and words in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_to_mplug_owl_refuses_models_without_a_reference_layout(tmp_path, capsys):
    assert main(["new", "--preset", "tiny", "--out", str(tmp_path / "m"), "--tokenizer", "byte"]) == 0
    assert main(["convert", "to-mplug-owl", str(tmp_path / "m"), str(tmp_path / "r")]) == 0  # tiny: CLIP, fits
    assert main(["new", "--preset", "tiny", "--out", str(tmp_path / "s"), "--set", "vision.backbone=siglip"]) == 0
    assert main(["convert", "to-mplug-owl", str(tmp_path / "s"), str(tmp_path / "r2")]) == 2
    assert "only has a CLIP ViT" in capsys.readouterr().err
    assert main(["new", "--preset", "tiny", "--out", str(tmp_path / "n"), "--set", "abstractor.output_norm=true"]) == 0
    assert main(["convert", "to-mplug-owl", str(tmp_path / "n"), str(tmp_path / "r3")]) == 2
    assert "no output norm" in capsys.readouterr().err
    assert main(["new", "--preset", "tiny", "--out", str(tmp_path / "l"), "--set", "abstractor.locality=2"]) == 0
    assert main(["convert", "to-mplug-owl", str(tmp_path / "l"), str(tmp_path / "r4")]) == 2
    assert "no locality prior" in capsys.readouterr().err
    assert main(["new", "--preset", "tiny", "--out", str(tmp_path / "c"), "--set", "abstractor.competition=true"]) == 0
    assert main(["convert", "to-mplug-owl", str(tmp_path / "c"), str(tmp_path / "r5")]) == 2
    assert "compete for cells" in capsys.readouterr().err
    assert main(["convert", "to-mplug-owl", str(tmp_path / "m"), str(tmp_path / "r")]) == 2  # exists: --force
    assert "--force" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        from owl.convert.mplug_owl import from_mplug_owl

        from_mplug_owl(tmp_path / "m", tmp_path / "x")  # an owl directory is not a reference checkpoint


def test_the_whole_path_equals_the_reference_processor_and_forward(converted, tmp_path):
    """Converted LLaMA model + its own processor, from conversation messages and image files, against the
    reference processor (tokenise whole chunks, resize before RGB) and the reference forward: ids, pixels and
    logits, for a one-image prompt, a two-image prompt batched with a one-image one, and a text-only prompt."""
    family, cfg, state, src, owl_dir = converted
    if family != "llama":
        pytest.skip("the SentencePiece tokenizer is LLaMA's")
    import sentencepiece

    from owl.config import MPLUG_SYSTEM_PROMPT as SYS
    from owl.conversation import Message, Sample
    from owl.processing import OwlProcessor
    from tests.helpers import random_image
    from tests.test_processing_reference import ref_pixels_generation, ref_prompt_batch

    sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    model, proc = load_model(owl_dir).eval(), OwlProcessor.from_pretrained(owl_dir)
    images = []
    for i, (size, mode) in enumerate([((40, 30), "RGBA"), ((33, 50), "P"), ((28, 28), "L")]):
        img = random_image(i, size).convert(mode)
        images.append(tmp_path / f"{i}.png")
        img.save(images[-1])
    q1, q2, q3 = "What is in the picture?", "Compare the two images.", "Why is this meme funny?"
    cases = {
        "one": [(Sample([Message("user", f"<image>\n{q1}")], [images[0]]), f"Human: <image>\nHuman: {q1}\nAI: ")],
        "two+batch": [
            (
                Sample([Message("user", f"<image>\n<image>\n{q2}")], [images[1], images[2]]),
                f"Human: <image>\nHuman: <image>\nHuman: {q2}\nAI: ",
            ),
            (Sample([Message("user", f"<image>\n{q1}")], [images[2]]), f"Human: <image>\nHuman: {q1}\nAI: "),
        ],
        "text": [(Sample([Message("user", q3)], []), f"Human: {q3}\nAI: ")],
    }
    from PIL import Image

    for name, pairs in cases.items():
        ref_ids, ref_mask = ref_prompt_batch(sp, [f"{SYS}\n{text}" for _, text in pairs])
        srcs = [p for s, _ in pairs for p in s.images]
        ref_pix = torch.stack([ref_pixels_generation(Image.open(p)) for p in srcs]) if srcs else None
        counts = [len(s.images) for s, _ in pairs]
        expected = reference_logits(cfg, state, ref_ids, ref_mask, ref_pix, counts)
        batch = proc([s for s, _ in pairs], for_generation=True)  # left padded
        for b in range(len(pairs)):
            n = int(ref_mask[b].sum())
            mine = batch["input_ids"][b][batch["attention_mask"][b].bool()]
            assert mine.tolist() == ref_ids[b, :n].masked_fill(ref_ids[b, :n] < 0, IMAGE_PLACEHOLDER_ID).tolist(), name
        if ref_pix is not None:
            assert (batch["pixel_values"] - ref_pix).abs().max() < 1e-5, name
        with torch.no_grad():
            got = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_counts"])
        for b in range(len(pairs)):  # the same tokens: left padding in owl, right padding in the reference
            n = int(ref_mask[b].sum())
            mine = got.logits[b][batch["attention_mask"][b].bool()]
            assert (mine - expected[b, :n]).abs().max().item() <= 1e-5, name
