"""Everything the loop needs before step 0: checks of the data on disk, the model and processor, lineage.

Kept apart from the loop so the loop reads as a loop.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from owl.config import OwlConfig, preset
from owl.configtools import deep_merge
from owl.data.source import resolve_files
from owl.errors import ConfigError, ConfigNotFound, DataFileNotFound
from owl.models.builders import align_special_tokens, build_model
from owl.models.checkpoint import ADAPTER_DIR, check_model_dir, load_model, load_tokenizer
from owl.models.owl import OwlModel
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from owl.train.config import TrainConfig


def preflight(cfg: TrainConfig) -> None:
    """Check what can be checked before any model is built or anything is written: data files, the starting model.

    A run that would fail on a missing file fails here, in milliseconds, leaving no output directory behind.
    """
    for src in [*cfg.data.sources, *cfg.data.probe]:
        resolve_files(src)  # raises DataFileNotFound naming the source and the path
        if src.image_root and not Path(src.image_root).is_dir():
            raise DataFileNotFound(f"data.sources[{src.name}].image_root={src.image_root}: no such directory")
    if cfg.init_from:
        check_model_dir(cfg.init_from)


def build_for_training(cfg: TrainConfig) -> tuple[OwlModel, OwlProcessor]:
    """The starting model and its processor: from ``init_from`` (a previous stage) or from ``model``.

    ``data.max_length`` truncates training samples only: the processor gets it, the model's config (whose
    ``processor.max_length`` is the saved model's inference limit) does not.
    """
    if cfg.init_from:
        path = check_model_dir(cfg.init_from)
        model = load_model(path)
        if (path / ADAPTER_DIR).is_dir():  # continue from a LoRA fine-tune: fold it in first
            model.llm = model.llm.merge_and_unload()
        tokenizer = load_tokenizer(path) if cfg.model.tokenizer is None else _tokenizer(cfg.model.tokenizer)
    else:
        base = preset(cfg.model.preset) if cfg.model.preset else OwlConfig()
        if cfg.model.overrides:
            base = OwlConfig.from_dict(deep_merge(base.to_dict(), cfg.model.overrides))
        model, _, tokenizer = build_model(base, vision_from=cfg.model.vision_from, llm_from=cfg.model.llm_from)
        if cfg.model.tokenizer is not None:
            tokenizer = align_special_tokens(model, _tokenizer(cfg.model.tokenizer))  # pad/bos/eos agree, recorded
        if tokenizer is None:
            raise ConfigError(
                "the model has no tokenizer: set model.llm_from (the LLM's own), model.tokenizer "
                "(a tokenizer directory, or 'byte'), or start from init_from"
            )
    return model, OwlProcessor.from_config(
        model.config, tokenizer, augment=cfg.data.augment, max_length=cfg.data.max_length
    )


def _tokenizer(spec: str) -> PreTrainedTokenizerBase:
    if spec == "byte":
        return byte_tokenizer()
    if not Path(spec).is_dir():
        raise ConfigNotFound(f"model.tokenizer={spec}: no such directory (give a tokenizer directory or 'byte')")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec)


def _fingerprint(path: str) -> dict[str, Any]:
    """sha256 of files up to 256 MB; size + mtime beyond (hashing a 100 GB shard set would take hours)."""
    st = os.stat(path)
    out: dict[str, Any] = {"path": os.path.abspath(path), "bytes": st.st_size}
    if st.st_size <= 256 * 2**20:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        out["sha256"] = h.hexdigest()
    else:
        out["mtime"] = int(st.st_mtime)
    return out


def code_version() -> dict[str, str]:
    import owl

    version = {"owl": owl.__version__}
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def lineage(cfg: TrainConfig, steps: int, final_loss: float | None) -> dict[str, Any]:
    """Where a trained model came from: parent model, config, data fingerprints, code version."""
    parent = None
    if cfg.init_from:
        p = check_model_dir(cfg.init_from)
        parent_lineage = p / "lineage.json"
        parent = {
            "path": str(p.resolve()),
            "lineage": json.loads(parent_lineage.read_text()) if parent_lineage.exists() else None,
        }
    data = []
    for s in cfg.data.sources:
        files, _ = resolve_files(s)
        data.append(
            {
                "name": s.name,
                "format": s.format,
                "weight": s.weight,
                "files": [_fingerprint(f) for f in files[:1000]],
                "n_files": len(files),
            }
        )
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "stage": cfg.stage,
        "description": cfg.description,
        "steps": steps,
        "final_loss": final_loss,
        "parent": parent,
        "data": data,
        "code": code_version(),
    }
