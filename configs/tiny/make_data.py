"""Regenerate configs/tiny/data/, the small committed dataset of the tiny recipes.

    .venv/bin/python configs/tiny/make_data.py

Writes, next to this script (the same seed gives byte-identical files)::

    data/images/cap_000.png ...    48x48 Owl-World scenes, each captioned a few ways
    data/images/inst_000.png ...   scenes the instructions ask about
    data/captions.jsonl            format captions: {"image": "images/cap_000.png", "caption": "..."}
    data/instruct.jsonl            format mplug: {"image": ["images/inst_000.png"], "text": "<preamble>\\nHuman: <image>
                                   \\nHuman: ...\\nAI: ...", "task_type": "owl_world_<task>"}
    data/text.jsonl                format mplug without images (text-only instructions)

Image paths are relative to the folder of the jsonl file that names them, which is where
owl's readers resolve them when a source sets no ``image_root``. The content comes from
Owl-World (a toy world of shapes, colours and words), drawn small: the tiny recipes check
the training machinery, not what a model learns. The images are stored as palette PNGs
(Owl-World scenes have few colours) so the whole folder stays a few tens of KB.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from owl.world import WorldConfig, caption, generate_items, render, sample_scene, sample_to_reference
from owl.world.tasks_text import TextSampler

SEED = 0
IMAGE_SIZE = 48  # the smallest Owl-World renders
N_CAPTION_IMAGES = 16
CAPTIONS_PER_IMAGE = 4  # different phrasings of the same scene
N_INSTRUCTIONS = 24  # one image each (all abilities but "text"; multi-image ones excluded)
N_TEXT = 32

OUT = Path(__file__).resolve().parent / "data"


def _stream(name: str) -> random.Random:
    """An independent random stream per file, so changing one count leaves the other files as they were."""
    return random.Random(f"owl-tiny-data:{SEED}:{name}")


def _save(image, path: Path) -> None:  # noqa: ANN001 (a PIL image)
    # Adaptive palette: the scenes have a background, a few flat colours and antialiased edges.
    image.quantize(colors=32, method=0, dither=0).save(path, format="PNG", optimize=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    config = WorldConfig(image_size=IMAGE_SIZE)
    images = OUT / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*.png"):  # a rerun with smaller counts leaves no stale images
        old.unlink()

    rng = _stream("captions")
    captions = []
    for i in range(N_CAPTION_IMAGES):
        scene = sample_scene(rng, config)
        name = f"images/cap_{i:03d}.png"
        _save(render(scene, config), OUT / name)
        texts: list[str] = []
        for _ in range(CAPTIONS_PER_IMAGE * 4):  # a scene has a handful of phrasings; draw until enough differ
            text = caption(scene, rng)
            if text not in texts:
                texts.append(text)
            if len(texts) == CAPTIONS_PER_IMAGE:
                break
        captions += [{"image": name, "caption": text} for text in texts]

    # Single-image abilities only, so that every instruction costs one image.
    items = [item for item in generate_items(config, _stream("instruct"), N_INSTRUCTIONS * 3) if len(item.scenes) == 1][
        :N_INSTRUCTIONS
    ]
    instruct = []
    for i, item in enumerate(items):
        name = f"images/inst_{i:03d}.png"
        _save(render(item.scenes[0], config), OUT / name)
        instruct.append(sample_to_reference(item.to_sample([name]), f"owl_world_{item.task}"))

    texts_sampler = TextSampler(_stream("text"), "train")
    text_rows = [
        sample_to_reference(item.to_sample([]), f"owl_world_{item.task}")
        for item in (texts_sampler.draw() for _ in range(N_TEXT))
    ]

    _write_jsonl(OUT / "captions.jsonl", captions)
    _write_jsonl(OUT / "instruct.jsonl", instruct)
    _write_jsonl(OUT / "text.jsonl", text_rows)
    n_images = len(list(images.glob("*.png")))
    print(
        f"wrote {OUT}: {n_images} images, {len(captions)} captions, {len(instruct)} instructions, "
        f"{len(text_rows)} text-only instructions"
    )


if __name__ == "__main__":
    main()
