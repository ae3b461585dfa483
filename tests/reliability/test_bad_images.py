"""Images as they arrive from the wild, one table row each, through owl's one image path (``ImageTransform``, used
by training, generation, chat and the server): every row either becomes a normalised ``(3, 28, 28)`` tensor with the
pixels it should have, or a ``SampleError`` whose reason a training run counts (``bad_image``, ``missing_image``,
``image_too_large``) and whose message names the problem. Bombs are refused from the header, before any pixel is
decoded.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import resource
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from owl.config import CLIP_MEAN, CLIP_STD
from owl.conversation import SampleError
from owl.images import ImageTransform
from tests.helpers import png_claiming

SIZE = 28
MAX_PIXELS = 4_000_000
transform = ImageTransform(SIZE, CLIP_MEAN, CLIP_STD, max_pixels=MAX_PIXELS)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(w: int = 40, h: int = 30, colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def _exif_rotated() -> bytes:
    """A 40x20 JPEG, left half red, with EXIF orientation 6 (the camera was turned): shown upright it is 20x40."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(arr), "JPEG", exif=exif, quality=95)


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((0, 0, 255), (255, 255, 0), (0, 255, 0))]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _grey16(value: int) -> bytes:
    return _save(Image.fromarray(np.full((16, 16), value, np.uint16)), "PNG")


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _flip_byte(data: bytes, at: float) -> bytes:
    i = int(len(data) * at)
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", _save(_rgb(), "PNG"))
    return buf.getvalue()


PNG = _save(_rgb(), "PNG")
NOISY_PNG = _save(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")  # data all the way to the end
JPEG = _save(_rgb(), "JPEG", quality=95)
RED = (200, 40, 40)

# What a good image must become: the colour at the centre after resizing (None: just a valid tensor).
OK_CASES: list[tuple[str, Callable[[], bytes], tuple[int, int, int] | None]] = [
    ("img-png-rgb", lambda: PNG, RED),
    ("img-jpeg-rgb", lambda: JPEG, RED),
    ("img-png-named-jpg", lambda: PNG, RED),  # written to a .jpg file below: the content decides, not the name
    ("img-jpeg-named-png", lambda: JPEG, RED),
    ("img-gif", lambda: _save(_rgb(), "GIF"), None),
    ("img-webp", lambda: _save(_rgb(), "WEBP", lossless=True), RED),
    ("img-bmp", lambda: _save(_rgb(), "BMP"), RED),
    ("img-tiff", lambda: _save(_rgb(), "TIFF"), RED),
    ("img-ppm", lambda: _save(_rgb(), "PPM"), RED),
    ("img-ico", lambda: _save(_rgb(32, 32), "ICO"), RED),
    ("img-progressive-jpeg", lambda: _save(_rgb(), "JPEG", progressive=True, quality=95), RED),
    ("img-greyscale", lambda: _save(Image.new("L", (30, 30), 128), "PNG"), (128, 128, 128)),
    ("img-1-bit", lambda: _save(Image.new("1", (30, 30), 1), "PNG"), (255, 255, 255)),
    ("img-grey-alpha", lambda: _save(Image.new("LA", (30, 30), (90, 128)), "PNG"), (90, 90, 90)),
    ("img-rgba-alpha", lambda: _save(Image.new("RGBA", (30, 30), (*RED, 100)), "PNG"), RED),
    ("img-rgba-transparent", lambda: _save(Image.new("RGBA", (30, 30), (0, 0, 0, 0)), "PNG"), (0, 0, 0)),
    ("img-palette", lambda: _save(_rgb().convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), RED),
    ("img-palette-transparency", lambda: _save(_rgb().convert("P"), "PNG", transparency=0), None),
    ("img-cmyk-jpeg", lambda: _save(_rgb().convert("CMYK"), "JPEG", quality=95), None),
    ("img-cmyk-tiff", lambda: _save(_rgb().convert("CMYK"), "TIFF"), RED),
    ("img-16-bit-grey-mid", lambda: _grey16(32896), (128, 128, 128)),  # 32896 / 257 = 128, not clipped to white
    ("img-16-bit-grey-black", lambda: _grey16(0), (0, 0, 0)),
    ("img-16-bit-grey-white", lambda: _grey16(65535), (255, 255, 255)),
    ("img-float-tiff", lambda: _save(Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"), (128, 128, 128)),
    ("img-animated-gif-first-frame", lambda: _animated("GIF"), (0, 0, 255)),
    ("img-animated-webp-first-frame", lambda: _animated("WEBP"), None),
    ("img-animated-png-first-frame", lambda: _animated("PNG"), (0, 0, 255)),
    ("img-one-pixel", lambda: _save(_rgb(1, 1), "PNG"), RED),
    ("img-very-wide", lambda: _save(_rgb(4000, 1), "PNG"), RED),
    ("img-very-tall", lambda: _save(_rgb(1, 4000), "PNG"), RED),
    ("img-at-pixel-cap", lambda: _save(Image.new("L", (2000, 2000), 0), "PNG"), (0, 0, 0)),
    ("img-trailing-garbage", lambda: PNG + b"garbage after IEND" * 10, RED),
]  # fmt: skip

# (id, bytes, reason, regex of the message)
BAD_CASES: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("img-zero-bytes", lambda: b"", "bad_image", r"cannot read image"),
    ("img-one-byte", lambda: b"\x89", "bad_image", r"cannot read image"),
    ("img-png-signature-only", lambda: PNG[:8], "bad_image", r"cannot (read|decode) image"),
    ("img-png-cut-at-10pc", lambda: _cut(NOISY_PNG, 0.1), "bad_image", r"cannot (read|decode) image"),
    ("img-png-cut-at-50pc", lambda: _cut(NOISY_PNG, 0.5), "bad_image", r"cannot decode image"),
    ("img-png-cut-at-90pc", lambda: _cut(NOISY_PNG, 0.9), "bad_image", r"cannot decode image"),
    ("img-png-bad-crc", lambda: _flip_byte(NOISY_PNG, 0.5), "bad_image", r"cannot (read|decode) image"),
    ("img-jpeg-soi-only", lambda: JPEG[:2], "bad_image", r"cannot read image"),
    ("img-jpeg-cut-at-30pc", lambda: _cut(_save(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG"), 0.3), "bad_image", r"truncated"),
    ("img-jpeg-cut-at-80pc", lambda: _cut(_save(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG"), 0.8), "bad_image", r"truncated"),
    ("img-gif-cut", lambda: _cut(_animated("GIF"), 0.3), "bad_image", r"cannot (read|decode) image"),
    ("img-text-file", lambda: b"a caption, not an image\n", "bad_image", r"cannot identify image file"),
    ("img-html-error-page", lambda: b"<!doctype html><html><body>404 Not Found</body></html>", "bad_image", r"cannot identify image file"),
    ("img-svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "bad_image", r"cannot identify image file"),
    ("img-pdf", lambda: b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF", "bad_image", r"cannot identify image file"),
    ("img-zip-archive", _zip, "bad_image", r"cannot identify image file"),
    ("img-gzip-of-png", lambda: gzip.compress(PNG), "bad_image", r"cannot identify image file"),
    ("img-random-bytes", lambda: random.Random(0).randbytes(4096), "bad_image", r"cannot identify image file"),
    ("img-json", lambda: b'{"image": "a.png"}', "bad_image", r"cannot identify image file"),
    ("img-bomb-over-owl-cap", lambda: png_claiming(4000, 4000), "image_too_large", r"has 4000x4000 pixels, over the cap of 4000000"),
    ("img-bomb-over-pil-limit", lambda: png_claiming(20000, 20000), "image_too_large", r"decompression bomb"),
    ("img-bomb-one-row", lambda: png_claiming(4_000_001, 1), "image_too_large", r"has 4000001x1 pixels"),
    ("img-bomb-16-bit", lambda: png_claiming(3000, 3000, depth=16), "image_too_large", r"has 3000x3000 pixels"),
    ("img-png-zero-width", lambda: png_claiming(0, 10), "bad_image", r"cannot (read|decode) image|no pixels"),
]  # fmt: skip


def _write(tmp_path: Path, case: str, data: bytes) -> Path:
    suffix = ".jpg" if case == "img-png-named-jpg" else ".png"
    path = tmp_path / f"{case}{suffix}"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("make", "colour"), [c[1:] for c in OK_CASES], ids=[c[0] for c in OK_CASES])
@pytest.mark.parametrize("source", ["path", "bytes"])
def test_good_images_in_any_format_and_mode_decode(tmp_path: Path, make, colour, source: str) -> None:
    data = make()
    x = transform(_write(tmp_path, "img-png-named-jpg" if data is PNG else "x", data) if source == "path" else data)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and torch.isfinite(x).all()
    if colour is not None:
        mean, std = np.asarray(CLIP_MEAN), np.asarray(CLIP_STD)
        centre = (x[:, SIZE // 2, SIZE // 2].numpy() * std + mean) * 255
        assert np.abs(centre - np.asarray(colour)).max() <= 3, centre


@pytest.mark.parametrize(("make", "reason", "pattern"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_images_are_a_counted_reason_not_a_crash(tmp_path: Path, make, reason: str, pattern: str) -> None:
    import re

    for src in (make(), _write(tmp_path, "bad", make())):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(SampleError) as info:
            transform(src)
        assert info.value.reason == reason, str(info.value)
        assert re.search(pattern, str(info.value)), str(info.value)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 64, f"{grown_mib:.0f} MiB more peak memory: the pixels were decoded"


def test_exif_orientation_is_applied() -> None:
    """img-exif-rotated: a sideways photo is seen upright (the red half ends up on top)."""
    img = transform.load(_exif_rotated())
    assert img.size == (20, 40)
    top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
    assert top[0] > 200 and top[1] < 60 and bottom.max() < 60


PATH_CASES = [
    ("img-path-missing", lambda d: d / "nope.png", "missing_image", r"image file not found: .*nope.png"),
    ("img-path-directory", lambda d: d, "missing_image", r"image file not found"),
    ("img-path-dangling-symlink", lambda d: (d / "link.png").symlink_to(d / "gone.png") or d / "link.png", "missing_image", r"image file not found"),
    ("img-path-dev-null", lambda _: Path(os.devnull), "missing_image", r"image file not found: /dev/null"),
    ("img-path-fifo", lambda d: os.mkfifo(d / "pipe.png") or d / "pipe.png", "missing_image", r"image file not found"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "reason", "pattern"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_image_paths_that_are_not_image_files(tmp_path: Path, make, reason: str, pattern: str) -> None:
    import re

    with pytest.raises(SampleError) as info:
        transform(make(tmp_path))  # a FIFO must not block the reader forever
    assert info.value.reason == reason and re.search(pattern, str(info.value)), str(info.value)


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600), st.builds(lambda cut, flip: _flip_byte(PNG, flip)[:cut],
                                                    st.integers(0, len(PNG)), st.floats(0, 0.99))))  # fmt: skip
def test_any_bytes_decode_or_fail_with_a_reason(data: bytes) -> None:
    try:
        x = transform(data)
    except SampleError as e:
        assert e.reason in ("bad_image", "image_too_large") and str(e)
        return
    assert x.shape == (3, SIZE, SIZE) and torch.isfinite(x).all()
