"""`owl demo`: the whole paradigm on a laptop CPU — a pretrained LLM learns to see Owl-World.

Steps (each through the same code a user runs): build Owl-World (the
profile's ``world.yaml``), measure the untuned LLM's text-only skill,
``owl train`` stage 1 and stage 2 with the shipped recipes, evaluate the
result on the held-out split, and write ``report.md`` with plots.

Profiles (:mod:`owl.world.recipes`): ``full`` (SmolLM2-135M-Instruct +
pretrained EfficientNet-lite0) and ``quick`` (a tiny random LLM, under a
minute; the test suite runs it through the real CLI).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from owl.train.config import TrainConfig
from owl.world.recipes import WorldSpec, load_recipe, load_world_spec, prepare_world, recipe_file, split_overrides

# The full profile's targets: a fraction correct per ability, and how far above the blind commonest-answer score
# (owl.world.scorers.blind_predictions) each must be; the "above chance" abilities need chance + 0.20.
TARGETS = {"colour": 0.80, "shape": 0.80, "count": 0.75, "position": 0.60, "ocr": 0.40}
ABOVE_BLIND = {"colour": 0.30, "shape": 0.30, "count": 0.20, "position": 0.30, "ocr": 0.30}
ABOVE_CHANCE = ("multiimage", "multiturn")


def per_stage(recipe_over: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(overrides for both stages, {"stage1": [...], "stage2": [...]}) with the ``stageN.`` prefix removed."""
    prefixes = ("stage1.", "stage2.")
    only = {p[:-1]: [o[len(p) :] for o in recipe_over if o.startswith(p)] for p in prefixes}
    return [o for o in recipe_over if not o.startswith(prefixes)], only


def load_profile(
    profile: str, out: Path, seed: int, overrides: list[str] | None
) -> tuple[WorldSpec, TrainConfig, TrainConfig]:
    """The world spec and both stages' recipes of ``profile``, writing under ``out`` (``world.KEY=V`` overrides
    go to the world spec, ``stage1.KEY=V`` / ``stage2.KEY=V`` to one stage's recipe, the rest to both)."""
    world_over, recipe_over = split_overrides(overrides)
    spec = load_world_spec(recipe_file(profile, "world.yaml"), world_over)
    common, only = per_stage(recipe_over)
    world = out / "world"
    common = [f"seed={seed}", *common]
    s1 = load_recipe(profile, "stage1", world, [f"output_dir={out / 'stage1'}", *common, *only["stage1"]])
    s2 = load_recipe(
        profile,
        "stage2",
        world,
        [f"output_dir={out / 'stage2'}", f"init_from={out / 'stage1'}", *common, *only["stage2"]],
    )
    return spec, s1, s2


def check_targets(
    summary: dict[str, dict], text_before: float | None, blind: dict[str, dict] | None = None
) -> list[tuple[str, str, bool]]:
    """(what, measured vs target, met) rows for the report."""
    rows = []
    for ability, target in TARGETS.items():
        if ability in summary:
            acc = summary[ability]["accuracy"]
            rows.append((ability, f"{100 * acc:.1f}% (target >= {100 * target:.0f}%)", acc >= target))
            if blind and ability in blind:
                gap, need = acc - blind[ability]["accuracy"], ABOVE_BLIND[ability]
                rows.append(
                    (
                        f"{ability} above blind",
                        f"{100 * gap:+.1f} points over {100 * blind[ability]['accuracy']:.1f}% "
                        f"(target >= {100 * need:.0f})",
                        gap >= need - 1e-9,
                    )
                )
    for ability in ABOVE_CHANCE:
        if ability in summary:
            s = summary[ability]
            rows.append(
                (
                    ability,
                    f"{100 * s['accuracy']:.1f}% vs chance {100 * s['chance']:.1f}%",
                    s["accuracy"] >= s["chance"] + 0.20,
                )
            )
    if text_before is not None and "text" in summary:
        after = summary["text"]["accuracy"]
        rows.append(
            (
                "text-only skill",
                f"{100 * after:.1f}% after vs {100 * text_before:.1f}% before",
                after >= text_before - 0.02,
            )
        )
    return rows


def run_demo(
    profile: str = "full", out: str | Path = "runs/demo", seed: int = 0, overrides: list[str] | None = None
) -> Path:
    """Run the demo; returns the path of ``report.md``."""
    from owl.bench.peak import gemm_tflops
    from owl.models import load_model
    from owl.processing import OwlProcessor
    from owl.train.loop import train
    from owl.train.setup import build_for_training
    from owl.world.evaluate import evaluate_world
    from owl.world.report import plot_accuracy, plot_examples, plot_losses, write_json
    from owl.world.scorers import blind_predictions, score, summarize

    out = Path(out)
    spec, s1, s2 = load_profile(profile, out, seed, overrides)  # config errors before anything is written
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    times: dict[str, float] = {}

    peak = gemm_tflops(1024, torch.float32, seconds=1.0)["tflops"]  # the machine the times below hold for
    t = time.perf_counter()
    print(f"[1/5] Owl-World -> {world}")
    prepare_world(world, spec)
    times["world"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[2/5] the untuned LLM's text-only skill (before any tuning)")
    base, base_proc = build_for_training(s1)
    before = evaluate_world(base.eval(), base_proc, world, abilities=["text"], out=out / "eval-before")["summary"]
    del base
    times["baseline"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[3/5] stage 1: vision encoder + abstractor on captions, LLM frozen")
    steps = {"stage1": _steps(train(s1))}  # a time budget (train.time_budget_min) decides stage 1's count
    times["stage1"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[4/5] stage 2: abstractor + LoRA on instructions (multimodal + text-only), vision frozen")
    model_dir = train(s2)
    steps["stage2"] = _steps(model_dir)
    times["stage2"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[5/5] evaluation on held-out Owl-World")
    model, proc = load_model(model_dir).eval(), OwlProcessor.from_pretrained(model_dir)
    result = evaluate_world(model, proc, world, out=out / "eval")
    times["eval"] = time.perf_counter() - t

    summary = result["summary"]
    items, preds = result["items"], result["predictions"]
    correct = [score(p, it) for p, it in zip(preds, items)]
    blind = summarize(items, blind_predictions(items))
    plot_accuracy(summary, out / "accuracy.png", f"Owl-World held-out accuracy ({profile} demo)", baseline=before)
    plot_losses({"stage 1 (captions)": out / "stage1", "stage 2 (instructions)": out / "stage2"}, out / "loss.png")
    plot_examples(items, preds, correct, world, out / "examples.png")
    text_before = before.get("text", {}).get("accuracy")
    targets = check_targets(summary, text_before, blind)
    report = _report(profile, s1, s2, steps, summary, before, blind, targets, times, model_dir, peak)
    (out / "report.md").write_text(report)
    write_json(
        out / "summary.json",
        {
            "profile": profile,
            "seed": seed,
            "summary": summary,
            "blind": blind,
            "before": before,
            "times_s": times,
            "steps": steps,
            "fp32_peak_tflops": peak,
        },
    )
    image = sorted(Path(world, "images").glob("eval_*.png"))[0]
    print(f"\nreport: {out / 'report.md'} ({sum(times.values()) / 60:.1f} min)")
    print(f"chat with the result:\n  owl chat {model_dir} --image {image}")
    return out / "report.md"


def _steps(model_dir: Path) -> int:
    """The optimizer steps a stage ran, from its model's lineage."""
    return int(json.loads((Path(model_dir) / "lineage.json").read_text())["steps"])


def _budget(cfg: Any) -> str:
    t = cfg.train
    return f" (fitted to {t.time_budget_min:g} min of training, at most {t.max_steps})" if t.time_budget_min else ""


def _report(
    profile: str,
    s1: Any,
    s2: Any,
    steps: dict[str, int],
    summary: dict,
    before: dict,
    blind: dict,
    targets: list,
    times: dict[str, float],
    model_dir: Path,
    peak: float,
) -> str:
    from owl.world.report import table

    total = sum(times.values())
    lines = [
        f"# Owl-World demo ({profile} profile)",
        "",
        f"Both training stages of the mPLUG-Owl paradigm, on {os.cpu_count()} CPU cores "
        f"({_cpu_name()}, measured fp32 GEMM peak {1000 * peak:.0f} GFLOP/s, torch {torch.__version__}), "
        f"in {total / 60:.1f} minutes. Times scale with that peak; accuracies are deterministic for a given "
        "machine and thread count only (floating-point reductions differ between CPUs).",
        "",
        f"- stage 1: {steps['stage1']} steps{_budget(s1)} x {s1.train.batch_size} caption pairs; trainable: vision "
        f"{s1.trainable.vision}, abstractor {s1.trainable.abstractor}, LLM {s1.trainable.llm}",
        f"- stage 2: {steps['stage2']} steps{_budget(s2)} x {s2.train.batch_size} instructions ("
        + ", ".join(f"{s.name} weight {s.weight:g}" for s in s2.data.sources)
        + f"); trainable: vision {s2.trainable.vision}, abstractor {s2.trainable.abstractor}, LLM {s2.trainable.llm}",
        f"- model: `{model_dir}`",
        "",
        "## Held-out accuracy per ability",
        "",
        table(summary, before, blind),
        "",
        "Chance is 1 / the number of possible answers (see owl/world/scorers.py for every scoring rule). "
        "'blind' is a model that never looks: each question gets its task's commonest held-out answer. "
        "'before tuning' is the untuned LLM on the text-only questions.",
        "",
        "![accuracy](accuracy.png)",
        "",
        *(
            [
                "## Targets",
                "",
                "| target | measured | met |",
                "|---|---|---|",
                *[f"| {what} | {measured} | {'yes' if met else 'no'} |" for what, measured, met in targets],
                "",
            ]
            if profile != "quick"
            else [
                "The quick profile uses a tiny random LLM: it checks the pipeline, not the targets "
                "(run `make demo` for the real thing).",
                "",
            ]
        ),
        "## Training",
        "",
        "![loss](loss.png)",
        "",
        "Image gain (the probe's loss with each sample's images rotated to another sample, minus with the right "
        "ones; samples the run also trains on): near zero means the LLM does not read the image.",
        "",
        "![image gain, stage 1](stage1/image_gain.png) ![image gain, stage 2](stage2/image_gain.png)",
        "",
        "## Examples",
        "",
        "![examples](examples.png)",
        "",
        "## Time",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in times.items()],
        f"| total | {total:.0f} |",
        "",
    ]
    return "\n".join(lines)


def _cpu_name() -> str:
    from owl.bench.peak import machine

    return str(machine().get("cpu") or platform.processor() or platform.machine())
