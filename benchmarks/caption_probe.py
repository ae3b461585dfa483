"""How well can the LLM read an Owl-World image after stage 1? Caption fresh scenes and score each object.

A stage-1 model is trained to caption; this asks it to caption scenes drawn from the world's own sampler
(not the training files) and checks, per object of the true scene, whether the caption names its colour,
its shape, both together ("red circle"), the shape where it is ("circle at the top left") and the whole
object ("large red circle at the top left"), and whether it states the right object count and the word. It needs no
stage 2, so it says whether the visual tokens carry a readable scene before any instruction tuning.

    python benchmarks/caption_probe.py runs/demo/stage1/model --n 60

A learning curve from one run: ``--checkpoints RUN_DIR`` loads each complete checkpoint of that training run,
oldest first, over the model (the way a resumed run restores them) and probes it in turn, one line per
checkpoint (train with ``checkpoint.every`` and a large ``checkpoint.keep`` to keep them):

    python benchmarks/caption_probe.py runs/demo-long/stage1/model --checkpoints runs/demo-long/stage1
"""

from __future__ import annotations

import argparse
import random
import re

import torch
from safetensors.torch import load_file

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.generation import GenerationOptions, generate
from owl.models import load_model
from owl.processing import OwlProcessor
from owl.train.checkpoint import list_checkpoints
from owl.train.resume import restore_weights
from owl.world.captions import number_word
from owl.world.config import WorldConfig
from owl.world.render import render
from owl.world.scene import Scene, sample_scene, where_phrase


def score(scene: Scene, text: str) -> dict[str, float]:
    low = text.lower()
    n = len(scene.objects)
    out = {"count": float(re.search(rf"\b{number_word(n)}\b", low) is not None)}
    colour = shape = pair = place = whole = 0
    for o in scene.objects:
        colour += o.colour in low
        shape += o.kind in low
        pair += f"{o.colour} {o.kind}" in low
        where = where_phrase(o.position)  # either order: "circle at the top" or "at the top a small red circle"
        place += f"{o.kind} {where}" in low or re.search(rf"\b{where} an? \w+ \w+ {o.kind}\b", low) is not None
        whole += f"{o.size} {o.colour} {o.kind} {where}" in low or f"{where} a {o.size} {o.colour} {o.kind}" in low
    out |= {"colour": colour / n, "shape": shape / n, "colour+shape": pair / n, "shape+position": place / n}
    out["whole object"] = whole / n
    if scene.word:
        out["word"] = float(f'"{scene.word}"' in low)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--show", type=int, default=3)
    p.add_argument("--checkpoints", help="a training run's output dir: probe each of its checkpoints in turn")
    args = p.parse_args()
    model, proc = load_model(args.model).eval(), OwlProcessor.from_pretrained(args.model)
    cfg = WorldConfig(min_objects=args.min_objects, max_objects=args.max_objects)
    rng = random.Random(args.seed)
    scenes = [sample_scene(rng, cfg) for _ in range(args.n)]
    samples = [Sample(messages=[Message("user", IMAGE_TOKEN)], images=[render(s, cfg)], source="probe") for s in scenes]
    if not args.checkpoints:
        probe(model, proc, scenes, samples, show=args.show)
        return
    found = list_checkpoints(args.checkpoints)
    if not found:
        raise SystemExit(f"{args.checkpoints}: no complete checkpoints (train with checkpoint.every, checkpoint.keep)")
    for ckpt in found:
        restore_weights({"trainable": load_file(str(ckpt / "trainable.safetensors"))}, model)
        print(f"{ckpt.name}: ", end="", flush=True)
        probe(model, proc, scenes, samples, show=0)


def probe(model: torch.nn.Module, proc: OwlProcessor, scenes: list[Scene], samples: list[Sample], show: int) -> None:
    """Caption every scene and print the per-object scores (and the first ``show`` captions beside the truth)."""
    outs = generate(model, proc, samples, GenerationOptions(max_new_tokens=72), batch_size=16)
    totals: dict[str, list[float]] = {}
    for s, c in zip(scenes, outs):
        for k, v in score(s, c.text).items():
            totals.setdefault(k, []).append(v)
    for s, c in list(zip(scenes, outs))[:show]:
        truth = ", ".join(f"{o.size} {o.colour} {o.kind} @{o.position}" for o in s.objects)
        print(f"truth: {truth} word={s.word}\n  out: {c.text}")
    print(" ".join(f"{k} {100 * sum(v) / len(v):.1f}" for k, v in totals.items()), f"(n={len(scenes)})")


if __name__ == "__main__":
    main()
