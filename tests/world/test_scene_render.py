"""Config validation, scene sampling invariants, and that the renderer draws what the scene says."""

from __future__ import annotations

import io
import random

import pytest

from owl.world import COLOUR_RGB, SHAPE_KINDS, Scene, SceneObject, WorldConfig, render, sample_scene
from owl.world.config import BACKGROUND_RGB, GRID, TEXT_RGB
from owl.world.render import cell_center, font_name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 16}, "image_size=16"),
        ({"shapes": ("circle", "blob")}, "'blob'"),
        ({"colours": ("red",)}, "need 2"),
        ({"colours": ("red", "red")}, "duplicates"),
        ({"max_objects": 7}, r"max_objects=7 must be an int in \[1, 6\]"),
        ({"max_objects": 0}, "max_objects=0"),
        ({"min_objects": 5}, "min_objects=5"),
        ({"word_prob": 1.5}, "word_prob=1.5"),
        ({"words": ("Cat",)}, "'Cat'"),
        ({"words": ("elephants",)}, "9 letters"),
        ({"sizes": ("medium",)}, "'medium'"),
        ({"words": "cat"}, "list of names"),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**kwargs)


def test_config_roundtrips_through_dict_and_allows_nine_objects_without_words():
    config = WorldConfig(max_objects=5, shapes=["circle", "star"])
    assert WorldConfig.from_dict(config.to_dict()) == config
    assert WorldConfig(max_objects=9, word_prob=0.0).max_objects == 9
    with pytest.raises(ValueError, match="unknown WorldConfig keys"):
        WorldConfig.from_dict({"colors": ["red"]})


def test_sample_scene_invariants_and_determinism():
    config = WorldConfig()
    scenes = [sample_scene(random.Random(7), config) for _ in range(2)]
    assert scenes[0] == scenes[1]
    rng = random.Random(0)
    seen_words = 0
    for _ in range(500):
        scene = sample_scene(rng, config)
        cells = [o.cell for o in scene.objects]
        assert len(set(cells)) == len(cells), "objects must not share a grid cell"
        assert config.min_objects <= len(cells) <= config.max_objects
        for o in scene.objects:
            assert o.kind in config.shapes and o.colour in config.colours and o.size in config.sizes
        if scene.word is not None:
            seen_words += 1
            assert scene.word in config.words and scene.word_cell in (1, 4, 7)
            assert all(o.row != scene.word_cell // GRID for o in scene.objects), "the word row holds no object"
    assert 100 < seen_words < 300  # word_prob = 0.4


def test_sample_scene_pins_count_and_word():
    scene = sample_scene(random.Random(1), WorldConfig(), n_objects=4, with_word=True)
    assert len(scene.objects) == 4 and scene.word is not None
    with pytest.raises(ValueError, match="does not fit"):
        sample_scene(random.Random(1), WorldConfig(), n_objects=7, with_word=True)


def _pixel(image, x, y):
    return image.getpixel((int(x), int(y)))


@pytest.mark.parametrize("kind", SHAPE_KINDS)
@pytest.mark.parametrize("size", ["small", "large"])
def test_object_centre_pixel_has_its_colour(kind, size):
    config = WorldConfig(shapes=SHAPE_KINDS, colours=tuple(COLOUR_RGB))
    objects = tuple(SceneObject(kind, colour, size, cell) for cell, colour in enumerate(list(COLOUR_RGB)))
    image = render(Scene(objects), config)
    assert image.mode == "RGB" and image.size == (128, 128)
    for o in objects:
        x, y = cell_center(o.cell, config.image_size)
        assert _pixel(image, x, y) == COLOUR_RGB[o.colour], (kind, size, o.position)
    # corners of the image are background, and large shapes cover more pixels than small ones
    assert _pixel(image, 0, 0) == BACKGROUND_RGB


def test_large_is_larger_and_empty_cells_stay_background():
    config = WorldConfig()
    small = render(Scene((SceneObject("square", "red", "small", 4),)), config)
    large = render(Scene((SceneObject("square", "red", "large", 4),)), config)
    red = COLOUR_RGB["red"]
    area = [sum(p == red for p in im.getdata()) for im in (small, large)]
    assert 2.0 < area[1] / area[0] < 4.0
    x, y = cell_center(0, 128)
    assert _pixel(large, x, y) == BACKGROUND_RGB


def test_word_is_drawn_in_dark_ink_in_its_row():
    config = WorldConfig()
    image = render(Scene((SceneObject("circle", "blue", "large", 0),), word="night", word_cell=7), config)
    rows = {
        r: [image.getpixel((x, y)) for y in range(r * 43, min(128, r * 43 + 42)) for x in range(128)] for r in (0, 1, 2)
    }
    dark = {r: sum(max(p) < 90 for p in px) for r, px in rows.items()}
    assert dark[2] > 150 and dark[0] == 0 and dark[1] == 0
    assert min(max(p) for p in rows[2]) <= max(TEXT_RGB) + 10
    assert font_name().startswith(("matplotlib:", "pillow:"))


def test_render_is_byte_identical_for_a_scene():
    config = WorldConfig()
    scene = sample_scene(random.Random(3), config, with_word=True)

    def png() -> bytes:
        buf = io.BytesIO()
        render(scene, config).save(buf, format="PNG")
        return buf.getvalue()

    assert png() == png()
    other = sample_scene(random.Random(4), config, with_word=True)
    assert render(other, config).tobytes() != render(scene, config).tobytes()
