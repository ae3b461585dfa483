"""Hand a trained owl model to other tools: fold in LoRA, export the LLM alone, export the visual front end.

* :func:`merge_lora`: a directory with an unmerged adapter (``adapter/``) -> a plain owl model directory, LoRA
  folded into the base weights (one file set to ship, no peft needed to load it, no adapter overhead per token).
* :func:`export_llm`: the LLM alone as a plain transformers directory, loadable with ``AutoModelForCausalLM`` /
  ``AutoTokenizer`` and no owl code (text-only serving, quantisation, other runtimes).
* :func:`export_vision_abstractor`: vision tower + abstractor weights and a small JSON, so another LLM runtime
  can get owl's visual tokens (``(N, Q+1, d_llm)`` embeddings to splice into its ``inputs_embeds``);
  :func:`load_vision_abstractor` rebuilds them.

Every output is written atomically and never replaces an existing directory unless asked (``force``). Weights
keep the dtype they were stored in (LoRA is merged in fp32 first).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from owl.atomic import atomic_dir
from owl.config import AbstractorConfig, VisionConfig
from owl.errors import CheckpointError, CheckpointNotFound, InputError
from owl.models.abstractor import VisualAbstractor
from owl.models.checkpoint import (
    ADAPTER_DIR,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    base_state_dict,
    check_model_dir,
    load_model,
    load_tokenizer,
    save_pretrained,
)
from owl.models.owl import OwlModel
from owl.models.vision import build_vision

PARTS = ("llm", "vision-abstractor")
VISUAL_WEIGHTS = "vision_abstractor.safetensors"
VISUAL_CONFIG = "owl_visual.json"
VISUAL_FORMAT = "owl-vision-abstractor"
# Default answer length written into an exported LLM without a generation_config.json of its own: owl's default,
# instead of transformers' 20 tokens in total.
DEFAULT_MAX_NEW_TOKENS = 256

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


# ----------------------------------------------------------------------------- helpers


def _prepare(src: str | Path, out: str | Path, force: bool) -> tuple[Path, Path]:
    """The source model directory and the output path, refusing to clobber anything by accident."""
    model_dir = check_model_dir(src)
    out = Path(out)
    if model_dir.resolve().is_relative_to(out.resolve()):  # replacing it would delete the model being read
        raise InputError(f"the output {out} is (or contains) the model directory {model_dir}; choose another one")
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    return model_dir, out


def _stored_dtypes(model_dir: Path) -> dict[str, torch.dtype]:
    """The floating dtype each part (vision, abstractor, llm) was saved in, read from the safetensors headers."""
    if (model_dir / INDEX_NAME).exists():
        files = sorted(set(json.loads((model_dir / INDEX_NAME).read_text())["weight_map"].values()))
    else:
        files = [WEIGHTS_NAME]
    found: dict[str, torch.dtype] = {}
    for name in files:
        with safe_open(str(model_dir / name), framework="pt") as f:
            for key in f.keys():
                part = key.partition(".")[0]
                dtype = _DTYPES.get(f.get_slice(key).get_dtype())
                if part not in found and dtype is not None:
                    found[part] = dtype
    return found


def _load_merged(model_dir: Path) -> OwlModel:
    """The model with any LLM LoRA adapter folded in, each part cast back to the dtype it was stored in."""
    model = load_model(model_dir).eval()
    if hasattr(model.llm, "merge_and_unload"):
        model.llm = model.llm.merge_and_unload()  # in fp32: load_model builds fp32 parts
    for part, dtype in _stored_dtypes(model_dir).items():
        module = {"vision": model.vision, "abstractor": model.abstractor, "llm": model.llm}.get(part)
        if module is not None and dtype != torch.float32:
            module.to(dtype)
    return model


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers' progress bars off for the block, restored after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _copy_side_files(model_dir: Path, dest: Path, skip: set[str]) -> None:
    """Copy the model directory's other top-level files verbatim (tokenizer, generation_config.json, lineage)."""
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and f.name not in skip and not f.name.endswith(".safetensors"):
            shutil.copy2(f, dest / f.name)


# ----------------------------------------------------------------------------- merge-lora


def merge_lora(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write ``out``: the model of ``src`` with its LoRA adapter folded into the base weights, no ``adapter/``.

    The config, tokenizer, generation_config.json and any other side files are copied unchanged.
    """
    model_dir, out = _prepare(src, out, force)
    if not (model_dir / ADAPTER_DIR).is_dir():
        raise CheckpointError(f"{model_dir} has no LoRA adapter ({ADAPTER_DIR}/); there is nothing to merge")
    model = _load_merged(model_dir)
    with atomic_dir(out) as tmp:
        save_pretrained(model, tmp)  # itself atomic: replaces the empty staging directory
        _copy_side_files(model_dir, tmp, skip={CONFIG_NAME, INDEX_NAME})
    return out


# ----------------------------------------------------------------------------- export --part llm


def export_llm(src: str | Path, out: str | Path, force: bool = False) -> list[str]:
    """Write ``out``: the LLM alone as a transformers directory (LoRA merged first). Returns the file names.

    ``generation_config.json`` is the owl model's own if it has one; otherwise the LLM's, with owl's default
    answer length. Without tokenizer files in ``src`` the directory has none either (the caller says so).
    """
    model_dir, out = _prepare(src, out, force)
    llm = _load_merged(model_dir).causal_lm
    tokenizer = load_tokenizer(model_dir) if (model_dir / "tokenizer_config.json").exists() else None
    with atomic_dir(out) as tmp:
        if not (model_dir / GENERATION_CONFIG_NAME).exists():
            gc = llm.generation_config
            if gc.max_new_tokens is None and gc.max_length is None:
                gc.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        with _quiet_progress():  # a one-shard progress bar is noise in a command's output
            llm.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if (model_dir / GENERATION_CONFIG_NAME).exists():
            shutil.copy2(model_dir / GENERATION_CONFIG_NAME, tmp / GENERATION_CONFIG_NAME)
        names = sorted(p.name for p in tmp.iterdir())
    return names


# ----------------------------------------------------------------------------- export --part vision-abstractor


def visual_config(model: OwlModel) -> dict:
    """What a consumer needs to rebuild and feed the visual front end (written as ``owl_visual.json``)."""
    cfg = model.config
    return {
        "format": VISUAL_FORMAT,
        "version": 1,
        "weights": VISUAL_WEIGHTS,
        "vision": asdict(cfg.vision),
        "abstractor": asdict(cfg.abstractor),
        "vision_hidden_size": int(model.vision.hidden_size),
        "num_visual_tokens": cfg.num_visual_tokens,
        "llm_hidden_size": cfg.llm.hidden_size,
        "image": {
            "size": cfg.vision.image_size,
            "mean": list(cfg.vision.image_mean),
            "std": list(cfg.vision.image_std),
            "resize": "bicubic, to size x size (no crop), RGB in [0, 1], then (x - mean) / std",
        },
    }


def export_vision_abstractor(src: str | Path, out: str | Path, force: bool = False) -> list[str]:
    """Write ``out``: vision tower + abstractor weights (owl's key names), ``owl_visual.json`` and a README.md."""
    model_dir, out = _prepare(src, out, force)
    model = _load_merged(model_dir)
    state = {k: v for k, v in base_state_dict(model).items() if k.startswith(("vision.", "abstractor."))}
    meta = visual_config(model)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / VISUAL_WEIGHTS), metadata={"format": "pt", "owl": VISUAL_FORMAT})
        (tmp / VISUAL_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(_visual_readme(meta, model_dir))
        names = sorted(p.name for p in tmp.iterdir())
    return names


def load_vision_abstractor(path: str | Path) -> tuple[nn.Module, VisualAbstractor, dict]:
    """Rebuild ``(vision tower, abstractor, config dict)`` from an ``owl export --part vision-abstractor`` directory.

    ``abstractor(vision(pixels))`` with pixels ``(N, 3, S, S)`` gives the ``(N, Q+1, d_llm)`` visual tokens.
    """
    path = Path(path)
    if not (path / VISUAL_CONFIG).exists():
        raise CheckpointNotFound(f"{path} is not a vision-abstractor export (no {VISUAL_CONFIG})")
    meta = json.loads((path / VISUAL_CONFIG).read_text())
    vision = build_vision(VisionConfig(**meta["vision"]))
    abstractor = VisualAbstractor(AbstractorConfig(**meta["abstractor"]), vision.hidden_size, meta["llm_hidden_size"])
    state = load_file(str(path / meta["weights"]))
    for prefix, module in (("vision.", vision), ("abstractor.", abstractor)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
        dtype = next((t.dtype for t in part.values() if t.is_floating_point()), torch.float32)
        module.to(dtype).eval()
    return vision, abstractor, meta


def _visual_readme(meta: dict, model_dir: Path) -> str:
    v, img = meta["vision"], meta["image"]
    q = meta["num_visual_tokens"]
    return f"""# owl visual front end (vision tower + visual abstractor)

Exported from `{model_dir}` by `owl export --part vision-abstractor`.

- `{VISUAL_WEIGHTS}`: the weights under owl's names, `vision.*` (the {v["backbone"]} tower) and `abstractor.*`.
- `{VISUAL_CONFIG}`: owl's `vision` and `abstractor` config sections, `num_visual_tokens` ({q}),
  `llm_hidden_size` ({meta["llm_hidden_size"]}) and the image preprocessing.

Input: `(N, 3, {img["size"]}, {img["size"]})` pixels: RGB resized (bicubic, no crop) to {img["size"]}x{img["size"]},
scaled to [0, 1], normalised with mean {img["mean"]} and std {img["std"]}.
Output: `(N, {q}, {meta["llm_hidden_size"]})` embeddings: {q - 1} query tokens plus one end-of-image vector per image.

## Load and run (with owl installed)

```python
import torch
from owl.export import load_vision_abstractor
from owl.images import ImageTransform

vision, abstractor, meta = load_vision_abstractor("path/to/this/directory")
img = meta["image"]
to_pixels = ImageTransform(img["size"], img["mean"], img["std"])
pixels = torch.stack([to_pixels("photo.jpg")])          # (N, 3, S, S)
with torch.no_grad():
    visual_tokens = abstractor(vision(pixels))         # (N, {q}, {meta["llm_hidden_size"]})
```

`load_vision_abstractor` is short; by hand it is:

```python
import json
from safetensors.torch import load_file
from owl.config import AbstractorConfig, VisionConfig
from owl.models.abstractor import VisualAbstractor
from owl.models.vision import build_vision

meta = json.load(open("{VISUAL_CONFIG}"))
vision = build_vision(VisionConfig(**meta["vision"]))
abstractor = VisualAbstractor(AbstractorConfig(**meta["abstractor"]), vision.hidden_size, meta["llm_hidden_size"])
state = load_file("{VISUAL_WEIGHTS}")
vision.load_state_dict({{k[len("vision."):]: t for k, t in state.items() if k.startswith("vision.")}})
abstractor.load_state_dict({{k[len("abstractor."):]: t for k, t in state.items() if k.startswith("abstractor.")}})
```

## Serving the visual tokens with another LLM runtime

The LLM (exported with `owl export --part llm`) sees each image as {q} consecutive positions of its input
embeddings. Build the prompt exactly as owl does (the model's template; each `<image>` becomes {q} placeholder
tokens), embed the text tokens with the LLM's embedding table, overwrite the placeholder positions with the
visual tokens (images in prompt order), and pass the result as `inputs_embeds` (for runtimes that accept
embeddings: transformers, vLLM's `prompt_embeds`, llama.cpp's embedding batches). The visual tokens are already
in the LLM's width and need no projection. Cast them to the LLM's dtype.
"""
