"""Vision encoders behind one small interface: images in, a sequence of feature tokens out.

The abstractor only needs ``(N, 3, H, W) -> (N, T, C)`` and the width ``C``,
so any backbone plugs in:

- ``ClipVisionTower``: the paper's CLIP ViT (transformers' ``CLIPVisionModel``),
  with mPLUG-Owl's one difference: post-LayerNorm on *all* tokens, class token
  kept (HF CLIP normalises only the pooled token).
- ``SiglipVisionTower``: SigLIP ViT (no class token; HF already normalises all tokens).
- ``EfficientNetTower``: a pretrained CNN whose feature map becomes ``h*w`` tokens,
  with an optional learned position embedding so the abstractor can tell where
  things are.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.utils import logging as hf_logging

from owl.config import CLIP_MEAN, CLIP_STD, VisionConfig
from owl.errors import ConfigError, InputNotFound
from owl.models import packaged

log = logging.getLogger(__name__)


class ClipVisionTower(nn.Module):
    """CLIP ViT: 1 class token + (S/P)^2 patch tokens, post-LayerNorm applied to every token."""

    def __init__(self, model: CLIPVisionModel) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.num_tokens = (model.config.image_size // model.config.patch_size) ** 2 + 1

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # (N, T, C)
        return self.model.post_layernorm(hidden)

    @staticmethod
    def hf_config(cfg: VisionConfig) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
            num_channels=3,
            attention_dropout=0.0,
        )


class SiglipVisionTower(nn.Module):
    """SigLIP ViT: (S/P)^2 patch tokens, already post-normalised by transformers."""

    def __init__(self, model: SiglipVisionModel) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.num_tokens = (model.config.image_size // model.config.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state

    @staticmethod
    def hf_config(cfg: VisionConfig) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_act=cfg.hidden_act if cfg.hidden_act != "quick_gelu" else "gelu_pytorch_tanh",
            layer_norm_eps=cfg.layer_norm_eps,
            num_channels=3,
            vision_use_head=False,
        )


class EfficientNetTower(nn.Module):
    """EfficientNet-Lite feature map -> tokens.

    ``feature_block=None`` takes the 1x1 head conv output (1280 channels,
    stride 32); an integer takes the output of that MBConv block (finer grid,
    fewer channels). A learned position embedding per grid cell is added when
    ``learned_pos_embed`` is set, because a CNN's features carry little
    absolute position and the v1 abstractor has none.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        try:
            effnet = importlib.import_module("efficientnet_lite_pytorch")
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "vision.backbone=efficientnet needs the package efficientnet-lite-pytorch "
                "(pip install efficientnet-lite-pytorch)"
            ) from e
        self.net = effnet.EfficientNet.from_name(cfg.variant)
        self.net._fc = nn.Identity()  # classifier head unused; keeps the state dict small
        self.net._dropout = nn.Identity()
        self.feature_block = cfg.feature_block
        n_blocks = len(self.net._blocks)
        if self.feature_block is not None and not (0 <= self.feature_block < n_blocks):
            raise ConfigError(f"vision.feature_block={self.feature_block} is out of range 0..{n_blocks - 1}")
        with torch.no_grad():
            probe = self._features(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
        self.hidden_size = probe.shape[1]
        self.grid = tuple(probe.shape[2:])
        self.num_tokens = self.grid[0] * self.grid[1]
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, self.num_tokens, self.hidden_size)) if cfg.learned_pos_embed else None
        )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.feature_block is None:
            return net.extract_features(x)  # (N, 1280, h, w)
        x = net._swish(net._bn0(net._conv_stem(x)))
        for idx, block in enumerate(net._blocks[: self.feature_block + 1]):
            rate = net._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * idx / len(net._blocks) if rate else None)
        return x

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self._features(pixel_values)  # (N, C, h, w)
        tokens = feats.flatten(2).transpose(1, 2)  # (N, h*w, C)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        return tokens

    def load_pretrained(self, path: str | Path) -> None:
        """Load the ImageNet state dict (a plain ``.pth``) safely; the classifier is dropped."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or missing:
            raise ConfigError(
                f"{path} does not match {type(self.net).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )


def build_vision(cfg: VisionConfig) -> nn.Module:
    """A randomly initialised tower for ``cfg`` (weights are loaded separately)."""
    if cfg.backbone == "clip":
        return ClipVisionTower(CLIPVisionModel(ClipVisionTower.hf_config(cfg)))
    if cfg.backbone == "siglip":
        return SiglipVisionTower(SiglipVisionModel(SiglipVisionTower.hf_config(cfg)))
    return EfficientNetTower(cfg)


# config.json model_type -> backbone: a full CLIP/SigLIP directory holds a vision part that reads the same way.
_HF_BACKBONES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}
# What each backbone was trained with when a directory has no preprocessor_config.json (SigLIP: [-1, 1] pixels).
_DEFAULT_NORM = {"clip": (CLIP_MEAN, CLIP_STD), "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def _hf_backbone(path: Path, wanted: str) -> str:
    """The backbone a HF directory holds, from its ``config.json`` (the directory, not the preset, decides)."""
    if not (path / "config.json").is_file():
        raise InputNotFound(f"{path} is not a HF CLIP/SigLIP model directory (no config.json)")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    backbone = _HF_BACKBONES.get(model_type)
    if backbone is None:
        raise ConfigError(
            f"{path}: vision model_type {model_type!r} is not supported; give a CLIP or SigLIP directory "
            f"(model_type one of {', '.join(_HF_BACKBONES)})"
        )
    if backbone != wanted:
        log.info("%s holds a %s model: vision.backbone=%s (the config said %s)", path, backbone, backbone, wanted)
    return backbone


def _three(value: float | list[float]) -> tuple[float, float, float]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3  # type: ignore[return-value]


def _preprocessing(path: Path, backbone: str, cfg: VisionConfig, image_size: int) -> tuple[tuple, tuple]:
    """Mean/std the tower was trained with: the directory's image processor if it has one, else the backbone's.

    Wrong normalisation is silent (SigLIP fed CLIP-normalised pixels still runs, just worse), so the checkpoint's
    own ``preprocessor_config.json`` decides. Without one, a SigLIP tower gets SigLIP's 0.5/0.5 unless the config
    holds values that are not CLIP's defaults (then the user set them on purpose).
    """
    pre = path / "preprocessor_config.json"
    if not pre.is_file():
        mean, std = cfg.image_mean, cfg.image_std
        if backbone == "siglip" and (tuple(mean), tuple(std)) == _DEFAULT_NORM["clip"]:
            mean, std = _DEFAULT_NORM["siglip"]
        return tuple(mean), tuple(std)
    d = json.loads(pre.read_text())
    if d.get("do_normalize", True) is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = _three(d.get("image_mean", _DEFAULT_NORM[backbone][0]))
    std = _three(d.get("image_std", _DEFAULT_NORM[backbone][1]))
    size = d.get("crop_size") if d.get("do_center_crop") else d.get("size")
    sides = (
        {v for k, v in size.items() if k in ("height", "width", "shortest_edge")} if isinstance(size, dict) else set()
    )
    if isinstance(size, int):
        sides = {size}
    if sides and sides != {image_size}:
        log.warning(
            "%s: the image processor makes %s px images but the model's position embeddings are for %d px; owl uses %d",
            path,
            "/".join(str(s) for s in sorted(sides)),
            image_size,
            image_size,
        )
    return mean, std


def _from_pretrained(klass: type, path: Path) -> nn.Module:
    """Load only the vision weights; anything of the tower left at random init is an error, not a warning.

    A full CLIP/SigLIP directory also holds a text tower: transformers reports those weights as unexpected in a
    long table, which is silenced here (only the vision part is wanted).
    """
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = klass.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(previous)
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("head.")]
    if missing:
        raise ConfigError(f"{path}: vision weights missing from the checkpoint: {sorted(missing)[:5]}")
    return model


def load_vision(path: str | Path, cfg: VisionConfig) -> tuple[nn.Module, VisionConfig]:
    """Load a pretrained tower from a local path and return it with the config it implies.

    ``path`` is a local HF CLIP/SigLIP directory (a vision-only one, or a full CLIP/SigLIP model directory: only
    its vision part is read; its ``config.json`` picks the backbone), or a ``.pth`` state dict for
    ``efficientnet``. The returned config records the checkpoint's own sizes and the image mean/std from its
    ``preprocessor_config.json`` when the directory has one.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(
            f"vision weights not found: {path} (a local HF CLIP/SigLIP directory, an "
            f"EfficientNet .pth file, or a packaged name: {', '.join(packaged.VISION)})"
        )
    if cfg.backbone == "efficientnet" and not path.is_dir():
        tower = EfficientNetTower(cfg)
        tower.load_pretrained(path)
        return tower, cfg
    backbone = _hf_backbone(path, cfg.backbone)
    model = _from_pretrained(CLIPVisionModel if backbone == "clip" else SiglipVisionModel, path)
    if backbone == "siglip" and getattr(model, "use_head", False):
        # The attention-pooling head makes one pooled vector; owl reads every token, so the head is dead weight,
        # and a tower rebuilt from the saved config (vision_use_head=False) has none.
        del model.head
        model.use_head = False
        model.config.vision_use_head = False
    hf = model.config
    mean, std = _preprocessing(path, backbone, cfg, hf.image_size)
    new = VisionConfig(
        backbone=backbone,
        image_size=hf.image_size,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        patch_size=hf.patch_size,
        layer_norm_eps=hf.layer_norm_eps,
        hidden_act=hf.hidden_act,
        image_mean=mean,
        image_std=std,
    )
    tower = ClipVisionTower(model) if backbone == "clip" else SiglipVisionTower(model)
    return tower, new
