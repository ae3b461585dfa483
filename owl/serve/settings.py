"""What an operator sets for a server: batching, limits, image sources, access. One object, defaults safe.

Defaults lean shut: remote and local image URLs are refused (only ``data:``
URLs are read), the server binds 127.0.0.1, no CORS. Every size that a client
controls has a cap, checked before the expensive step it protects (the body
before parsing, base64 length before decoding, image header before pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from owl.errors import ConfigError

if TYPE_CHECKING:  # owl.generation imports torch; the CLI's parser reads these defaults without it
    from owl.generation import GenerationOptions

MiB = 1024 * 1024


@dataclass
class ServeSettings:
    """``defaults``: the model's own generation settings (``load_generation_defaults``), under the request's;
    None: owl's built-ins only.

    ``max_tokens``: the largest ``max_tokens`` a request may ask for, and the answer length when it asks for none
    (or the model's default, if smaller). ``max_image_pixels``: None keeps the model's ``processor.max_image_pixels``.
    """

    model_name: str = "owl"
    api_key: str | None = None
    max_running: int = 16
    max_queue: int = 64
    max_prefill_tokens: int = 8192
    max_tokens: int = 2048
    max_body_bytes: int = 32 * MiB
    max_images: int = 8
    max_image_bytes: int = 16 * MiB
    max_image_pixels: int | None = None
    allow_remote_images: bool = False
    remote_image_timeout_s: float = 10.0
    allow_local_images: str | Path | None = None
    cors_origins: list[str] = field(default_factory=list)
    retry_after_s: int = 1
    defaults: GenerationOptions | None = None

    def __post_init__(self) -> None:
        for name in ("max_running", "max_prefill_tokens", "max_tokens", "max_body_bytes", "max_image_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve setting {name}={getattr(self, name)} must be >= 1")
        if self.max_queue < 0 or self.max_images < 0:
            raise ConfigError("serve settings max_queue and max_images must be >= 0")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ConfigError(f"serve setting max_image_pixels={self.max_image_pixels} must be >= 1")
        if self.remote_image_timeout_s <= 0:
            raise ConfigError("serve setting remote_image_timeout_s must be > 0")
        if self.allow_local_images is not None:
            root = Path(self.allow_local_images).expanduser()
            if not root.is_dir():
                raise ConfigError(f"--allow-local-images {self.allow_local_images}: not a directory")
            self.allow_local_images = root.resolve()
