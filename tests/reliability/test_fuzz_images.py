"""Fuzz table of image files, good-but-odd and bad, through ``ImageTransform.load`` (the one decoder that training,
generation, chat and the server share), each row with its exact outcome.

Why: an image crawl holds every mode and format PIL knows, plus cut downloads, HTML error pages and bombs. A long
run must see each good one as RGB with the right pixels and size (alpha dropped, palette expanded, 16-bit scaled,
EXIF orientation applied, the first frame of an animation) and each bad one as a ``SampleError`` whose ``reason`` it
counts (``bad_image``, ``missing_image``, ``image_too_large``) and whose message says what the file is. Bombs are
refused from the header: no pixel decoder runs, and it takes milliseconds and no memory.
"""

from __future__ import annotations

import io
import os
import re
import resource
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from owl.conversation import SampleError
from owl.errors import DataError
from owl.images import ImageTransform

CAP = 4_000_000
transform = ImageTransform(28, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), max_pixels=CAP)
default_transform = ImageTransform(28, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the configured default cap (40 MP)
RED, BLUE = (200, 40, 40), (0, 0, 255)
Rgb = tuple[int, int, int]


def save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(w: int = 40, h: int = 30, colour: Rgb = RED, mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", (w, h), colour).convert(mode)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(w: int, h: int, depth: int = 8, colour: int = 2, rows: bytes | None = None) -> bytes:
    """A hand-made PNG: with ``rows`` a real image, without it a header claiming ``w x h`` over one tiny IDAT (a
    decompression bomb's shape: a few bytes of file for gigabytes of pixels)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png16(w: int, h: int, colour: int, pixel: tuple[int, ...]) -> bytes:
    """A 16-bit PNG (colour type 2 RGB, 4 grey+alpha) filled with ``pixel``: PIL has no 16-bit RGB mode."""
    row = b"\0" + struct.pack(f">{len(pixel)}H", *pixel) * w
    return png(w, h, depth=16, colour=colour, rows=row * h)


def animated(fmt: str, **kw: object) -> bytes:
    frames = [solid(32, 32, c) for c in (BLUE, (255, 255, 0), (0, 255, 0))]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **kw)


def patched(data: bytes, marker: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """``data`` with ``values`` packed at ``offset`` bytes after the first ``marker`` (a header's size fields)."""
    at = data.index(marker) + offset
    new = struct.pack(fmt, *values)
    return data[:at] + new + data[at + len(new) :]


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def zip_of_png() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", PNG)
    return buf.getvalue()


PNG = save(solid(), "PNG")
JPEG = save(solid(), "JPEG", quality=95)
GIF = save(solid(10, 10), "GIF")
BMP = save(solid(10, 10), "BMP")
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))  # every cut loses pixels
NOISY_PNG, NOISY_JPEG = save(NOISE, "PNG"), save(NOISE, "JPEG")
NOISY_GIF, NOISY_WEBP, NOISY_TIFF = save(NOISE, "GIF"), save(NOISE, "WEBP"), save(NOISE, "TIFF")

# --------------------------------------------------------------------------------------------- usable images
# (id, bytes, file suffix, size after load, colour at the centre or None, tolerance per channel)
GOOD: list[tuple[str, Callable[[], bytes], str, tuple[int, int], Rgb | None, int]] = [
    ("img-png-rgb", lambda: PNG, ".png", (40, 30), RED, 0),
    ("img-jpeg-rgb", lambda: JPEG, ".jpg", (40, 30), RED, 3),
    ("img-png-named-jpg", lambda: PNG, ".jpg", (40, 30), RED, 0),  # the bytes decide, not the name
    ("img-jpeg-named-png", lambda: JPEG, ".png", (40, 30), RED, 3),
    ("img-png-named-txt", lambda: PNG, ".txt", (40, 30), RED, 0),
    ("img-png-no-suffix", lambda: PNG, "", (40, 30), RED, 0),
    ("img-progressive-jpeg", lambda: save(solid(), "JPEG", progressive=True, quality=95), ".jpg", (40, 30), RED, 3),
    ("img-gif", lambda: GIF, ".gif", (10, 10), None, 0),
    ("img-webp-lossless", lambda: save(solid(), "WEBP", lossless=True), ".webp", (40, 30), RED, 0),
    ("img-webp-lossy", lambda: save(solid(), "WEBP", quality=90), ".webp", (40, 30), RED, 8),
    ("img-bmp", lambda: save(solid(), "BMP"), ".bmp", (40, 30), RED, 0),
    ("img-tiff", lambda: save(solid(), "TIFF"), ".tif", (40, 30), RED, 0),
    ("img-tga", lambda: save(solid(), "TGA"), ".tga", (40, 30), RED, 0),
    ("img-pcx", lambda: save(solid(), "PCX"), ".pcx", (40, 30), RED, 0),
    ("img-qoi", lambda: save(solid(), "QOI"), ".qoi", (40, 30), RED, 0),
    ("img-jpeg2000", lambda: save(solid(), "JPEG2000"), ".jp2", (40, 30), RED, 2),
    ("img-sgi", lambda: save(solid(), "SGI"), ".sgi", (40, 30), RED, 0),
    ("img-ppm", lambda: save(solid(), "PPM"), ".ppm", (40, 30), RED, 0),
    ("img-ico", lambda: save(solid(32, 32), "ICO"), ".ico", (32, 32), RED, 0),
    ("img-mpo", lambda: save(solid(), "MPO", quality=95), ".mpo", (40, 30), RED, 3),
    ("img-greyscale", lambda: save(solid(30, 30, (90, 90, 90), "L"), "PNG"), ".png", (30, 30), (90, 90, 90), 0),
    ("img-1-bit-white", lambda: save(Image.new("1", (30, 30), 1), "PNG"), ".png", (30, 30), (255, 255, 255), 0),
    ("img-1-bit-xbm", lambda: save(Image.new("1", (16, 8), 0), "XBM"), ".xbm", (16, 8), (0, 0, 0), 0),
    ("img-grey-alpha-la", lambda: save(Image.new("LA", (30, 30), (90, 128)), "PNG"), ".png", (30, 30), (90, 90, 90), 0),
    # Alpha is dropped, not composited: a transparent pixel keeps the colour stored under it.
    ("img-rgba-half-alpha", lambda: save(Image.new("RGBA", (30, 30), (*RED, 100)), "PNG"), ".png", (30, 30), RED, 0),
    ("img-rgba-transparent", lambda: save(Image.new("RGBA", (8, 8), (10, 200, 30, 0)), "PNG"), ".png", (8, 8), (10, 200, 30), 0),
    ("img-rgba-webp", lambda: save(Image.new("RGBA", (8, 8), (*RED, 0)), "WEBP", lossless=True, exact=True), ".webp", (8, 8), RED, 0),
    ("img-palette", lambda: save(solid().convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), ".png", (40, 30), RED, 0),
    ("img-palette-transparency", lambda: save(solid(4, 4, (10, 200, 30)).convert("P"), "PNG", transparency=0), ".png", (4, 4), (0, 204, 51), 0),
    ("img-gif-transparency", lambda: save(solid(4, 4, (10, 200, 30)).convert("P"), "GIF", transparency=0), ".gif", (4, 4), (0, 204, 51), 0),
    ("img-cmyk-jpeg", lambda: save(solid(mode="CMYK"), "JPEG", quality=95), ".jpg", (40, 30), RED, 3),
    ("img-cmyk-tiff", lambda: save(solid(mode="CMYK"), "TIFF"), ".tif", (40, 30), RED, 0),
    ("img-ycbcr-tiff", lambda: save(solid(mode="YCbCr"), "TIFF"), ".tif", (40, 30), RED, 2),
    ("img-lab-tiff", lambda: save(solid(mode="LAB"), "TIFF"), ".tif", (40, 30), RED, 2),
    ("img-16-bit-grey-png", lambda: save(Image.fromarray(np.full((6, 6), 32896, np.uint16)), "PNG"), ".png", (6, 6), (128, 128, 128), 0),
    ("img-16-bit-grey-tiff", lambda: save(Image.fromarray(np.full((6, 6), 32896, np.uint16)), "TIFF"), ".tif", (6, 6), (128, 128, 128), 0),
    ("img-16-bit-white", lambda: save(Image.fromarray(np.full((6, 6), 65535, np.uint16)), "PNG"), ".png", (6, 6), (255, 255, 255), 0),
    ("img-16-bit-rgb-png", lambda: png16(5, 3, 2, (0x8080, 0x1010, 0xF0F0)), ".png", (5, 3), (128, 16, 240), 0),
    ("img-16-bit-grey-alpha-png", lambda: png16(5, 3, 4, (0x8080, 0x4000)), ".png", (5, 3), (128, 128, 128), 0),
    ("img-32-bit-int-tiff", lambda: save(Image.fromarray(np.full((4, 4), 25700, np.int32)), "TIFF"), ".tif", (4, 4), (100, 100, 100), 0),
    ("img-float-tiff", lambda: save(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF"), ".tif", (4, 4), (128, 128, 128), 0),
    ("img-animated-gif-first-frame", lambda: animated("GIF"), ".gif", (32, 32), BLUE, 0),
    ("img-animated-webp-first-frame", lambda: animated("WEBP", lossless=True), ".webp", (32, 32), BLUE, 0),
    ("img-animated-png-first-frame", lambda: animated("PNG"), ".png", (32, 32), BLUE, 0),
    ("img-one-pixel", lambda: save(solid(1, 1), "PNG"), ".png", (1, 1), RED, 0),
    ("img-very-wide", lambda: save(solid(4000, 1), "PNG"), ".png", (4000, 1), RED, 0),
    ("img-very-tall", lambda: save(solid(1, 4000), "PNG"), ".png", (1, 4000), RED, 0),
    ("img-exactly-at-cap", lambda: save(Image.new("L", (2000, 2000), 7), "PNG"), ".png", (2000, 2000), (7, 7, 7), 0),
    ("img-png-without-iend", lambda: PNG[:-12], ".png", (40, 30), RED, 0),  # PIL stops at the last IDAT
    ("img-trailing-garbage", lambda: PNG + b"appended junk" * 20, ".png", (40, 30), RED, 0),
    ("img-gif-zero-screen-size", lambda: patched(GIF, b"GIF8", 6, "<HH", 0, 0), ".gif", (10, 10), None, 0),
]  # fmt: skip


@pytest.mark.parametrize(("make", "suffix", "size", "colour", "tol"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_odd_but_valid_images_load_as_rgb(
    tmp_path: Path, make: Callable[[], bytes], suffix: str, size: tuple[int, int], colour: Rgb | None, tol: int
) -> None:
    data = make()
    path = tmp_path / f"image{suffix}"
    path.write_bytes(data)
    for src in (data, path, str(path)):
        img = transform.load(src)
        assert img.mode == "RGB" and img.size == size, (img.mode, img.size)
        if colour is not None:
            centre = np.asarray(img, dtype=int)[size[1] // 2, size[0] // 2]
            assert np.abs(centre - np.asarray(colour)).max() <= tol, centre
    assert tuple(transform(data).shape) == (3, 28, 28)


# --------------------------------------------------------------------------------------------- EXIF orientation
# An upright 6x4 image of four coloured quadrants, stored as a camera would store it for each EXIF orientation (the
# inverse of the transform that tag asks for): loading must give back the upright pixels exactly.
QUADRANTS = np.zeros((4, 6, 3), np.uint8)
QUADRANTS[:2, :3], QUADRANTS[:2, 3:], QUADRANTS[2:, :3], QUADRANTS[2:, 3:] = RED, (0, 255, 0), BLUE, (255, 255, 0)
T = Image.Transpose
STORED_AS = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90,
             7: T.TRANSVERSE, 8: T.ROTATE_270, 0: None, 9: None}  # fmt: skip


def with_orientation(img: Image.Image, orientation: int, fmt: str, **kw: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = img if STORED_AS[orientation] is None else img.transpose(STORED_AS[orientation])
    return save(stored, fmt, exif=exif, **kw)


EXIF = [(f"img-exif-orientation-{o}", o) for o in range(1, 9)] + [
    ("img-exif-orientation-0-invalid-ignored", 0),
    ("img-exif-orientation-9-invalid-ignored", 9),
]


@pytest.mark.parametrize("orientation", [c[1] for c in EXIF], ids=[c[0] for c in EXIF])
def test_exif_orientation_is_applied_exactly(orientation: int) -> None:
    img = transform.load(with_orientation(Image.fromarray(QUADRANTS), orientation, "PNG"))
    assert img.size == (6, 4)
    assert np.array_equal(np.asarray(img), QUADRANTS)


SIDEWAYS = [("img-exif-sideways-jpeg", "JPEG"), ("img-exif-sideways-webp", "WEBP"), ("img-exif-sideways-tiff", "TIFF")]


@pytest.mark.parametrize("fmt", [c[1] for c in SIDEWAYS], ids=[c[0] for c in SIDEWAYS])
def test_exif_rotated_photo_is_seen_upright(fmt: str) -> None:
    """A 40x20 photo stored sideways (orientation 6) loads as 20x40 (portrait), the red half on top."""
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:20] = (255, 0, 0)
    kw: dict = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}, "TIFF": {}}[fmt]
    img = transform.load(with_orientation(Image.fromarray(upright), 6, fmt, **kw))
    assert img.size == (20, 40) and img.width < img.height
    top, bottom = np.asarray(img, dtype=int)[8, 10], np.asarray(img, dtype=int)[32, 10]
    assert top[0] > 240 and top[1:].max() < 20 and bottom.max() < 20


# --------------------------------------------------------------------------------------------- unusable images
NOT_IDENTIFIED = r"cannot read image .*: cannot identify image file \("
DAMAGED_HEADER = r"signature but a header PIL cannot parse"
TRUNCATED = r"cannot decode image .*: image file is truncated"

# (id, bytes, reason, regex the message must match)
BAD: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("img-png-cut-at-ihdr", lambda: PNG[:20], "bad_image", r"cannot read image .*: Truncated File Read \(a PNG " + DAMAGED_HEADER),
    *[(f"img-png-cut-at-{p}pc", lambda p=p: cut(NOISY_PNG, p / 100), "bad_image", TRUNCATED) for p in (2, 30, 99)],
    *[(f"img-jpeg-cut-at-{p}pc", lambda p=p: cut(NOISY_JPEG, p / 100), "bad_image", r"cannot read image .*Truncated File Read \(a JPEG " + DAMAGED_HEADER) for p in (1, 5)],
    *[(f"img-jpeg-cut-at-{p}pc", lambda p=p: cut(NOISY_JPEG, p / 100), "bad_image", TRUNCATED + r" \(\d+ bytes not processed\)") for p in (60, 90)],
    ("img-jpeg-without-eoi", lambda: NOISY_JPEG[:-2], "bad_image", TRUNCATED),
    ("img-gif-cut-at-50pc", lambda: cut(NOISY_GIF, 0.5), "bad_image", TRUNCATED),
    ("img-webp-cut-at-50pc", lambda: cut(NOISY_WEBP, 0.5), "bad_image", r"cannot read image .*\(a RIFF container \(WebP\?\) whose header PIL cannot parse"),
    ("img-tiff-cut-at-50pc", lambda: cut(NOISY_TIFF, 0.5), "bad_image", TRUNCATED),
    ("img-utf16-text", lambda: "a caption".encode("utf-16"), "bad_image", NOT_IDENTIFIED + r"unknown binary data starting b'\\xff\\xfe"),
    ("img-svg-xml-prolog", lambda: b'<?xml version="1.0"?>\n<svg width="9" height="9"></svg>', "bad_image", NOT_IDENTIFIED + r"an SVG \(vector\) image"),
    ("img-eps-refused", lambda: save(solid(4, 4), "EPS"), "bad_image", r"is EPS \(PostScript\).*Ghostscript.*convert it to PNG"),
    ("img-png-zero-height", lambda: png(10, 0), "bad_image", NOT_IDENTIFIED + r"a PNG " + DAMAGED_HEADER),
    ("img-jpeg-zero-height", lambda: patched(JPEG, b"\xff\xc0", 5, ">H", 0), "bad_image", NOT_IDENTIFIED + r"a JPEG " + DAMAGED_HEADER),
    ("img-bmp-zero-width", lambda: patched(BMP, b"BM", 18, "<i", 0), "bad_image", NOT_IDENTIFIED + r"a BMP " + DAMAGED_HEADER),
]  # fmt: skip

OVER_CAP = r"has {}x{} pixels, over the cap of {}"
PIL_BOMB = r"image .*: Image size \(\d+ pixels\) exceeds limit of \d+ pixels, could be decompression bomb"

# (id, bytes, transform, reason, regex): headers that claim more pixels than allowed; nothing may be decoded.
BOMBS: list[tuple[str, Callable[[], bytes], ImageTransform, str]] = [
    ("img-bomb-png-default-cap", lambda: png(8000, 8000), default_transform, OVER_CAP.format(8000, 8000, 40000000)),
    ("img-bomb-png-configured-cap", lambda: png(2001, 2000), transform, OVER_CAP.format(2001, 2000, CAP)),
    ("img-bomb-png-one-row", lambda: png(CAP + 1, 1), transform, OVER_CAP.format(CAP + 1, 1, CAP)),
    ("img-bomb-png-16-bit", lambda: png(3000, 3000, depth=16), transform, OVER_CAP.format(3000, 3000, CAP)),
    ("img-bomb-png-over-pil-limit", lambda: png(20000, 20000), transform, PIL_BOMB),
    ("img-bomb-png-max-dimensions", lambda: png(2**31 - 1, 2**31 - 1), default_transform, PIL_BOMB),
    ("img-bomb-gif-65535-square", lambda: patched(GIF, b"GIF8", 6, "<HH", 65535, 65535), transform, PIL_BOMB),
    ("img-bomb-gif-over-cap", lambda: patched(GIF, b"GIF8", 6, "<HH", 8000, 8000), default_transform, OVER_CAP.format(8000, 8000, 40000000)),
    ("img-bomb-jpeg-65000-square", lambda: patched(JPEG, b"\xff\xc0", 5, ">HH", 65000, 65000), transform, PIL_BOMB),
    ("img-bomb-jpeg-over-cap", lambda: patched(JPEG, b"\xff\xc0", 5, ">HH", 8000, 8000), default_transform, OVER_CAP.format(8000, 8000, 40000000)),
    ("img-bomb-bmp-30000-square", lambda: patched(BMP, b"BM", 18, "<ii", 30000, 30000), transform, PIL_BOMB),
    ("img-bomb-bmp-over-cap", lambda: patched(BMP, b"BM", 18, "<ii", 3000, 3000), transform, OVER_CAP.format(3000, 3000, CAP)),
]  # fmt: skip


def _expect(src: object, reason: str, pattern: str, t: ImageTransform = transform) -> SampleError:
    with pytest.raises(SampleError) as info:
        t.load(src)  # type: ignore[arg-type]
    assert info.value.reason == reason, str(info.value)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert isinstance(info.value, DataError)  # the CLI prints it as one line, exit 2
    return info.value


@pytest.mark.parametrize(("make", "reason", "pattern"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_images_raise_a_counted_reason_naming_the_problem(
    tmp_path: Path, make: Callable[[], bytes], reason: str, pattern: str
) -> None:
    data = make()
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    _expect(data, reason, pattern.replace(r"image .*", r"image <bytes>.*"))
    error = _expect(path, reason, pattern)
    assert str(path) in str(error)  # a path source is named, so the skip log says which file


@pytest.mark.parametrize(("make", "t", "pattern"), [c[1:] for c in BOMBS], ids=[c[0] for c in BOMBS])
def test_bombs_are_refused_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], bytes], t: ImageTransform, pattern: str
) -> None:
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    data = make()
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    _expect(data, "image_too_large", pattern, t)
    seconds = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert decoded == [], "a pixel decoder ran on a bomb"
    assert seconds < 0.5 and grown_mib < 32, (seconds, grown_mib)


CAP_EDGE = [("img-cap-exactly-100-pixels", (10, 10), None), ("img-cap-101-pixels", (101, 1), "image_too_large")]


@pytest.mark.parametrize(("size", "reason"), [c[1:] for c in CAP_EDGE], ids=[c[0] for c in CAP_EDGE])
def test_the_configured_cap_is_inclusive(size: tuple[int, int], reason: str | None) -> None:
    small = ImageTransform(28, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), max_pixels=100)
    data = save(solid(*size), "PNG")
    if reason is None:
        assert small.load(data).size == size
    else:
        _expect(data, reason, OVER_CAP.format(*size, 100), small)


def _unreadable(d: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    (d / "locked.png").write_bytes(PNG)
    (d / "locked.png").chmod(0)
    return d / "locked.png"


# (id, make the source from a temporary folder, reason, regex)
SOURCES: list[tuple[str, Callable[[Path], object], str, str]] = [
    ("img-path-is-a-directory", lambda d: d, "missing_image", r"image file not found"),
    ("img-path-unreadable", _unreadable, "bad_image", r"cannot read image .*locked\.png: .*Permission denied"),
    ("img-pil-image-zero-size", lambda _: Image.new("RGB", (0, 0)), "bad_image", r"image <PIL image> has no pixels \(0x0\)"),
    ("img-pil-image-over-cap", lambda _: Image.new("L", (4001, 1000)), "image_too_large", OVER_CAP.format(4001, 1000, CAP)),
]  # fmt: skip


@pytest.mark.parametrize(("make", "reason", "pattern"), [c[1:] for c in SOURCES], ids=[c[0] for c in SOURCES])
def test_sources_that_are_not_image_files(
    tmp_path: Path, make: Callable[[Path], object], reason: str, pattern: str
) -> None:
    _expect(make(tmp_path), reason, pattern)  # a FIFO must not block the reader


# --------------------------------------------------------------------------------------------- properties
def _outcome(data: bytes, t: ImageTransform) -> str:
    """``decoded`` (checked to be a valid RGB image) or the SampleError reason; any other exception propagates."""
    try:
        img = t.load(data)
    except SampleError as e:
        assert e.reason in ("bad_image", "image_too_large") and str(e), e
        return e.reason
    w, h = img.size
    assert img.mode == "RGB" and 0 < w * h <= t.max_pixels
    assert np.asarray(img).shape == (h, w, 3)
    return "decoded"


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
@pytest.mark.parametrize("t", [transform], ids=["img-prop-any-bytes"])
def test_any_bytes_decode_to_rgb_or_raise_sample_error(t: ImageTransform, data: bytes) -> None:
    _outcome(data, t)


SEEDS = [PNG, JPEG, GIF, BMP, save(solid(8, 8), "WEBP"), save(solid(8, 8), "TIFF"), animated("GIF")]


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 255)), max_size=4),
    keep=st.floats(0.05, 1),
)
@pytest.mark.parametrize("t", [transform], ids=["img-prop-damaged-real-images"])
def test_damaged_real_images_decode_to_rgb_or_raise_sample_error(
    t: ImageTransform, seed: bytes, flips: list[tuple[float, int]], keep: float
) -> None:
    """Real PNG/JPEG/GIF/BMP/WebP/TIFF files with up to 4 bytes overwritten, then cut: decoded or a SampleError."""
    data = bytearray(seed)
    for at, value in flips:
        data[int(at * len(data))] = value
    _outcome(bytes(data[: max(1, int(len(data) * keep))]), t)
