"""Training step time of the demo recipes (EfficientNet-lite0 + abstractor + SmolLM2-135M) on this machine.

Runs the shipped recipe (``configs/world/full/stage1.yaml`` or ``stage2.yaml``) through the real ``owl train`` loop
for a few steps in a temporary directory and prints the median seconds per step and tokens per second from the
run's ``metrics.jsonl``, so the figure is the one ``make demo`` pays. Extra ``key=value`` arguments override the
recipe exactly as on the ``owl train`` command line, which makes configurations easy to compare:

    .venv/bin/python benchmarks/demo_step_time.py --stage 1
    .venv/bin/python benchmarks/demo_step_time.py --stage 1 train.batch_size=16
    .venv/bin/python benchmarks/demo_step_time.py --stage 2 lora.target_modules=[q_proj,v_proj]

Stage 2 starts from a fresh stage-1 model directory written by a 1-step stage-1 run (its weights do not matter
for timing). Timings on a shared CPU fluctuate: run one benchmark at a time and compare within a session.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def run(stage: int, steps: int, overrides: list[str], tmp: Path) -> list[dict]:
    from owl.train.loop import train
    from owl.train.metrics import read_metrics
    from owl.world.recipes import load_recipe, load_world_spec, prepare_world, recipe_file

    world = prepare_world(tmp / "world", load_world_spec(recipe_file("full", "world.yaml")))
    quiet = ["train.progress=false", "train.tensorboard=false", "train.log_every=1", f"checkpoint.every={steps + 10}"]
    s1 = load_recipe(
        "full",
        "stage1",
        world,
        [
            f"output_dir={tmp / 'stage1'}",
            *quiet,
            f"train.max_steps={steps if stage == 1 else 1}",
            *(overrides if stage == 1 else []),
        ],
    )
    train(s1)
    if stage == 1:
        return read_metrics(tmp / "stage1")
    s2 = load_recipe(
        "full",
        "stage2",
        world,
        [f"output_dir={tmp / 'stage2'}", f"init_from={tmp / 'stage1'}", *quiet, f"train.max_steps={steps}", *overrides],
    )
    train(s2)
    return read_metrics(tmp / "stage2")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    p.add_argument("--steps", type=int, default=8, help="steps to run; the first two are not timed (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("overrides", nargs="*", help="recipe overrides, dotted.key=value")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="owl-bench-") as tmp:
        t = time.perf_counter()
        metrics = run(args.stage, args.steps, args.overrides, Path(tmp))
        wall = time.perf_counter() - t
    timed = metrics[2:] or metrics
    s = statistics.median(m["s_per_step"] for m in timed)
    tok = statistics.median(m["tokens_per_s"] for m in timed)
    print(f"stage {args.stage}  overrides {' '.join(args.overrides) or '(none)'}  threads {torch.get_num_threads()}")
    print(
        f"{s:.2f} s/step (median of {len(timed)}; min {min(m['s_per_step'] for m in timed):.2f}, "
        f"max {max(m['s_per_step'] for m in timed):.2f})  {tok:,.0f} input tokens/s  "
        f"(whole run incl. model load: {wall:.0f} s)"
    )


if __name__ == "__main__":
    main()
