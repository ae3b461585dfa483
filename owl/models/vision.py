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
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from owl.config import VisionConfig
from owl.errors import ConfigError, InputNotFound
from owl.models import packaged


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


def load_vision(path: str | Path, cfg: VisionConfig) -> tuple[nn.Module, VisionConfig]:
    """Load a pretrained tower from a local path and return it with the config it implies.

    ``path`` is a local HF CLIP/SigLIP directory (a full CLIP model directory
    works too: only its vision part is read), or a ``.pth`` state dict for
    ``efficientnet``. The returned config records the checkpoint's own sizes.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(
            f"vision weights not found: {path} (a local HF CLIP/SigLIP directory, an "
            f"EfficientNet .pth file, or a packaged name: {', '.join(packaged.VISION)})"
        )
    if cfg.backbone == "efficientnet":
        tower = EfficientNetTower(cfg)
        tower.load_pretrained(path)
        return tower, cfg
    klass = CLIPVisionModel if cfg.backbone == "clip" else SiglipVisionModel
    model = klass.from_pretrained(str(path), dtype=torch.float32)
    hf = model.config
    new = VisionConfig(
        backbone=cfg.backbone,
        image_size=hf.image_size,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        patch_size=hf.patch_size,
        layer_norm_eps=hf.layer_norm_eps,
        hidden_act=hf.hidden_act,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
    )
    tower = ClipVisionTower(model) if cfg.backbone == "clip" else SiglipVisionTower(model)
    return tower, new
