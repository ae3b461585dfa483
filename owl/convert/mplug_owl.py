"""``owl convert from-mplug-owl`` / ``to-mplug-owl``: the released checkpoints in, owl-trained models out.

A released mPLUG-Owl directory (``MAGAer13/mplug-owl-llama-7b`` and its -pt / -ft / BLOOMZ siblings) holds a
``config.json`` of model_type ``mplug-owl``, weights as ``pytorch_model.bin`` or safetensors, single or sharded with
an index, a SentencePiece ``tokenizer.model`` (LLaMA) or a ``tokenizer.json`` (BLOOMZ), and maybe a generation
config. Conversion:

1. reads every tensor's name and shape without loading the weights (safetensors headers; ``.bin`` through
   ``torch.load(mmap=True, weights_only=True)``, which never runs pickled code) and checks them against the owl
   model the config describes: unknown, missing or misshapen tensors are one error listing them, before anything
   is written;
2. converts shard by shard (one input shard in memory at a time, each written out as one owl shard), keeping the
   checkpoint's dtype, so a 7B model converts in a few GB of RAM (``benchmarks/convert_memory.py``);
3. writes the owl config (``processor.compat: mplug-owl``, so tokenisation and image preprocessing follow the
   reference; BLOOM's visual tokens bypass its embedding LayerNorm as in the reference), the tokenizer, the
   generation settings the reference uses (its file, else its built-in ``top_k=3`` sampling to 512 tokens), and
   ``mplug_owl.json`` recording what was dropped so that converting back restores the same tensors.

The output directory appears complete or not at all (:func:`owl.atomic.atomic_dir`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from owl.atomic import atomic_dir
from owl.config import OwlConfig
from owl.convert.mplug_owl_keys import (
    REFERENCE_GENERATION,
    abstractor_ffn_name,
    fuse_qkv_parts,
    is_dropped,
    owl_config_from_reference,
    reference_config_from_owl,
    to_owl,
    to_reference,
)
from owl.errors import CheckpointError, CheckpointNotFound

log = logging.getLogger(__name__)

RECORD_NAME = "mplug_owl.json"
_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ----------------------------------------------------------------------------- reading weights


def weight_files(src: Path) -> list[Path]:
    """The weight shards of a transformers-style directory, in order."""
    for name in _WEIGHT_FILES:
        path = src / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            try:
                index = json.loads(path.read_text())
                files = sorted(set(index["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{path}: not a valid weight index ({e})") from None
            missing = [f for f in files if not (src / f).exists()]
            if missing:
                raise CheckpointNotFound(f"{path} names shards that are not there: {', '.join(missing[:5])}")
            return [src / f for f in files]
        return [path]
    raise CheckpointNotFound(f"no weights in {src} (looked for {', '.join(_WEIGHT_FILES)})")


@contextmanager
def open_shard(path: Path) -> Iterator[dict[str, torch.Tensor] | safe_open]:
    """A shard's tensors by name, loaded lazily: safetensors per tensor, ``.bin`` memory-mapped (never unpickled
    beyond plain tensors: ``weights_only=True``)."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            yield f
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # an old (non-zip) .bin cannot be memory-mapped; it is read whole, still weights-only
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as a weights-only PyTorch file: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__})")
    yield state
    del state


def _names(shard: dict[str, torch.Tensor] | safe_open) -> list[str]:
    return list(shard.keys())


def _get(shard: dict[str, torch.Tensor] | safe_open, name: str) -> torch.Tensor:
    return shard[name] if isinstance(shard, dict) else shard.get_tensor(name)


def _shape(shard: dict[str, torch.Tensor] | safe_open, name: str) -> tuple[int, ...]:
    return tuple(shard[name].shape) if isinstance(shard, dict) else tuple(shard.get_slice(name).get_shape())


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, without reading the weights."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with open_shard(path) as shard:
            for name in _names(shard):
                shapes[name] = _shape(shard, name)
    return shapes


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def _expected_owl_shapes(config: OwlConfig) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """The owl model's tensor shapes for ``config`` (built on the meta device: nothing allocated), and the names
    that may be absent because they are tied to another tensor."""
    from owl.models.builders import build_model

    with torch.device("meta"):
        model, _, _ = build_model(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = set()
    if getattr(model.causal_lm.config, "tie_word_embeddings", False):
        out = model.causal_lm.get_output_embeddings()
        if out is not None:
            tied = {k for k in shapes if k.startswith("llm.") and k.endswith("lm_head.weight")}
    return shapes, tied


def _problems(label: str, names: list[str]) -> str:
    shown = ", ".join(names[:8])
    return f"{len(names)} {label}: {shown}" + (" ..." if len(names) > 8 else "")


# ----------------------------------------------------------------------------- reference -> owl


def from_mplug_owl(src: str | Path, out: str | Path) -> OwlConfig:
    """Convert a released mPLUG-Owl directory into an owl model directory; returns the owl config.

    One output shard per input shard: memory stays bounded by the largest shard.
    """
    src, out = Path(src), Path(out)
    if not (src / "config.json").exists():
        raise CheckpointNotFound(f"{src} is not a model directory (no config.json)")
    ref_config = _read_json(src / "config.json")
    files = weight_files(src)
    shapes = read_shapes(files)
    ffn = shapes.get(abstractor_ffn_name(), (None,))[0]
    config = owl_config_from_reference(ref_config, ffn)
    heads = config.vision.num_heads

    # 1. every name and shape, checked before anything is written
    expected, tied = _expected_owl_shapes(config)
    produced: dict[str, tuple[int, ...]] = {}
    unknown, dropped = [], []
    for name, shape in shapes.items():
        if is_dropped(name):
            dropped.append(name)
            continue
        mapped = to_owl(name, torch.empty(shape, device="meta"), heads)
        if mapped is None:
            unknown.append(name)
            continue
        produced.update({k: tuple(v.shape) for k, v in mapped.items()})
    problems = []
    if unknown:
        problems.append(_problems("tensors that are not part of mPLUG-Owl", sorted(unknown)))
    extra = sorted(set(produced) - set(expected))
    if extra:
        problems.append(_problems("tensors the config does not describe", extra))
    missing = sorted(set(expected) - set(produced) - tied)
    if missing:
        problems.append(_problems("tensors missing", missing))
    wrong = [
        f"{k} {produced[k]} (config: {expected[k]})" for k in produced if k in expected and produced[k] != expected[k]
    ]
    if wrong:
        problems.append(_problems("tensors of the wrong shape", wrong))
    if problems:
        raise CheckpointError(f"{src} does not match its config.json: " + "; ".join(problems))

    # 2. shard by shard
    tied_present = sorted(k for k in tied if k in produced)
    record = {
        "source": str(src.resolve()),
        "dropped": sorted(dropped),
        "tied_copies": tied_present,
        "source_files": [f.name for f in files],
    }
    n = len(files)
    with atomic_dir(out) as tmp:
        weight_map: dict[str, str] = {}
        for i, path in enumerate(tqdm(files, desc="converting shards", unit="shard", disable=n == 1)):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            converted: dict[str, torch.Tensor] = {}
            with open_shard(path) as shard:
                for ref_name in _names(shard):
                    if is_dropped(ref_name):
                        continue
                    for k, v in (to_owl(ref_name, _get(shard, ref_name), heads) or {}).items():
                        if k in tied_present:
                            continue  # owl re-ties it on load; the record restores it on the way back
                        converted[k] = v.contiguous()
                save_file(converted, str(tmp / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in converted})
            del converted
        if n > 1:
            index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config.save(tmp / "config.json")
        _write_generation_config(src, tmp)
        _convert_tokenizer(src, tmp, config)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return config


def _write_generation_config(src: Path, dst: Path) -> None:
    from transformers import GenerationConfig

    if (src / "generation_config.json").exists():
        settings = _read_json(src / "generation_config.json")
        settings.pop("transformers_version", None)
        settings.pop("_from_model_config", None)
    else:
        settings = dict(REFERENCE_GENERATION)
    GenerationConfig(**settings).save_pretrained(str(dst))


def _convert_tokenizer(src: Path, dst: Path, config: OwlConfig) -> None:
    """The reference's tokenizer as a transformers fast tokenizer with the same ids (see owl.convert.tokenizer)."""
    if (src / "tokenizer.model").exists():
        from owl.convert.tokenizer import llama_tokenizer_from_spm

        tok = llama_tokenizer_from_spm(src / "tokenizer.model")
        shutil.copy2(src / "tokenizer.model", dst / "tokenizer.model")  # kept for converting back
    elif (src / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        special: dict = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the class named there may not exist here
            if (src / name).exists():
                special |= _read_json(src / name)
        special = {
            k: (v["content"] if isinstance(v, dict) else v)
            for k, v in special.items()
            if k in ("bos_token", "eos_token", "unk_token", "pad_token") and v is not None
        }
        tok = PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), **special)
    else:
        raise CheckpointNotFound(f"no tokenizer in {src} (looked for tokenizer.model and tokenizer.json)")
    hf = config.llm.hf_config
    vocab = int(hf.get("vocab_size", len(tok)))
    if len(tok) > vocab:
        raise CheckpointError(f"the tokenizer has {len(tok)} tokens but the LLM's embedding only {vocab}")
    tok.save_pretrained(str(dst))


# ----------------------------------------------------------------------------- owl -> reference


def to_mplug_owl(src: str | Path, out: str | Path) -> dict:
    """Convert an owl model directory (CLIP vision, LoRA merged) to the reference's layout; returns its config."""
    from owl.models.checkpoint import ADAPTER_DIR, CONFIG_NAME, check_model_dir

    src, out = check_model_dir(src), Path(out)
    if (src / ADAPTER_DIR).is_dir():
        raise CheckpointError(f"{src} has an unmerged LoRA adapter; merge it first: owl merge-lora {src} MERGED_DIR")
    config = OwlConfig.load(src / CONFIG_NAME)
    ref_config = reference_config_from_owl(config)
    record = _read_json(src / RECORD_NAME) if (src / RECORD_NAME).exists() else {}
    restore = set(record.get("tied_copies", []))
    heads = config.vision.num_heads
    files = weight_files(src)
    n = len(files)
    pending: dict[str, dict[int, torch.Tensor]] = {}
    unmapped: list[str] = []
    with atomic_dir(out) as tmp:
        weight_map: dict[str, str] = {}
        for i, path in enumerate(tqdm(files, desc="converting shards", unit="shard", disable=n == 1)):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            converted: dict[str, torch.Tensor] = {}
            with open_shard(path) as shard:
                for owl_name in _names(shard):
                    tensor = _get(shard, owl_name)
                    mapped = to_reference(owl_name, tensor)
                    if mapped is None:
                        unmapped.append(owl_name)
                    elif len(mapped) == 3:  # one of q/k/v: fused once all three have been read
                        fused, idx, part = mapped
                        pending.setdefault(fused, {})[idx] = part
                        if len(pending[fused]) == 3:
                            converted[fused] = fuse_qkv_parts(pending.pop(fused), heads)
                    else:
                        converted[mapped[0]] = mapped[1].contiguous()
                    if owl_name.endswith("embed_tokens.weight") or owl_name.endswith("word_embeddings.weight"):
                        for tied in restore:  # a tied LM head the source checkpoint stored: written back
                            converted["language_model." + tied[len("llm.") :]] = tensor.clone()
            if unmapped:
                raise CheckpointError(_problems("owl tensors with no mPLUG-Owl counterpart", unmapped))
            save_file(converted, str(tmp / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in converted})
        if pending:
            raise CheckpointError(f"incomplete q/k/v projections in {src}: {sorted(pending)[:4]}")
        if n > 1:
            index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(ref_config, indent=2) + "\n")
        _write_reference_extras(src, tmp, config)
    return ref_config


def _write_reference_extras(src: Path, dst: Path, config: OwlConfig) -> None:
    """Generation config, image processor config and tokenizer files the reference's loaders read."""
    from transformers import GenerationConfig

    if (src / "generation_config.json").exists():
        settings = _read_json(src / "generation_config.json")
        settings.pop("transformers_version", None)
        GenerationConfig(**settings).save_pretrained(str(dst))
    v = config.vision
    preprocessor = {
        "crop_size": v.image_size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": list(v.image_mean),
        "image_std": list(v.image_std),
        "resample": 3,
        "size": {"shortest_edge": v.image_size},
        "image_processor_type": "MplugOwlImageProcessor",
    }
    (dst / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    for name in _TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    if (dst / "tokenizer.model").exists():  # the reference loads MplugOwlTokenizer (a slow LLaMA tokenizer)
        tok_cfg = _read_json(dst / "tokenizer_config.json") if (dst / "tokenizer_config.json").exists() else {}
        tok_cfg["tokenizer_class"] = "MplugOwlTokenizer"
        (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
