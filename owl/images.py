"""Image loading and preprocessing with PIL + numpy (torchvision does not install beside this torch).

CLIP-style: resize to a square ``size`` with bicubic resampling (aspect ratio
ignored, as in the reference), scale to [0, 1], normalise per channel. The
training-time augmentation of the reference (random resized crop, scale
0.5-1, and horizontal flip) is optional and draws from an explicit RNG so a
resumed run sees the same crops.

Order of RGB conversion and resize: owl (and the reference training loader)
converts to RGB first. The reference inference processor resized in the
image's own mode and converted after, which gives different pixels for
palette images (PIL resizes those with nearest neighbour) and images with
alpha (resized premultiplied); ``resize_first=True`` reproduces that for
``processor.compat: mplug-owl`` generation, so a converted model sees the
pixels it was demoed with.

EXIF orientation is applied (a photo taken sideways is seen upright; the
reference did not), and 16-bit or float greyscale is scaled to 8 bits rather
than clipped to white.

Untrusted images: a pixel cap is checked from the header before decoding, and
every failure becomes a ``SampleError`` with a reason (``missing_image``,
``bad_image``, ``image_too_large``) so a long run skips and counts it. Data PIL cannot identify is
described from its first bytes (empty, text, HTML, SVG, PDF, zip, a damaged
header) rather than by PIL's "cannot identify <BytesIO object>", and EPS is
refused: PIL would run Ghostscript on it.
"""

from __future__ import annotations

import codecs
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from owl.conversation import ImageSource, SampleError
from owl.errors import ConfigError

_ORIENTATION = 0x0112  # the EXIF tag

_REFUSED_FORMATS = frozenset({"EPS"})
"""Formats PIL decodes by running an external interpreter (Ghostscript) on the file: never for untrusted input."""

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG signature but a header PIL cannot parse: damaged, cut short, or a zero width or height"),
    (b"\xff\xd8", "a JPEG signature but a header PIL cannot parse: damaged, cut short, or a zero width or height"),
    (b"GIF8", "a GIF signature but a header PIL cannot parse"),
    (b"BM", "a BMP signature but a header PIL cannot parse: damaged, cut short, or a zero width or height"),
    (b"RIFF", "a RIFF container (WebP?) whose header PIL cannot parse: damaged or cut short"),
    (b"II*\x00", "a TIFF signature but a header PIL cannot parse: damaged or cut short"),
    (b"MM\x00*", "a TIFF signature but a header PIL cannot parse: damaged or cut short"),
    (b"%PDF", "a PDF document, not an image"),
    (b"PK\x03\x04", "a zip archive, not an image"),
    (b"\x1f\x8b", "gzip-compressed data, not an image"),
)


def _describe(src: str | Path | bytes | bytearray) -> str:
    """What data PIL could not identify looks like, from its first bytes, for the error message."""
    try:
        if isinstance(src, (bytes, bytearray)):
            head = bytes(src[:512])
        else:
            with open(src, "rb") as f:
                head = f.read(512)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if not head:
        return "an empty file, 0 bytes"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in lowered:
        return "an SVG (vector) image, which owl does not rasterise: convert it to PNG"
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not an image (a download that returned an error page?)"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # not final: a character cut at byte 512 is fine
    except UnicodeDecodeError:
        return f"unknown binary data starting {head[:8]!r}"
    return f"text, not an image: {head[:40].decode('utf-8', 'replace')!r}"


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer and float greyscale as 8-bit ``L``. PIL's own conversion clips these to 255, so a
    16-bit scan of mid-grey (32768) would arrive white; here integers are read as 16-bit and floats as [0, 1]
    (or [0, 255] when larger values occur)."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = np.nanmax(arr) if arr.size else 1.0
        arr = np.nan_to_num(arr) * (255.0 if top <= 1.0 else 1.0)
    else:
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB; a mode PIL cannot convert is a bad image, not a crash."""
    try:
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            img = _to_8bit(img)
        return img.convert("RGB")
    except Exception as e:
        raise SampleError("bad_image", f"cannot convert a {img.mode} image to RGB: {e}") from e


@dataclass
class Augment:
    """Train-time augmentation. ``flip_prob`` should be 0 when answers mention left/right."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"augment.crop_scale={self.crop_scale} must satisfy 0 < min <= max <= 1")
        if not 0 <= self.flip_prob <= 1:
            raise ConfigError(f"augment.flip_prob={self.flip_prob} must be in [0, 1]")


class ImageTransform:
    """Turns an image source into a normalised ``(3, size, size)`` float tensor."""

    def __init__(
        self,
        size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        max_pixels: int = 40_000_000,
        augment: Augment | None = None,
    ) -> None:
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.max_pixels = max_pixels
        self.augment = augment

    def load(self, src: ImageSource) -> Image.Image:
        """Open and decode an image as RGB, or raise ``SampleError`` naming the image and the problem."""
        return _rgb(self.decode(src))

    def decode(self, src: ImageSource) -> Image.Image:
        """Open and decode an image in its own mode (RGBA, P, L, ...), or raise ``SampleError``."""
        if isinstance(src, Image.Image):
            img, name = src, "<PIL image>"
        else:
            name = "<bytes>" if isinstance(src, (bytes, bytearray)) else str(src)
            if not isinstance(src, (bytes, bytearray)) and not Path(src).is_file():
                raise SampleError("missing_image", f"image file not found: {src}")
            try:
                img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
            except Image.DecompressionBombError as e:  # PIL's own header check (over 2x its pixel limit)
                raise SampleError("image_too_large", f"image {name}: {e}") from e
            except Exception as e:  # PIL raises many types for bad data, in words that do not say what the data is
                # (UnidentifiedImageError names a BytesIO object; a cut WebP "could not create decoder object")
                what = "cannot identify image file" if isinstance(e, UnidentifiedImageError) else str(e)
                raise SampleError("bad_image", f"cannot read image {name}: {what} ({_describe(src)})") from e
            if img.format in _REFUSED_FORMATS:
                raise SampleError(
                    "bad_image",
                    f"image {name} is {img.format} (PostScript), which PIL decodes by running Ghostscript; "
                    "untrusted PostScript is not run: convert it to PNG or JPEG",
                )
        w, h = img.size
        if w * h > self.max_pixels:
            raise SampleError("image_too_large", f"image {name} has {w}x{h} pixels, over the cap of {self.max_pixels}")
        if w == 0 or h == 0:
            raise SampleError("bad_image", f"image {name} has no pixels ({w}x{h})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()
                if img.getexif().get(_ORIENTATION, 1) != 1:  # a phone photo taken sideways: show it upright
                    img = ImageOps.exif_transpose(img)
            return img
        except Exception as e:
            raise SampleError("bad_image", f"cannot decode image {name}: {e}") from e

    def _random_crop_box(self, w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        # The RandomResizedCrop rule: up to 10 tries at a random area and aspect ratio, else a centre crop.
        area = w * h
        lo, hi = (math.log(r) for r in self.augment.crop_ratio)
        for _ in range(10):
            target = area * rng.uniform(*self.augment.crop_scale)
            ratio = math.exp(rng.uniform(lo, hi))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return x, y, x + cw, y + ch
        s = min(w, h)
        return (w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s

    def __call__(
        self, src: ImageSource, rng: np.random.Generator | None = None, resize_first: bool = False
    ) -> torch.Tensor:
        """``resize_first``: resize in the image's own mode, then convert to RGB (the reference's inference order);
        otherwise convert first (owl's and the reference training loader's order). Crop and flip are unchanged."""
        img = self.decode(src) if resize_first else self.load(src)
        if self.augment is not None and rng is not None:
            img = img.crop(self._random_crop_box(*img.size, rng))
            if rng.uniform() < self.augment.flip_prob:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        try:
            img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
        except Exception as e:  # only an unusual mode kept for resize_first can fail here
            raise SampleError("bad_image", f"cannot resize a {img.mode} image: {e}") from e
        if resize_first:
            img = _rgb(img)
        arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
        arr = (arr - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # (3, H, W)
