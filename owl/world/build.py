"""Write an Owl-World to disk: images, stage-1 captions, stage-2 instructions, text-only
instructions, the held-out eval split and a manifest.

Layout of ``out_dir`` (all paths inside the files are relative to it)::

    images/000001.png ...        caption images
    images/inst_000001.png ...   instruction images
    images/eval_000001.png ...   eval images; no eval scene equals a training scene
    captions.jsonl               {"image": "images/000001.png", "caption": "..."}
    instruct.jsonl               reference-format lines with images (task_type owl_world_<task>)
    text.jsonl                   reference-format lines without images (kept apart so a mixture can weight them)
    eval.jsonl                   {"id", "image", "messages", "answer", "ability", "task", "scorer", "chance"}
    manifest.json                seed, config, font, counts per file and per ability, mean chance per ability

Each split draws from its own random stream (derived from the seed and the split name),
so changing one count does not change the other files (the eval split can differ only where
a held-out scene would have equalled a new training scene), and the same seed and config
give byte-identical files. Files of an earlier, larger build in the same folder are not
deleted.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from owl.errors import ConfigError
from owl.world.captions import caption
from owl.world.config import WorldConfig, WorldSpec
from owl.world.formats import sample_to_reference, write_jsonl
from owl.world.generate import generate_items, items_by_ability, supported_abilities
from owl.world.items import OWLEVAL_GROUP, WorldItem
from owl.world.render import font_name, render
from owl.world.scene import Scene, sample_scene
from owl.world.tasks_text import TextSampler

FORMAT_VERSION = "owl-world/1"
_DEFAULTS = WorldSpec()


def _stream(seed: int, name: str) -> random.Random:
    return random.Random(f"owl-world:{seed}:{name}")


class _Images:
    """Assigns file names to scenes in order and renders them all at the end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs: list[tuple[Scene, str]] = []

    def add(self, scene: Scene) -> str:
        path = f"images/{self.prefix}{len(self.jobs) + 1:06d}.png"
        self.jobs.append((scene, path))
        return path

    def scenes(self) -> set[Scene]:
        return {scene for scene, _ in self.jobs}


def _reference_lines(items: list[WorldItem], images: _Images) -> list[dict]:
    rows = []
    for item in items:
        paths = [images.add(scene) for scene in item.scenes]
        rows.append(sample_to_reference(item.to_sample(paths), f"owl_world_{item.task}"))
    return rows


def build_world(
    out_dir: str | Path,
    config: WorldConfig | None = None,
    seed: int = _DEFAULTS.seed,
    n_captions: int = _DEFAULTS.n_captions,
    n_instructions: int = _DEFAULTS.n_instructions,
    n_text: int = _DEFAULTS.n_text,
    n_eval: int = _DEFAULTS.n_eval,
    *,
    n_captions_single: int = 0,
    ability_weights: Mapping[str, float] | None = None,
    qa_per_image: int = 1,
    balance_answers: float = 0.0,
    caption_position_first: float = 0.0,
    progress: bool | None = None,
) -> dict:
    """Generate and write a world; returns the manifest (also written as ``manifest.json``).

    ``ability_weights`` sets the share of each image ability in ``instruct.jsonl``
    (default: all equal) and ``qa_per_image`` how many questions each of its single-scene
    images carries (see :func:`owl.world.generate.packed_item`); the eval split always covers
    every supported ability, text included, equally, one question per item. ``balance_answers`` caps how
    often one answer is taught per question type (see :class:`owl.world.generate.AnswerBalancer`);
    ``caption_position_first`` the share of captions that name each object place first (:func:`caption`).
    ``n_captions_single`` adds ``captions_single.jsonl``: captions of one-object scenes (images ``one_*.png``),
    the easy end of a stage-1 curriculum (a frozen LLM learns to read one object in ~100 steps, four in
    several hundred; benchmarks/NOTES.md); their scenes are training scenes, so the eval split avoids them too.
    ``progress=None`` shows a bar only on a terminal.
    """
    config = config if config is not None else WorldConfig()
    for name, n in (
        ("n_captions", n_captions),
        ("n_instructions", n_instructions),
        ("n_text", n_text),
        ("n_eval", n_eval),
        ("n_captions_single", n_captions_single),
    ):
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"{name}={n!r} must be an int >= 0")
    if not isinstance(caption_position_first, int | float) or not 0 <= caption_position_first <= 1:
        raise ConfigError(f"caption_position_first={caption_position_first!r} must be a share in [0, 1]")
    out = Path(out_dir)
    caption_images, instruct_images, eval_images = _Images(""), _Images("inst_"), _Images("eval_")
    single_images = _Images("one_")

    rng = _stream(seed, "captions")
    captions = []
    for _ in range(n_captions):
        scene = sample_scene(rng, config)
        captions.append({"image": caption_images.add(scene), "caption": caption(scene, rng, caption_position_first)})
    rng = _stream(seed, "captions-single")  # its own stream: the other files stay as they were without it
    captions_single = []
    for _ in range(n_captions_single):
        scene = sample_scene(rng, config, n_objects=1)
        text = caption(scene, rng, caption_position_first)
        captions_single.append({"image": single_images.add(scene), "caption": text})

    weights = ability_weights or {a: 1.0 for a in supported_abilities(config) if a != "text"}
    instruct_items = generate_items(
        config,
        _stream(seed, "instruct"),
        n_instructions,
        weights=weights,
        qa_per_image=qa_per_image,
        balance_answers=balance_answers,
    )
    instruct = _reference_lines(instruct_items, instruct_images)
    texts = TextSampler(_stream(seed, "text"), "train")
    text_items = [texts.draw() for _ in range(n_text)]
    text_rows = _reference_lines(text_items, instruct_images)  # text items have no images

    train_scenes = caption_images.scenes() | instruct_images.scenes() | single_images.scenes()
    eval_items = generate_items(config, _stream(seed, "eval"), n_eval, split="eval", exclude=train_scenes)
    eval_rows = []
    for i, item in enumerate(eval_items, start=1):
        eval_rows.append(item.to_eval(f"owl-world-eval-{i:06d}", [eval_images.add(s) for s in item.scenes]))

    jobs = caption_images.jobs + single_images.jobs + instruct_images.jobs + eval_images.jobs
    (out / "images").mkdir(parents=True, exist_ok=True)
    for scene, path in tqdm(
        jobs, desc="rendering Owl-World", unit="img", disable=None if progress is None else not progress
    ):
        render(scene, config).save(out / path, format="PNG")

    write_jsonl(out / "captions.jsonl", captions)
    if n_captions_single:
        write_jsonl(out / "captions_single.jsonl", captions_single)
    write_jsonl(out / "instruct.jsonl", instruct)
    write_jsonl(out / "text.jsonl", text_rows)
    write_jsonl(out / "eval.jsonl", eval_rows)
    eval_chance: dict[str, list[float]] = {}
    for row in eval_rows:
        eval_chance.setdefault(row["ability"], []).append(row["chance"])
    files = {"captions": "captions.jsonl"}
    counts = {"captions": len(captions)}
    if n_captions_single:
        files["captions_single"], counts["captions_single"] = "captions_single.jsonl", len(captions_single)
    manifest = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "config": config.to_dict(),
        "font": font_name(),
        "files": {
            **files,
            "instruct": "instruct.jsonl",
            "text": "text.jsonl",
            "eval": "eval.jsonl",
            "images": "images",
        },
        "counts": {
            **counts,
            "instruct": len(instruct),
            "text": len(text_rows),
            "eval": len(eval_rows),
            "train_images": len(caption_images.jobs) + len(single_images.jobs) + len(instruct_images.jobs),
            "eval_images": len(eval_images.jobs),
        },
        "instruct_abilities": items_by_ability(instruct_items),
        "eval_abilities": items_by_ability(eval_items),
        "eval_chance": {a: sum(c) / len(c) for a, c in eval_chance.items()},
        "owleval_groups": OWLEVAL_GROUP,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
