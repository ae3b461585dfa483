"""The image-gain probe: exact where it must be (identical images: gain 0), and it leaves training untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from owl.config import preset
from owl.conversation import Message, Sample
from owl.data import SourceSpec
from owl.models import build_model
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from owl.train.probe import ImageGainProbe
from tests.helpers import random_image, run_cli

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "configs" / "tiny" / "data"
STAGE1 = ROOT / "configs" / "tiny" / "stage1.yaml"


def _model():
    torch.manual_seed(0)
    model, config, _ = build_model(preset("tiny"))
    return model, OwlProcessor.from_config(config, byte_tokenizer())


def _probe(proc, images):
    items = [
        proc.encode(Sample([Message("user", "<image>\nWhat is it?"), Message("assistant", f"Thing {i}.")], [im]))
        for i, im in enumerate(images)
    ]
    return ImageGainProbe(items, held_out=True)


def test_identical_images_give_exactly_zero_gain_and_distinct_ones_do_not():
    model, proc = _model()
    same = _probe(proc, [random_image(0)] * 4).measure(model, proc, torch.device("cpu"))
    assert same["image_gain"] == 0.0 and same["probe_loss"] == same["probe_loss_shuffled"]
    with torch.no_grad():  # at the reference init the visual tokens barely depend on the image: make them
        for p in model.abstractor.parameters():
            p.mul_(20)
    model.train()
    differ = _probe(proc, [random_image(i) for i in range(4)]).measure(model, proc, torch.device("cpu"))
    assert differ["image_gain"] != 0.0 and abs(differ["image_gain"]) < 1.0
    assert not model.training  # measured in eval mode (the loop restores the train modes)


def test_probe_from_sources_takes_only_samples_with_images():
    _, proc = _model()
    text = SourceSpec(name="text", format="mplug", path=str(DATA / "text.jsonl"))
    assert ImageGainProbe.from_sources([text], proc, 8, held_out=True) is None
    inst = SourceSpec(name="inst", format="mplug", path=str(DATA / "instruct.jsonl"))
    probe = ImageGainProbe.from_sources([text, inst], proc, 8, held_out=True)
    assert len(probe.items) == 8 and all(e.num_images == 1 for e in probe.items)


def _losses(run_dir):
    return [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_training_with_the_probe_is_bit_identical_and_logs_the_gain(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    common = [
        "train",
        STAGE1,
        "train.max_steps=6",
        "checkpoint.every=0",
        "train.progress=false",
        "train.tensorboard=false",
        "train.log_every=1",
    ]
    probe = json.dumps([{"name": "held", "format": "mplug", "path": str(DATA / "instruct.jsonl")}])
    r = run_cli(
        *common,
        "output_dir=with",
        "train.image_gain_every=2",
        "train.image_gain_samples=6",
        f"data.probe={probe}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "image gain every 2 steps on 6 held-out samples" in r.stdout and " image_gain " in r.stdout
    r = run_cli(*common, "output_dir=without", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    with_, without = _losses(tmp_path / "with"), _losses(tmp_path / "without")
    assert [x["step"] for x in with_] == [x["step"] for x in without] == [1, 2, 3, 4, 5, 6]
    gains = [x for x in with_ if "image_gain" in x]
    assert [x["step"] for x in gains] == [2, 4, 6]
    for g in gains:
        assert g["image_gain"] == pytest.approx(g["probe_loss_shuffled"] - g["probe_loss"], abs=1e-12)
    assert (tmp_path / "with" / "image_gain.png").stat().st_size > 5000
    assert not (tmp_path / "without" / "image_gain.png").exists()
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "with" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "without" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the probe does not disturb training
    assert [x["loss"] for x in with_] == [x["loss"] for x in without]
