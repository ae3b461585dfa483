"""Does an instruction-tuned Owl answer as well as it reads? Caption and question the same fresh scenes.

The caption probe (``caption_probe.py``) says what the visual tokens let the LLM describe; the held-out eval says
how it answers. When answers lag, two causes look alike: the question is not routed to what the model can read,
or the reading itself is the limit. This asks one stage-2 model, on the same scenes drawn from the world's
sampler (not the training files), for a caption and three questions (the count; the colour and the shape of one
object named by its place) and cross-tabulates: an answer right where the caption named that object whole
(size, colour, shape and place, in either order) means the reading was there to use.

    python benchmarks/qa_probe.py runs/demo-long/stage2/model --n 96
"""

from __future__ import annotations

import argparse
import math
import random
import re

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.generation import GenerationOptions, generate
from owl.models import load_model
from owl.processing import OwlProcessor
from owl.world.captions import number_word
from owl.world.config import WorldConfig
from owl.world.render import render
from owl.world.scene import SceneObject, sample_scene, where_phrase
from owl.world.scorers import normalize


def named_whole(text: str, o: SceneObject) -> bool:
    """The caption names ``o`` with its size, colour, shape and place, object first or place first."""
    low, where = text.lower(), where_phrase(o.position)
    return f"{o.size} {o.colour} {o.kind} {where}" in low or f"{where} a {o.size} {o.colour} {o.kind}" in low


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--seed", type=int, default=777)
    args = p.parse_args()
    model, proc = load_model(args.model).eval(), OwlProcessor.from_pretrained(args.model)
    cfg, rng = WorldConfig(), random.Random(args.seed)
    scenes = [sample_scene(rng, cfg) for _ in range(args.n)]
    images = [render(s, cfg) for s in scenes]
    picked = [rng.choice(s.objects) for s in scenes]

    def ask(question: str | None, tokens: int) -> list[str]:
        """One answer per scene; ``question`` may use {where} (the picked object's place); None asks for a caption."""
        samples = []
        for image, o in zip(images, picked):
            text = (
                IMAGE_TOKEN if question is None else f"{IMAGE_TOKEN}\n{question.format(where=where_phrase(o.position))}"
            )
            samples.append(Sample(messages=[Message("user", text)], images=[image], source="probe"))
        return [c.text for c in generate(model, proc, samples, GenerationOptions(max_new_tokens=tokens), batch_size=16)]

    captions = ask(None, 72)
    count = ask("How many shapes are there?", 8)
    colour = ask("What colour is the shape {where}?", 8)
    shape = ask("What shape is {where}?", 8)
    n = len(scenes)
    cap_count = [
        re.search(rf"\b{number_word(len(s.objects))}\b", c.lower()) is not None for s, c in zip(scenes, captions)
    ]
    qa_count = [normalize(a) == str(len(s.objects)) for s, a in zip(scenes, count)]
    whole = [named_whole(c, o) for c, o in zip(captions, picked)]
    qa_colour = [normalize(a) == o.colour for a, o in zip(colour, picked)]
    qa_shape = [normalize(a) == o.kind for a, o in zip(shape, picked)]

    def pct(xs: list[bool]) -> str:
        """The rate and its 95% half-width (normal approximation): at 96 scenes a rate near 45% is +-10 points,
        so two models' rates need --n 288 or more before a difference of ~10 means anything (NOTES.md §17)."""
        p = sum(xs) / max(len(xs), 1)
        return f"{100 * p:.1f}±{196 * math.sqrt(p * (1 - p) / max(len(xs), 1)):.0f}"

    def given(xs: list[bool], cond: list[bool]) -> str:
        return pct([x for x, c in zip(xs, cond) if c])

    print(f"{args.model} on {n} fresh scenes")
    print(
        f"count: caption {pct(cap_count)}  answer {pct(qa_count)}  answer where the caption counted right "
        f"{given(qa_count, cap_count)}"
    )
    print(
        f"object at a place: caption names it whole {pct(whole)}  colour answer {pct(qa_colour)} "
        f"(where named whole {given(qa_colour, whole)}, elsewhere {given(qa_colour, [not w for w in whole])})  "
        f"shape answer {pct(qa_shape)} (where named whole {given(qa_shape, whole)}, "
        f"elsewhere {given(qa_shape, [not w for w in whole])})"
    )


if __name__ == "__main__":
    main()
