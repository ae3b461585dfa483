"""`owl world ablation`: the paper's ablation in miniature, several seeds per variant.

Variants (all with the demo's recipes, :mod:`owl.world.recipes`):

- ``stage1-only``: alignment pre-training only, evaluated without instruction tuning;
- ``stage2-only``: instruction tuning only, from the untrained vision-language connection (no stage 1), the
  abstractor trained in stage 2 even where the recipe freezes it after stage 1;
- ``both``: stage 1 then stage 2 (the paradigm);
- ``both-no-text``: both stages, stage 2 without the text-only instructions.

Plus the LLM's text-only skill before any tuning. Each variant is trained and
evaluated once per seed; the table gives the mean and a 95% t-interval.
Stage 1 runs once per seed and is shared by the variants that start from it.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path
from typing import Any

VARIANTS = ("stage1-only", "stage2-only", "both", "both-no-text")
VISUAL = ("colour", "shape", "count", "position", "size", "ocr")
"""The abilities that need the image read (the paper's visual understanding and OCR): their per-seed mean is what
the ablation's claim compares."""
VISUAL_ROW = "visual mean"
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); half-width 0 for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    t = _T975.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def run_ablation(
    out: str | Path = "runs/ablation",
    seeds: tuple[int, ...] = (0, 1, 2),
    profile: str = "full",
    overrides: list[str] | None = None,
) -> Path:
    """Train and evaluate every variant for every seed (skipping finished ones); returns report.md."""
    from owl.models import load_model
    from owl.processing import OwlProcessor
    from owl.train.loop import train
    from owl.train.setup import build_for_training
    from owl.world.demo import per_stage
    from owl.world.evaluate import evaluate_world
    from owl.world.recipes import load_recipe, load_world_spec, prepare_world, recipe_file, split_overrides

    out = Path(out)
    world_over, recipe_over = split_overrides(overrides)
    both_stages, only = per_stage(recipe_over)
    spec = load_world_spec(recipe_file(profile, "world.yaml"), world_over)
    world = out / "world"
    results: dict[str, Any] = (
        json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {"runs": {}}
    )

    def record(seed: int, variant: str, summary: dict) -> None:
        results["runs"].setdefault(str(seed), {})[variant] = summary
        (out / "results.json").write_text(json.dumps(results, indent=1))

    def done(seed: int, variant: str) -> bool:
        return variant in results["runs"].get(str(seed), {})

    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        base = out / f"seed{seed}"
        common = [f"seed={seed}", "train.progress=false", *both_stages]
        s1 = load_recipe(profile, "stage1", world, [f"output_dir={base / 'stage1'}", *common, *only["stage1"]])
        prepare_world(world, spec)
        if not done(seed, "before") and done(seeds[0], "before"):  # the untuned LLM, greedy: the same every seed
            record(seed, "before", results["runs"][str(seeds[0])]["before"])
        if not done(seed, "before"):
            model, proc = build_for_training(s1)
            record(
                seed,
                "before",
                evaluate_world(model.eval(), proc, world, abilities=["text"], progress=False, out=base / "eval-before")[
                    "summary"
                ],
            )
        if not all(done(seed, v) for v in VARIANTS):
            train(s1)
        if not done(seed, "stage1-only"):
            d = base / "stage1"
            record(
                seed,
                "stage1-only",
                evaluate_world(
                    load_model(d).eval(),
                    OwlProcessor.from_pretrained(d),
                    world,
                    out=base / "eval-stage1-only",
                    progress=False,
                )["summary"],
            )
        for variant in ("both", "both-no-text", "stage2-only"):
            if done(seed, variant):
                continue
            s2 = load_recipe(
                profile,
                "stage2",
                world,
                [f"output_dir={base / variant}", f"init_from={base / 'stage1'}", *common, *only["stage2"]],
            )
            if variant == "both-no-text":
                s2.data.sources = [s for s in s2.data.sources if s.name != "text"]
            if variant == "stage2-only":
                s2.init_from = None
                s2.model = copy.deepcopy(s1.model)
                # A recipe may freeze the abstractor in stage 2 to keep what stage 1 aligned; without stage 1
                # that would leave it random, so here it trains as the paper's stage 2 trains it.
                s2.trainable.abstractor = "full"
                s2.trainable.queries = "full"
            d = train(s2)
            record(
                seed,
                variant,
                evaluate_world(
                    load_model(d).eval(),
                    OwlProcessor.from_pretrained(d),
                    world,
                    out=base / f"eval-{variant}",
                    progress=False,
                )["summary"],
            )
    return write_report(out, results)


def aggregate(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant -> ability -> (mean, 95% half-width, n seeds)."""
    table: dict[str, dict[str, list[float]]] = {}
    for runs in results["runs"].values():
        for variant, summary in runs.items():
            for ability, s in summary.items():
                table.setdefault(variant, {}).setdefault(ability, []).append(s["accuracy"])
            visual = visual_mean(summary)
            if visual is not None:  # the mean within each seed first, so its interval reflects seed-to-seed variation
                table[variant].setdefault(VISUAL_ROW, []).append(visual)
    return {v: {a: (*interval(xs), len(xs)) for a, xs in abil.items()} for v, abil in table.items()}


def visual_mean(summary: dict[str, Any]) -> float | None:
    """The mean accuracy over the visual abilities one evaluation has (None if it has none, e.g. the untuned LLM)."""
    visual = [summary[a]["accuracy"] for a in VISUAL if a in summary]
    return statistics.fmean(visual) if visual else None


def per_seed(results: dict[str, Any], variant: str, ability: str) -> dict[str, float]:
    """seed -> accuracy of one variant on one ability (or the visual mean), for the seeds that have it."""
    out = {}
    for seed, runs in results["runs"].items():
        summary = runs.get(variant, {})
        value = visual_mean(summary) if ability == VISUAL_ROW else summary.get(ability, {}).get("accuracy")
        if value is not None:
            out[seed] = value
    return out


CLAIMS = (
    ("both stages vs stage 2 alone", ("both", "stage2-only"), VISUAL_ROW),
    ("text-only data in stage 2 vs none", ("both", "both-no-text"), "text"),
    ("two stages with text data vs the untuned LLM", ("both", "before"), "text"),
)
"""The ablation's claims: alignment pre-training helps the visual abilities; stage 2's text-only data keeps the
LLM's text skill (against stage 2 without it, and against the LLM before any tuning)."""


def verdicts(agg: dict[str, dict[str, tuple[float, float, int]]], results: dict[str, Any] | None = None) -> list[str]:
    """Each claim read off the intervals (the issue's criterion: the two 95% intervals do not overlap) and, given the
    raw results, off the paired difference: the variants of one seed share its world order and stage 1, so the
    per-seed difference removes that shared noise and is the sharper test."""
    out = []
    for what, (a, b), ability in CLAIMS:
        if ability not in agg.get(a, {}) or ability not in agg.get(b, {}):
            continue
        (ma, ha, na), (mb, hb, nb) = agg[a][ability], agg[b][ability]
        n = min(na, nb)
        if n < 2:
            verdict = "one seed: no interval yet"
        elif ma - ha > mb + hb:
            verdict = f"{a} higher, intervals do not overlap"
        elif mb - hb > ma + ha:
            verdict = f"{b} higher, intervals do not overlap"
        else:
            verdict = "intervals overlap"
        line = (
            f"- {what}, {ability}: {100 * ma:.1f} ± {100 * ha:.1f} against {100 * mb:.1f} ± {100 * hb:.1f} "
            f"({n} seed{'s' if n != 1 else ''}): {verdict}"
        )
        if results is not None:
            xa, xb = per_seed(results, a, ability), per_seed(results, b, ability)
            diffs = [xa[s] - xb[s] for s in xa if s in xb]
            if len(diffs) >= 2:
                md, hd = interval(diffs)
                sign = "excludes 0" if abs(md) > hd else "includes 0"
                line += f"; paired difference {100 * md:+.1f} ± {100 * hd:.1f} over {len(diffs)} seeds ({sign})"
        out.append(line + ".")
    return out


def write_report(out: Path, results: dict[str, Any]) -> Path:
    from owl.world.report import ordered

    agg = aggregate(results)
    any_variant = next((agg[v] for v in VARIANTS if v in agg), {})
    abilities = [a for a in ordered(any_variant) if a != VISUAL_ROW] + [
        a for a in (VISUAL_ROW, "overall") if a in any_variant
    ]
    chance = {}
    for runs in results["runs"].values():  # "before" last: its overall row is over the text items only
        for _, summary in sorted(runs.items(), key=lambda kv: kv[0] == "before"):
            for a, s in summary.items():
                chance.setdefault(a, s["chance"])
    if any(a in chance for a in VISUAL):
        chance[VISUAL_ROW] = statistics.fmean(chance[a] for a in VISUAL if a in chance)
    variants = [v for v in VARIANTS if v in agg]
    head = "| ability | chance | " + " | ".join(variants) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(variants)]
    for a in abilities:
        cells = []
        for v in variants:
            m, h, n = agg[v].get(a, (float("nan"), 0.0, 0))
            cells.append(f"{100 * m:.1f} ± {100 * h:.1f}" if n else "-")
        lines.append(f"| {a} | {100 * chance.get(a, 0):.1f} | " + " | ".join(cells) + " |")
    before = agg.get("before", {}).get("text")
    n_seeds = len(results["runs"])
    text = [
        f"# Owl-World ablation ({n_seeds} seeds)",
        "",
        "Accuracy (%) on held-out Owl-World, mean ± 95% t-interval over seeds (training seed varies, the world "
        "is fixed). Variants: stage1-only = alignment pre-training only; stage2-only = instruction tuning only "
        "(no alignment pre-training); both = the two-stage paradigm; both-no-text = both stages without "
        "text-only instructions in stage 2.",
        "",
        *lines,
        "",
    ]
    claims = verdicts(agg, results)
    if claims:
        text += [f"The {VISUAL_ROW} is the mean of {', '.join(VISUAL)} within each seed.", "", *claims, ""]
    if before:
        text += [f"Text-only skill of the untuned LLM: {100 * before[0]:.1f} ± {100 * before[1]:.1f}%.", ""]
    text += ["![ablation](ablation.png)", ""]
    _plot(agg, variants, [a for a in abilities if a != "overall"], chance, out / "ablation.png", before)
    (out / "report.md").write_text("\n".join(text))
    return out / "report.md"


def _plot(agg: dict, variants: list[str], abilities: list[str], chance: dict, path: Path, before: tuple | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(abilities) + 2), 4), dpi=110)
    width = 0.8 / max(1, len(variants))
    for k, v in enumerate(variants):
        xs = [i + (k - (len(variants) - 1) / 2) * width for i in range(len(abilities))]
        means = [100 * agg[v].get(a, (0, 0, 0))[0] for a in abilities]
        errs = [100 * agg[v].get(a, (0, 0, 0))[1] for a in abilities]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=v)
    for i, a in enumerate(abilities):
        ax.hlines(
            100 * chance.get(a, 0),
            i - 0.42,
            i + 0.42,
            colors="black",
            lw=1.2,
            ls=":",
            label="chance" if i == 0 else None,
        )
    if before and "text" in abilities:
        i = abilities.index("text")
        ax.plot(i, 100 * before[0], "kD", ms=5, label="LLM before tuning")
    ax.set_xticks(range(len(abilities)), abilities, rotation=35, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
