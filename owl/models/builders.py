"""Builders: compose an ``OwlModel`` from a config, and optionally from local pretrained parts.

Plain functions, no subclass towers: ``build_model(preset("tiny"))`` returns a
randomly initialised model; ``vision_from=`` / ``llm_from=`` take the vision
tower and the LLM from local directories (HF CLIP/SigLIP, any HF causal LM, or
a GGUF file) and record their real sizes in the returned config.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from owl.atomic import atomic_dir
from owl.config import LLMConfig, OwlConfig
from owl.errors import ConfigError, InputNotFound
from owl.models import packaged
from owl.models.abstractor import VisualAbstractor
from owl.models.owl import OwlModel
from owl.models.vision import build_vision, load_vision

log = logging.getLogger(__name__)

# Keys of a HF config dict that describe where it came from rather than the architecture.
_VOLATILE_KEYS = (
    "_name_or_path",
    "transformers_version",
    "quantization_config",
    "architectures",
    "_commit_hash",
    "dtype",
    "torch_dtype",
)


def hf_config_dict(config: Any) -> dict[str, Any]:
    """A transformers config as a plain dict that rebuilds the same architecture anywhere."""
    d = config.to_dict()
    for key in _VOLATILE_KEYS:
        d.pop(key, None)
    return d


def build_llm(cfg: LLMConfig) -> nn.Module:
    """A randomly initialised causal LM for the HF config dict in ``cfg``."""
    d = dict(cfg.hf_config)
    model_type = d.pop("model_type")
    try:
        hf = AutoConfig.for_model(model_type, **d)
    except ValueError as e:
        raise ConfigError(f"llm.hf_config: unknown model_type {model_type!r} for this transformers version") from e
    return _free_pad_row(AutoModelForCausalLM.from_config(hf, dtype=torch.get_default_dtype()))


def _free_pad_row(llm: nn.Module) -> nn.Module:
    """Let the pad token's embedding row train like any other.

    LLaMA-style models build their embedding with ``padding_idx=pad_token_id``, which zeroes that row's gradient.
    owl's pad positions never reach a loss (right padding behind a causal mask, labels ignored), so the mask buys
    nothing, and where pad = EOS (GPT-2, LLaMA, Mistral here) it would stop EOS from ever being learned. It also
    makes a model loaded from its original directory (no pad id) and the same model rebuilt from owl's config
    (pad = EOS) train identically.
    """
    emb = llm.get_input_embeddings()
    if isinstance(emb, nn.Embedding):
        emb.padding_idx = None
    return llm


def _first(token_id: int | list[int] | None) -> int | None:
    """A config's EOS may be a list (several stop ids); the first is the one a tokenizer would name."""
    if isinstance(token_id, (list, tuple)):
        return token_id[0] if token_id else None
    return token_id


def align_special_tokens(model: OwlModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make the tokenizer and the LLM agree on pad/bos/eos, and record the ids in ``model.config`` (saved with it).

    The tokenizer decides, because it is what the processor and the templates use: the mplug-owl-v1 template
    prepends its BOS when it has one (Qwen2 has none: nothing is prepended), answers end with its EOS, batches
    are padded with its pad token. A tokenizer without a pad token (GPT-2, LLaMA, Mistral) gets pad = EOS. The
    LLM's config, its generation config and ``llm.hf_config`` then take the same ids, so a reloaded model
    generates and pads exactly like the one built here. Returns the (same, updated) tokenizer.
    """
    llm = model.causal_lm
    n_tok = len(tokenizer)
    n_emb = llm.get_input_embeddings().num_embeddings
    if n_tok > n_emb:
        raise ConfigError(
            f"the tokenizer has {n_tok} tokens but the LLM's embedding matrix has only {n_emb} rows: token ids "
            f"{n_emb}..{n_tok - 1} would index past it; use the LLM's own tokenizer (or one that fits)"
        )
    cfg = llm.config
    if tokenizer.eos_token_id is None:
        eos = _first(getattr(cfg, "eos_token_id", None))
        if eos is None or not 0 <= eos < n_tok:
            raise ConfigError("neither the tokenizer nor the LLM config has an EOS token; answers end with EOS")
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
        log.warning(
            "the tokenizer has no EOS token: using the LLM config's eos_token_id %d (%r)", eos, tokenizer.eos_token
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        log.warning(
            "the tokenizer has no pad token: padding with EOS %r (id %d), recorded in the tokenizer and llm.hf_config",
            tokenizer.eos_token,
            tokenizer.eos_token_id,
        )
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for key, new in ids.items():
        old = getattr(cfg, key, None)
        if old != new and not (isinstance(old, list) and new in old):
            level = logging.WARNING if old is not None and new is not None else logging.INFO
            log.log(level, "llm %s: %s -> %s (the tokenizer's)", key, old, new)
        setattr(cfg, key, new)
        gen = getattr(llm, "generation_config", None)
        if gen is not None:
            setattr(gen, key, new)
    model.config.llm.hf_config.update(ids)
    return tokenizer


def _gguf_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("OWL_CACHE", Path.home() / ".cache" / "owl"))
    return root / "gguf" / f"{path.stem}-{key}"


def load_llm(path: str | Path) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local HF directory or a ``.gguf`` file (fp32).

    A GGUF file is dequantised once by transformers and cached as a safetensors
    directory (under ``$OWL_CACHE``, default ``~/.cache/owl``), so later loads
    take seconds instead of the ~30 s dequantisation.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(
            f"LLM not found: {path} (give a local HF model directory, a .gguf file or a packaged "
            f"name: {', '.join(packaged.LLMS)})"
        )
    if path.suffix == ".gguf":
        cache = _gguf_cache_dir(path)
        if (cache / "config.json").exists():
            return load_llm(cache)
        log.info("dequantising %s (once; cached in %s)", path.name, cache)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        llm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # The weights are plain fp32 now, but transformers still marks the model as GGUF-quantized and refuses to
        # save it; drop the marks so the cache (and any owl model built on it) saves as ordinary safetensors.
        if getattr(llm.config, "quantization_config", None) is not None:
            del llm.config.quantization_config
        llm.hf_quantizer = None
        llm.is_quantized = False
        with atomic_dir(cache) as tmp:  # a half-written cache is never seen
            llm.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        return load_llm(cache)  # the first load and every later one get the same clean model
    if not (path / "config.json").exists():
        raise InputNotFound(f"{path} is not a HF model directory (no config.json)")
    llm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path))
    return _free_pad_row(llm), tok


def build_model(
    config: OwlConfig,
    *,
    vision_from: str | Path | None = None,
    llm_from: str | Path | None = None,
) -> tuple[OwlModel, OwlConfig, PreTrainedTokenizerBase | None]:
    """Compose a model. Returns the model, the config it really has, and the LLM's tokenizer if loaded.

    Without ``*_from`` every part is randomly initialised from ``config``. With
    them (a local path, or a packaged name: :mod:`owl.models.packaged`), the
    loaded parts' own sizes replace the config's, and the abstractor is sized
    to fit both. A loaded LLM's tokenizer and config are made to agree on pad/bos/eos
    (:func:`align_special_tokens`).
    """
    config = copy.deepcopy(config)
    tokenizer = None
    vision_from = packaged.resolve_vision(None if vision_from is None else str(vision_from))
    llm_from = packaged.resolve_llm(None if llm_from is None else str(llm_from))
    if vision_from is not None:
        vision, config.vision = load_vision(vision_from, config.vision)
    else:
        vision = build_vision(config.vision)
    if llm_from is not None:
        llm, tokenizer = load_llm(llm_from)
        config.llm = LLMConfig(hf_config_dict(llm.config) | {"model_type": llm.config.model_type})
    else:
        llm = build_llm(config.llm)
    abstractor = VisualAbstractor(config.abstractor, vision.hidden_size, config.llm.hidden_size)
    abstractor.match_word_scale(llm.get_input_embeddings().weight)
    model = OwlModel(config, vision, abstractor, llm)
    if tokenizer is not None:
        align_special_tokens(model, tokenizer)
    return model, config, tokenizer


def count_parameters(model: OwlModel, group: Callable[[str], str] | None = None) -> dict[str, dict[str, int]]:
    """Total and trainable parameter counts per module (shared/tied tensors counted once), plus ``total``.

    ``group`` maps a parameter name to its module (default: the top-level part, vision / abstractor / llm);
    training passes one that also splits off the abstractor's queries.
    """
    group = group or (lambda name: name.partition(".")[0])
    seen: set[int] = set()
    out: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        counts = out.setdefault(group(name), {"total": 0, "trainable": 0})
        counts["total"] += p.numel()
        counts["trainable"] += p.numel() if p.requires_grad else 0
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("total", "trainable")}
    return out
