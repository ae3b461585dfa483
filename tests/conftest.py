"""Shared fixtures: tiny random models and generated images (no network, seconds to build)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import random_image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OWL_CPU_BF16", "0")  # precision auto -> fp32 everywhere: numeric comparisons stay machine-free
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny():
    """(model, processor, config) for the tiny preset, fixed seed, eval mode."""
    from owl.config import preset
    from owl.models import build_model
    from owl.processing import OwlProcessor
    from owl.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    model, config, _ = build_model(preset("tiny"))
    model.eval()
    return model, OwlProcessor.from_config(config, byte_tokenizer()), config


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        random_image(i).save(p)
        paths.append(str(p))
    return paths
