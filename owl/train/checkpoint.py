"""Training checkpoints: everything needed to continue a run exactly, written atomically.

``output_dir/checkpoints/step-000120/`` holds::

    trainable.safetensors   the trainable parameters (LoRA weights included) under their model names
    optimizer.pt            AdamW state (tensors and numbers only; loaded with weights_only=True)
    rng.safetensors         torch (and CUDA) RNG states
    state.json              step, scheduler, data position (mixture RNG, per-source epoch+offset), skip counts,
                            numpy and python RNG states
    train_config.yaml       the resolved config of the run
    COMPLETE                written last; a directory without it is ignored

A checkpoint directory appears under its final name only once complete
(temporary directory + rename), so a run killed at any moment leaves either
the previous checkpoints or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG states as (tensors, JSON-able values): safe to store without pickle."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    plain = {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": [version, list(internal), gauss_next]}
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(output_dir: str | Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict[str, Any], config_yaml: str, keep: int) -> Path:
    root = Path(output_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    rng_tensors, rng_plain = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state | {"rng": rng_plain}))
    (tmp / "train_config.yaml").write_text(config_yaml)
    (tmp / "COMPLETE").write_text("")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_RE.match(p.name)) and (p / "COMPLETE").exists()]
    return [p for _, p in sorted(found)]


def find_resume(output_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: ``auto`` = newest complete one (or None), ``none``, or an explicit path."""
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "COMPLETE").exists():
        raise FileNotFoundError(f"checkpoint.resume={resume}: not a complete checkpoint directory")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything saved by :func:`save_checkpoint`, loaded without executing pickled code."""
    return {
        "trainable": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "rng": load_file(str(path / "rng.safetensors")),
        "state": json.loads((path / "state.json").read_text()),
    }
