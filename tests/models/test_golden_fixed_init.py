"""Golden numbers of the tiny model's forward pass from a fixed initialisation (no global RNG anywhere).

Like torchtune's "fixed init" tests: every parameter is set from an integer hash of its flat index and its name
(numpy uint64 arithmetic, exact on every platform), the input ids are literals and the image is arithmetic, and the
model runs in eval mode. The goldens therefore do not move with a torch upgrade or a change of the random init;
they move when the computation changes (the splice, the abstractor, the tower's post-norm, the loss, ...).

If a deliberate change of the computation moves them, regenerate with::

    .venv/bin/python -m tests.models.test_golden_fixed_init

and paste the printed dict over ``GOLDEN``. (They were produced that way, with torch 2.13.0+cpu and
transformers 5.24.0, fp32 on CPU.)
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from owl.config import preset
from owl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from owl.models import build_model

MASK32 = np.uint64(0xFFFFFFFF)


def _hash_uniform(n: int, salt: int) -> np.ndarray:
    """``n`` numbers in [-1, 1) from a 32-bit integer hash (lowbias32) of ``index + salt``; no RNG involved."""
    x = (np.arange(n, dtype=np.uint64) + np.uint64(salt)) & MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & MASK32
    x ^= x >> np.uint64(16)
    return x.astype(np.float64) / 2.0**31 - 1.0


@torch.no_grad()
def fixed_init(model: torch.nn.Module) -> int:
    """Set every parameter deterministically; returns how many tensors were set.

    Matrices (and the 3-D query / end-of-image vectors, the patch convolution): uniform with amplitude
    ``1/sqrt(fan_in)``; norm weights ``1 + 0.1 u``; biases and other vectors ``0.05 u``. Each tensor's salt is the
    CRC-32 of its name, so tensors differ and the values do not depend on the order of the parameters.
    """
    n = 0
    for name, p in model.named_parameters():
        u = torch.from_numpy(_hash_uniform(p.numel(), zlib.crc32(name.encode()))).reshape(p.shape)
        if p.dim() >= 2:
            v = u / (p.numel() // p.shape[0]) ** 0.5
        elif name.endswith(".weight"):  # LayerNorm / RMSNorm
            v = 1.0 + 0.1 * u
        else:  # biases, CLIP's class embedding
            v = 0.05 * u
        p.copy_(v.to(p.dtype))
        n += 1
    return n


def fixed_batch(image_size: int) -> dict[str, torch.Tensor]:
    """Two samples: one with an image (ids, 5 visual positions, answer), one text-only and right-padded."""
    v = IMAGE_PLACEHOLDER_ID
    ids0 = [1, 50, 60, 70, v, v, v, v, v, 13, 80, 91, 102, 113, 124, 135, 146, 2]
    lab0 = [IGNORE_INDEX] * 10 + ids0[10:]
    ids1 = [1, 40, 77, 120, 13, 200, 210, 220, 2]
    lab1 = [IGNORE_INDEX] * 5 + ids1[5:]
    width = len(ids0)
    pad = width - len(ids1)
    y, x = torch.meshgrid(
        torch.arange(image_size, dtype=torch.float64), torch.arange(image_size, dtype=torch.float64), indexing="ij"
    )
    pixels = torch.stack([torch.sin(0.37 * x + 0.23 * y + 1.1 * c) * (1.0 + 0.25 * c) for c in range(3)])
    return {
        "input_ids": torch.tensor([ids0, ids1 + [0] * pad]),
        "attention_mask": torch.tensor([[1] * width, [1] * len(ids1) + [0] * pad]),
        "labels": torch.tensor([lab0, lab1 + [IGNORE_INDEX] * pad]),
        "pixel_values": pixels.unsqueeze(0).float(),
        "image_counts": torch.tensor([1, 0]),
    }


def build(seed: int):
    cfg = preset("tiny")
    torch.manual_seed(seed)  # only to show that it does not matter
    model, cfg, _ = build_model(cfg)
    fixed_init(model)
    return model.eval(), cfg


@torch.no_grad()
def measure(model, cfg) -> dict[str, float]:
    batch = fixed_batch(cfg.vision.image_size)
    out = model(**batch)
    features = model.vision(batch["pixel_values"])
    visual = model.encode_images(batch["pixel_values"])
    logits = out.logits  # (B, T-1, V): the positions that predict a next token
    valid = batch["attention_mask"][:, 1:].bool()
    return {
        "loss": out.loss.item(),
        "num_target_tokens": float(out.num_target_tokens),
        "sample0_loss_sum": out.sample_loss_sum[0].item(),
        "sample1_loss_sum": out.sample_loss_sum[1].item(),
        "logits_sum": logits[valid].sum().item(),
        "logits_abs_mean": logits[valid].abs().mean().item(),
        "logit_0_9_3": logits[0, 9, 3].item(),  # the first position after the image
        "logit_0_16_2": logits[0, 16, 2].item(),  # predicting EOS
        "logit_1_4_203": logits[1, 4, 203].item(),
        "vision_mean": features.mean().item(),
        "vision_std": features.std().item(),
        "abstractor_mean": visual.mean().item(),
        "abstractor_std": visual.std().item(),
        "abstractor_0_2_7": visual[0, 2, 7].item(),
    }


# Produced by `python -m tests.models.test_golden_fixed_init` (see the module docstring).
GOLDEN: dict[str, float] = {
    "loss": 5.92320442199707,
    "num_target_tokens": 12.0,
    "sample0_loss_sum": 46.53178405761719,
    "sample1_loss_sum": 24.546669006347656,
    "logits_sum": -66.20091247558594,
    "logits_abs_mean": 0.452148973941803,
    "logit_0_9_3": -0.025869758799672127,
    "logit_0_16_2": -0.0843660905957222,
    "logit_1_4_203": -0.7006874084472656,
    "vision_mean": 0.0025480822660028934,
    "vision_std": 1.0304220914840698,
    "abstractor_mean": -0.07462828606367111,
    "abstractor_std": 0.5899507999420166,
    "abstractor_0_2_7": 1.185642123222351,
}


def test_fixed_init_covers_every_parameter_and_ignores_the_seed():
    a, cfg = build(seed=0)
    b, _ = build(seed=123)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    # Every tensor, buffers included, is the same whatever the global RNG did (so no parameter was missed).
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    assert measure(a, cfg) == measure(b, cfg)  # bit for bit


def test_forward_matches_the_goldens():
    model, cfg = build(seed=0)
    got = measure(model, cfg)
    assert got.keys() == GOLDEN.keys()
    for k, want in GOLDEN.items():
        assert abs(got[k] - want) <= 1e-4 * abs(want) + 1e-6, f"{k}: got {got[k]!r}, golden {want!r}"


if __name__ == "__main__":
    import pprint

    pprint.pprint(measure(*build(seed=0)), sort_dicts=False)
