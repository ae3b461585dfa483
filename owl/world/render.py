"""Draw a :class:`Scene` as an RGB image.

Drawn at 2x and downsampled with a box filter: shapes get anti-aliased edges (closer to
photos a pretrained CNN has seen) while every pixel well inside a shape keeps the exact
palette colour, and the result stays byte-identical for a given scene and font file.

Font: DejaVu Sans Bold from matplotlib (a project dependency that ships it), found
without importing matplotlib; if that file is missing, Pillow's built-in scalable font
(``ImageFont.load_default(size=...)``, needs FreeType). :func:`font_name` says which one
was used, and the world manifest records it, because a different font changes the bytes.
"""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from owl.world.config import BACKGROUND_RGB, COLOUR_RGB, GRID, SIZES, TEXT_RGB, WorldConfig
from owl.world.scene import Scene, SceneObject

SUPERSAMPLE = 2


def _matplotlib_font() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        if path.is_file():
            return path
    return None


@cache
def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _matplotlib_font()
    if path is not None:
        return ImageFont.truetype(str(path), size_px)
    return ImageFont.load_default(size=size_px)


def font_name() -> str:
    """Which font scene words are drawn with (recorded in the manifest)."""
    path = _matplotlib_font()
    return f"matplotlib:{path.name}" if path is not None else "pillow:load_default"


def cell_center(cell: int, image_size: int) -> tuple[float, float]:
    """Centre (x, y) of a grid cell in output-image pixels."""
    step = image_size / GRID
    return ((cell % GRID + 0.5) * step, (cell // GRID + 0.5) * step)


def object_radius(size: str, image_size: int) -> float:
    return SIZES[size] * image_size / GRID


def _regular(cx: float, cy: float, r: float, n: int, start_deg: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(math.radians(start_deg + 360 * i / n)),
            cy + r * math.sin(math.radians(start_deg + 360 * i / n)),
        )
        for i in range(n)
    ]


def _outline(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices for a shape of radius r centred on (cx, cy); None for the circle."""
    if kind == "circle":
        return None
    if kind == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "diamond":
        return _regular(cx, cy, r, 4, -90)
    if kind == "triangle":
        # Equilateral, pointing up, shifted down so its box is centred in the cell.
        return _regular(cx, cy + r * 0.2, r * 1.1, 3, -90)
    if kind == "pentagon":
        return _regular(cx, cy + r * 0.08, r, 5, -90)
    if kind == "hexagon":
        return _regular(cx, cy, r, 6, 0)
    if kind == "star":
        outer = _regular(cx, cy + r * 0.1, r * 1.08, 5, -90)
        inner = _regular(cx, cy + r * 0.1, r * 0.48, 5, -90 + 36)
        return [p for pair in zip(outer, inner) for p in pair]
    if kind == "cross":
        a, t = r * 0.95, r * 0.34
        return [
            (cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t),
            (cx + a, cy + t), (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a),
            (cx - t, cy + t), (cx - a, cy + t), (cx - a, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    raise ValueError(f"cannot draw shape kind {kind!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, canvas: int) -> None:
    cx, cy = cell_center(obj.cell, canvas)
    r = object_radius(obj.size, canvas)
    fill = COLOUR_RGB[obj.colour]
    points = _outline(obj.kind, cx, cy, r)
    if points is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(points, fill=fill)


def render(scene: Scene, config: WorldConfig) -> Image.Image:
    """The scene as an ``image_size`` x ``image_size`` RGB image on a plain light background."""
    canvas = config.image_size * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, canvas)
    if scene.word is not None and scene.word_cell is not None:
        font = _font(max(8, round(config.font_scale * canvas)))
        cx, cy = cell_center(scene.word_cell, canvas)
        draw.text((cx, cy), scene.word, fill=TEXT_RGB, font=font, anchor="mm")
    return image.resize((config.image_size, config.image_size), Image.Resampling.BOX)
