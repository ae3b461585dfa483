"""Model configuration: dataclasses validated on construction, named presets, JSON/YAML I/O.

Only builders and the CLI read these; modules take explicit arguments. An
``OwlConfig`` is saved as ``config.json`` in every model directory, so a model
directory is self-describing (no separate LLM or vision directory is needed to
reload it).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from owl.configtools import dump_yaml, from_dict, read_yaml
from owl.errors import ConfigError, ConfigNotFound

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MPLUG_SYSTEM_PROMPT = (
    "The following is a conversation between a curious human and AI assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

VISION_BACKBONES = ("clip", "siglip", "efficientnet")
TEMPLATES = ("mplug-owl-v1", "chat-template", "plain")
ABSTRACTOR_INITS = ("reference", "image-through")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class VisionConfig:
    """The vision encoder ("visual knowledge module").

    ``backbone`` picks the implementation: ``clip`` (the paper's ViT-L/14),
    ``siglip`` or ``efficientnet`` (a pretrained CNN whose feature map becomes
    tokens). Transformer fields are ignored by the CNN and vice versa.
    """

    backbone: str = "clip"
    image_size: int = 224
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    hidden_act: str = "quick_gelu"
    variant: str = "efficientnet-lite0"
    feature_block: int | None = None  # efficientnet: None = head (1280 ch), else output of block i
    learned_pos_embed: bool = True  # efficientnet: add a learned position embedding to the grid tokens
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        self.image_mean = tuple(self.image_mean)  # type: ignore[assignment]
        self.image_std = tuple(self.image_std)  # type: ignore[assignment]
        _check(
            self.backbone in VISION_BACKBONES,
            f"vision.backbone={self.backbone!r} is unknown; use one of {', '.join(VISION_BACKBONES)}",
        )
        _check(self.image_size > 0, f"vision.image_size={self.image_size} must be positive")
        _check(len(self.image_mean) == 3 and len(self.image_std) == 3, "vision.image_mean/std need 3 values (RGB)")
        _check(all(s > 0 for s in self.image_std), f"vision.image_std={self.image_std} must be positive")
        if self.backbone in ("clip", "siglip"):
            _check(
                self.hidden_size % self.num_heads == 0,
                f"vision.hidden_size={self.hidden_size} is not divisible by vision.num_heads={self.num_heads}",
            )
            _check(
                self.image_size % self.patch_size == 0,
                f"vision.image_size={self.image_size} is not a multiple of vision.patch_size={self.patch_size}",
            )


@dataclass
class AbstractorConfig:
    """The visual abstractor: learnable queries cross-attending to the image tokens."""

    hidden_size: int = 1024
    num_layers: int = 6
    num_heads: int = 16
    intermediate_size: int = 2816
    num_queries: int = 64
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    ffn_layer_norm_eps: float = 1e-6
    # How a model trained from scratch starts (converted checkpoints overwrite it): "reference" (normal 0.02, as the
    # released code) or "image-through" (variance-preserving value/output projections, so the visual tokens carry the
    # image from step 0 instead of being ~the normalised queries; see owl/models/abstractor.py).
    init: str = "reference"
    # RMS-normalise the visual tokens, with a learned per-channel gain that starts at the RMS of the LLM's own word
    # embeddings (set when the model is built). Off in the reference. A freshly trained linear output drifts to ~10x
    # the scale of word embeddings, where a frozen LLM's layers barely move those positions (benchmarks/NOTES.md §11).
    output_norm: bool = False
    # Locality prior (0 = off, the reference): the queries are laid out on a square grid over the image and each
    # query's attention logit to an image cell is lowered by locality x (distance / query spacing)^2, so a query
    # starts by pooling its own neighbourhood (Honeybee's argument: resamplers lose where things are). The visual
    # tokens then carry "what is here" for fixed places, binding colour and shape to a place for the LLM.
    locality: float = 0.0
    # Queries compete for image cells (slot attention, Locatello et al. 2020; off = the reference): each cell's
    # attention is a softmax over the *queries*, then each query takes the weighted mean of the cells it won, and
    # the queries do not attend to each other. One object's cells then go to one query, so its colour, shape and
    # place arrive in one token instead of being spread over, or mixed into, many (benchmarks/NOTES.md §18).
    competition: bool = False

    def __post_init__(self) -> None:
        _check(
            self.init in ABSTRACTOR_INITS, f"abstractor.init={self.init!r} is unknown; use one of {ABSTRACTOR_INITS}"
        )
        _check(self.num_queries >= 1, f"abstractor.num_queries={self.num_queries} must be >= 1")
        _check(self.num_layers >= 1, f"abstractor.num_layers={self.num_layers} must be >= 1")
        _check(self.locality >= 0.0, f"abstractor.locality={self.locality} must be >= 0 (0 turns it off)")
        side = math.isqrt(self.num_queries)
        _check(
            self.locality == 0.0 or side * side == self.num_queries,
            f"abstractor.locality={self.locality} lays the queries on a square grid, but num_queries="
            f"{self.num_queries} is not a square; use 16, 36, 64 ... or locality 0",
        )
        _check(
            self.hidden_size % self.num_heads == 0,
            f"abstractor.hidden_size={self.hidden_size} is not divisible by abstractor.num_heads={self.num_heads}",
        )
        _check(
            0.0 <= self.attention_dropout < 1.0,
            f"abstractor.attention_dropout={self.attention_dropout} must be in [0, 1)",
        )

    @property
    def num_visual_tokens(self) -> int:
        """Tokens per image handed to the LLM: the queries plus one end-of-image vector."""
        return self.num_queries + 1


@dataclass
class LLMConfig:
    """Any transformers causal LM, described by its full HF config dict (``model_type`` included)."""

    hf_config: dict[str, Any] = field(default_factory=dict)
    # LLMs with a LayerNorm on the word embeddings (BLOOM): whether the visual tokens pass through it too. The
    # reference applies it to the text embeddings only and splices the visual tokens in after it (False), which its
    # BLOOMZ checkpoint was trained with; transformers applies it to whatever inputs_embeds it gets (True).
    normalize_visual_embeds: bool = True

    def __post_init__(self) -> None:
        _check(
            isinstance(self.hf_config.get("model_type"), str) and bool(self.hf_config["model_type"]),
            "llm.hf_config needs a 'model_type' (e.g. 'llama', 'qwen2', 'gpt2')",
        )

    @property
    def hidden_size(self) -> int:
        c = self.hf_config
        for key in ("hidden_size", "n_embd", "d_model"):
            if key in c:
                return int(c[key])
        raise ConfigError(f"cannot find the hidden size in llm.hf_config (model_type {c['model_type']!r})")


@dataclass
class ProcessorConfig:
    """How text and images become model inputs (shared by training, inference, serving, evaluation)."""

    template: str = "mplug-owl-v1"
    system_prompt: str = MPLUG_SYSTEM_PROMPT
    max_length: int = 2048
    max_image_pixels: int = 40_000_000  # refuse larger images (decompression bombs)
    # "owl": each template segment tokenised on its own, so training and inference share token boundaries.
    # "mplug-owl": the released checkpoints' own tokenisation and image order (the reference training loader for
    # training samples, its processor for generation prompts), so a converted model sees exactly the ids and pixels
    # it was trained and demoed with. The converter writes it into config.json; see owl/processing.py.
    compat: str = "owl"

    def __post_init__(self) -> None:
        _check(self.template in TEMPLATES, f"processor.template={self.template!r} is unknown; use one of {TEMPLATES}")
        _check(self.max_length >= 16, f"processor.max_length={self.max_length} is too small (>= 16)")
        _check(self.max_image_pixels > 0, "processor.max_image_pixels must be positive")
        _check(
            self.compat in ("owl", "mplug-owl"),
            f"processor.compat={self.compat!r} is unknown; use 'owl' (owl's own tokenisation) "
            "or 'mplug-owl' (the released mPLUG-Owl checkpoints' tokenisation)",
        )
        _check(
            self.compat != "mplug-owl" or self.template == "mplug-owl-v1",
            f"processor.compat='mplug-owl' reproduces the reference's mplug-owl-v1 prompts, but processor.template="
            f"{self.template!r}; set processor.template: mplug-owl-v1 or processor.compat: owl",
        )


@dataclass
class OwlConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    abstractor: AbstractorConfig = field(default_factory=AbstractorConfig)
    llm: LLMConfig = field(default_factory=lambda: LLMConfig({"model_type": "llama"}))
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)

    @property
    def num_visual_tokens(self) -> int:
        return self.abstractor.num_visual_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OwlConfig:
        """Build from a nested dict; unknown keys are errors that suggest the closest valid key."""
        return from_dict(cls, d)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n" if path.suffix == ".json" else dump_yaml(self)
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> OwlConfig:
        path = Path(path)
        if not path.exists():
            raise ConfigNotFound(f"config file not found: {path}")
        if path.suffix != ".json":
            return cls.from_dict(read_yaml(path))
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); is it a config.json?") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object of config sections, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- presets


def _llama_7b() -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }


def _tiny_llama(vocab_size: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
    }


def preset(name: str) -> OwlConfig:
    """Return a named configuration. Unknown names raise with the list of known ones."""
    from owl.tokenizer import BYTE_VOCAB_SIZE

    if name == "mplug-owl-llama-7b":
        return OwlConfig(
            vision=VisionConfig(
                backbone="clip",
                image_size=224,
                hidden_size=1024,
                num_layers=24,
                num_heads=16,
                intermediate_size=4096,
                patch_size=14,
            ),
            abstractor=AbstractorConfig(
                hidden_size=1024, num_layers=6, num_heads=16, intermediate_size=2816, num_queries=64
            ),
            llm=LLMConfig(_llama_7b()),
            processor=ProcessorConfig(max_length=2048),
        )
    if name == "tiny":
        return OwlConfig(
            vision=VisionConfig(
                backbone="clip",
                image_size=28,
                hidden_size=32,
                num_layers=2,
                num_heads=4,
                intermediate_size=64,
                patch_size=14,
            ),
            abstractor=AbstractorConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=88, num_queries=4),
            llm=LLMConfig(_tiny_llama(BYTE_VOCAB_SIZE)),
            processor=ProcessorConfig(max_length=512),
        )
    known = ", ".join(PRESETS)
    raise ConfigError(f"unknown preset {name!r}; known presets: {known}")


PRESETS: tuple[str, ...] = ("mplug-owl-llama-7b", "tiny")
