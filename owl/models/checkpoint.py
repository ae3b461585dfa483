"""Model directories: ``config.json`` + safetensors weights (+ tokenizer, + optional peft adapter).

Layout of a directory written by :func:`save_pretrained`::

    config.json                       OwlConfig (the LLM's full HF config inside)
    model.safetensors                 or model-00001-of-0000N.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json, ...
    generation_config.json            optional: the model's generation settings (a standard transformers file)
    adapter/                          only for unmerged LoRA: a standard peft adapter directory

Writes are atomic (a temporary sibling directory renamed into place), so a
crash never leaves a half-written model. Weights are read only from
safetensors: loading a directory never executes pickled code.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from owl.atomic import atomic_dir
from owl.config import OwlConfig
from owl.errors import CheckpointError, CheckpointNotFound
from owl.models.builders import build_model
from owl.models.owl import OwlModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
ADAPTER_DIR = "adapter"
GENERATION_CONFIG_NAME = "generation_config.json"


def base_state_dict(model: OwlModel) -> dict[str, torch.Tensor]:
    """The model's weights under stable names: LoRA layers excluded, peft prefixes removed, tied copies dropped."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    parts = {"vision": model.vision, "abstractor": model.abstractor, "llm": model.causal_lm}
    for prefix, module in parts.items():
        for name, tensor in module.state_dict().items():
            if "lora_" in name:
                continue
            name = name.replace(".base_layer.", ".")
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            if key in seen:  # tied weights (e.g. lm_head == embed_tokens): the model re-ties on load
                continue
            seen.add(key)
            out[f"{prefix}.{name}"] = tensor.detach().contiguous()
    return out


def save_pretrained(
    model: OwlModel,
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_shard_size: str | int = "5GB",
    extra_files: dict[str, str] | None = None,
    generation_config: GenerationConfig | dict | None = None,
) -> None:
    """Write a model directory atomically. ``extra_files`` maps file names to text (e.g. lineage).

    ``generation_config`` (a transformers GenerationConfig or its dict) is written as ``generation_config.json``:
    the settings ``owl chat`` and :meth:`owl.generation.GenerationOptions.for_model` start from.

    A vision tower with LoRA must be merged first (``owl.train.trainable.merge_vision_lora``): only the LLM's
    adapter has a saved form (``adapter/``), so unmerged vision LoRA weights would be lost without a word.
    """
    if any("lora_" in name for name, _ in model.vision.named_parameters()):
        unmerged = any(not getattr(m, "merged", True) for m in model.vision.modules() if hasattr(m, "lora_A"))
        if unmerged:
            raise ValueError("the vision tower has unmerged LoRA layers; merge them first (merge_vision_lora)")
    if isinstance(generation_config, dict):
        generation_config = GenerationConfig.from_dict(generation_config)
    with atomic_dir(path) as tmp:
        _write_model_dir(model, tmp, tokenizer, max_shard_size, extra_files or {})
        if generation_config is not None:
            # to_json_file, not save_pretrained: the latter refuses files that merely carry unused flags
            generation_config.to_json_file(tmp / GENERATION_CONFIG_NAME, use_diff=True)


def _write_model_dir(
    model: OwlModel,
    tmp: Path,
    tokenizer: PreTrainedTokenizerBase | None,
    max_shard_size: str | int,
    extra_files: dict[str, str],
) -> None:
    model.config.save(tmp / CONFIG_NAME)
    state = base_state_dict(model)
    split = split_torch_state_dict_into_shards(
        state, max_shard_size=max_shard_size, filename_pattern="model{suffix}.safetensors"
    )
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(tmp / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
    if hasattr(model.llm, "peft_config"):
        model.llm.save_pretrained(str(tmp / ADAPTER_DIR))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    for name, text in extra_files.items():
        (tmp / name).write_text(text)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read all weights of a model directory (single file or sharded)."""
    files = sorted(set(_weight_names(path).values()))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as e:  # safetensors raises its own error types: any of them means a damaged file
            raise _not_safetensors(file, e) from None
    return state


def check_model_dir(path: str | Path) -> Path:
    """A model directory, or a training run's output directory (whose model is in ``model/``)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointNotFound(f"model directory not found: {path}")
    if not (path / CONFIG_NAME).exists() and (path / "model" / CONFIG_NAME).exists():
        path = path / "model"
    if not (path / CONFIG_NAME).exists():
        raise CheckpointNotFound(f"{path} is not an owl model directory (no {CONFIG_NAME}); create one with `owl new`")
    return path


_PICKLE_HINT = (
    "owl reads weights only from safetensors, never pickles (loading one can run code); convert a released "
    "mPLUG-Owl checkpoint with `owl convert from-mplug-owl`, or save the weights with safetensors.torch.save_file"
)


def _not_safetensors(file: Path, error: Exception | str) -> CheckpointError:
    """The error for a weights file that cannot be read, saying whether it is a pickle or a damaged file."""
    try:
        with open(file, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return CheckpointError(f"{file}: cannot read it: {e.strerror or e}")
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return CheckpointError(f"{file} is a PyTorch pickle or zip archive, not safetensors: {_PICKLE_HINT}")
    why = " ".join(str(error).split())
    return CheckpointError(
        f"{file} is not a readable safetensors file ({why}): it is damaged or was not copied completely; "
        "copy or write the model again"
    )


def _read_index(path: Path) -> dict[str, Path]:
    """``model.safetensors.index.json``'s weight map, checked: JSON, shard names inside the directory, shards there."""
    file = path / INDEX_NAME
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read it: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f'{file}: expected {{"weight_map": {{tensor name: shard file}}}}')
    out = {}
    for name, shard in weight_map.items():
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{file}: shard {shard!r} of {name} is not a file name in the model directory")
        out[name] = path / shard
    missing = sorted({p.name for p in out.values() if not p.is_file()})
    if missing:
        raise CheckpointNotFound(f"{file} names shards that are not in {path}: {missing[:3]}; copy them too")
    return out


def _weight_names(path: Path) -> dict[str, Path]:
    """Every tensor name in a model directory and the safetensors file holding it (headers only, each checked)."""
    if (path / INDEX_NAME).exists():
        where = _read_index(path)
    elif (path / WEIGHTS_NAME).exists():
        where = None
    else:
        hint = ""
        if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
            hint = f"; it has pickled weights (.bin/.pt): {_PICKLE_HINT}"
        raise CheckpointNotFound(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}{hint}")
    names: dict[str, Path] = {}
    for file in sorted(set(where.values())) if where is not None else [path / WEIGHTS_NAME]:
        try:  # safetensors validates the header and that the data covers the file exactly
            with safe_open(str(file), framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # SafetensorError and friends: a damaged or foreign file
            raise _not_safetensors(file, e) from None
        names.update({k: file for k in keys})
    if where is None:
        return names
    absent = sorted(k for k, file in where.items() if names.get(k) != file)
    if absent:
        raise CheckpointError(f"{path / INDEX_NAME} lists tensors its shards do not hold: {absent[:5]}")
    return where


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_into(file: Path, targets: dict[str, torch.Tensor]) -> None:
    """Copy the named tensors of a safetensors file into existing tensors, with plain reads instead of a memory map.

    A tensor stored in the target's dtype is read straight into the target's memory (no second copy); another
    dtype goes through one temporary tensor. So loading a model needs its own size plus one tensor, and the
    process does not also map the whole file (with ``safe_open``, a 13 GB shard's pages count as resident while it
    is read: a 7B model peaked at 22.8 GB RSS instead of ~14.5).
    """
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{file}: not a safetensors file ({e.msg})") from None
        base = 8 + n
        for name, dest in targets.items():
            meta = header.get(name)
            if meta is None:
                raise CheckpointError(f"{file}: no tensor {name}")
            shape, (start, end) = tuple(meta["shape"]), meta["data_offsets"]
            if shape != tuple(dest.shape):
                raise CheckpointError(f"{file}: {name} has shape {shape}, the config.json model {tuple(dest.shape)}")
            dtype = _ST_DTYPES.get(meta["dtype"])
            if dtype is None:
                raise CheckpointError(f"{file}: {name} has dtype {meta['dtype']}, which owl does not read")
            direct = dtype == dest.dtype and dest.is_contiguous() and dest.device.type == "cpu"
            buf = dest if direct else torch.empty(shape, dtype=dtype)
            raw = buf.reshape(-1).view(torch.uint8).numpy() if buf.numel() else None
            if raw is not None and raw.nbytes != end - start:
                raise CheckpointError(f"{file}: {name} holds {end - start} bytes, expected {raw.nbytes}")
            if raw is not None:
                f.seek(base + start)
                if f.readinto(memoryview(raw)) != raw.nbytes:
                    raise CheckpointError(f"{file}: truncated at {name}")
            if not direct:
                dest.copy_(buf)


@contextlib.contextmanager
def _empty_init(dtype: torch.dtype) -> Iterator[None]:
    """Build modules in ``dtype`` without running their random initialisation (every weight is loaded next)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: the weights are initialised (slower), then overwritten all the same
        no_init_weights = contextlib.nullcontext

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def load_model(path: str | Path, load_adapter: bool = True, dtype: torch.dtype | None = None) -> OwlModel:
    """Rebuild the model from ``config.json`` and load its safetensors weights (and LoRA adapter, if any).

    The model is built without random initialisation, directly in ``dtype`` (default fp32), and the weights are
    copied in one tensor at a time: loading needs the model's own size in memory, not twice it (a 7B model in
    bf16 loads in ~15 GB, not ~43 GB).
    """
    path = check_model_dir(path)
    config = OwlConfig.load(path / CONFIG_NAME)
    with _empty_init(dtype or torch.float32):
        model, _, _ = build_model(config)
    model.causal_lm.tie_weights()  # skipped with the initialisation; tied copies are not in the files
    where = _weight_names(path)
    fresh = model.state_dict()
    unexpected = sorted(set(where) - set(fresh))
    if unexpected:
        raise CheckpointError(f"{path}: weights not in the model built from its config.json: {unexpected[:5]}")
    missing = sorted(set(fresh) - set(where))
    ptr = {k: (t.untyped_storage().data_ptr(), t.storage_offset()) for k, t in fresh.items()}
    loaded_ptrs = {ptr[k] for k in where}
    untied = [k for k in missing if ptr[k] not in loaded_ptrs]
    if untied:
        raise CheckpointError(f"{path}: weights missing from the checkpoint: {untied[:5]}")
    by_file: dict[Path, list[str]] = {}
    for name, file in where.items():
        by_file.setdefault(file, []).append(name)
    with torch.no_grad():
        for file, names in by_file.items():
            read_safetensors_into(file, {name: fresh[name] for name in names})
    if load_adapter and (path / ADAPTER_DIR).is_dir():
        model.llm = _load_adapter(model.llm, path / ADAPTER_DIR)
    return model


def _load_adapter(llm: torch.nn.Module, adapter: Path) -> torch.nn.Module:
    """The LoRA adapter attached to ``llm``, after checking the directory holds what peft needs (safetensors only)."""
    from peft import PeftModel

    config = adapter / "adapter_config.json"
    try:
        ok = isinstance(json.loads(config.read_text(encoding="utf-8")), dict)
    except FileNotFoundError:
        raise CheckpointNotFound(f"{adapter} has no adapter_config.json; remove the folder or copy it again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config}: not a readable peft adapter config: {e}") from None
    if not ok:
        raise CheckpointError(f"{config}: expected a JSON object (a peft LoraConfig)")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointNotFound(
            f"{adapter} has no adapter_model.safetensors (owl reads adapters only from safetensors)"
        )
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except Exception as e:  # SafetensorError: damaged
        raise _not_safetensors(weights, e) from None
    try:
        return PeftModel.from_pretrained(llm, str(adapter))
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{adapter}: the adapter does not fit this model ({type(e).__name__}: {msg})") from None


def load_generation_config(path: str | Path) -> GenerationConfig | None:
    """The model directory's ``generation_config.json``, or ``None`` without one; an unreadable file is one
    :class:`CheckpointError` (a model must not silently fall back to other settings than its own)."""
    file = check_model_dir(path) / GENERATION_CONFIG_NAME
    if not file.exists():
        return None
    try:
        d = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read it: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file}: expected a JSON object of generation settings, got {type(d).__name__}")
    try:
        return GenerationConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        msg = " ".join(str(e).split())  # transformers' messages span lines; the CLI shows one
        raise CheckpointError(f"{file}: not a valid generation config: {msg}") from None


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    path = check_model_dir(path)
    if not (path / "tokenizer_config.json").exists():
        raise CheckpointNotFound(f"{path} has no tokenizer files; pass a tokenizer or save one with the model")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{path}: its tokenizer files cannot be read ({type(e).__name__}: {msg}); save the tokenizer again"
        ) from None
