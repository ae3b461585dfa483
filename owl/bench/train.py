"""`owl bench train`: step time, throughput and MFU of training recipes, through the real training step.

A recipe's speed is only worth quoting as the run pays it, so each recipe is built by the trainer's own
``owl.train.loop.setup`` and stepped by its ``train_step`` (the strategy, autocast, micro-batching and optimizer
of a real run); ``warmup`` steps are run untimed, then ``steps`` are timed one by one. Beside the times:

* tokens, real (the attention mask's sum) and padded (batch x width, what the model computes);
* model FLOPs per step, counted by :mod:`owl.bench.flops` from each micro-batch's real shapes (captured by a
  forward pre-hook, so the count follows variable lengths and images per step) and the model's trainability;
* MFU: achieved FLOP/s over the peak GEMM rate of the precision the run computes in (fp32, or bf16 under
  autocast), measured by :func:`owl.bench.peak.gemm_tflops` in the same process, on the same device and threads;
* the process's peak resident memory (and the GPU's peak allocation on a GPU).

Recipes: a YAML path (``configs/tiny/stage1.yaml``) or ``world:<profile>/<stage>`` (the shipped Owl-World recipes
on their world, e.g. ``world:full/stage2``). The core may not import the toy world (``tests/arch``), so the CLI
passes a ``world`` loader in. A stage-2 recipe starts from a model made by a 1-step run of its stage-1 recipe
(the sibling ``stage1.yaml``, or the profile's stage 1) in a temporary directory: its weights do not matter for
timing. Nothing is written but ``train.json`` and ``train.md`` under ``out``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from owl.bench.flops import PARTS, add_flops, step_flops
from owl.bench.peak import DTYPES, gemm_tflops, machine
from owl.errors import ConfigError
from owl.train.config import TrainConfig, load_train_config

DEFAULT_RECIPES = ("world:full/stage1", "world:full/stage2", "configs/tiny/stage1.yaml", "configs/tiny/stage2.yaml")
WORLD_PREFIX = "world:"
WORLD_OVERRIDE = "world."  # overrides for the world spec (owl.world.recipes.WORLD_PREFIX); dropped for YAML recipes
# (profile, stage, overrides) -> the shipped recipe reading its built world; owl.cli provides it.
WorldLoader = Callable[[str, str, list[str]], TrainConfig]
# What every benchmarked run is told: no bar, no TensorBoard, no probe, no resume, no checkpoints along the way.
QUIET = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.image_gain_every=0",
    "train.log_every=1",
    "train.epochs=null",
    "checkpoint.resume=none",
    "checkpoint.every=0",
]


@dataclass
class Recipe:
    """A recipe to benchmark: how to load it with overrides, and the stage-1 recipe that makes its ``init_from``."""

    name: str
    load: Callable[[list[str]], TrainConfig]
    stage1: Recipe | None = None
    world: bool = False


def resolve_recipe(spec: str, world: WorldLoader | None = None) -> Recipe:
    """A ``--recipe`` value -> :class:`Recipe`; an unknown one raises ``ConfigError`` saying what is accepted."""
    if spec.startswith(WORLD_PREFIX):
        profile, _, stage = spec[len(WORLD_PREFIX) :].partition("/")
        if not profile or stage not in ("stage1", "stage2"):
            raise ConfigError(f"recipe {spec!r}: a shipped recipe is world:<profile>/<stage1|stage2>")
        if world is None:
            raise ConfigError(f"recipe {spec!r}: world recipes need the Owl-World loader (run it as `owl bench train`)")
        parent = resolve_recipe(f"{WORLD_PREFIX}{profile}/stage1", world) if stage == "stage2" else None
        return Recipe(spec, lambda ov: world(profile, stage, ov), parent, world=True)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"unknown recipe {spec!r}: give a training recipe YAML file or world:<profile>/<stage> "
            f"(e.g. world:full/stage1)"
        )
    sibling = path.parent / "stage1.yaml"
    parent = Recipe(str(sibling), lambda ov: load_train_config(sibling, ov)) if sibling.is_file() else None
    if parent is not None and sibling.resolve() == path.resolve():
        parent = None
    return Recipe(spec, lambda ov: load_train_config(path, ov), parent)


def _for(recipe: Recipe, overrides: list[str]) -> list[str]:
    return overrides if recipe.world else [o for o in overrides if not o.startswith(WORLD_OVERRIDE)]


# ------------------------------------------------------------------------------------------------ peak


def precision_name(acc_precision: str) -> str:
    """The precision the matmuls run in: accelerate's ``no`` is fp32, ``bf16`` autocast is bf16."""
    return "fp32" if acc_precision in ("no", "fp32") else acc_precision


def peak_tflops(precision: str, device: str, n: int, cache: dict[str, Any], seconds: float = 1.0) -> dict[str, float]:
    """The measured GEMM peak of ``precision`` on ``device``, measured once per bench run (``cache``)."""
    key = f"{precision}@{device}"
    if key not in cache:
        cache[key] = gemm_tflops(n, DTYPES[precision], seconds, device) | {"n": n}
    return cache[key]


# ------------------------------------------------------------------------------------------- one recipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _capture(store: list[dict[str, Any]]) -> Callable[..., None]:
    """A forward pre-hook keeping what FLOPs depend on: shapes, and the labels (kept on the device, read later)."""

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        pixels = kwargs.get("pixel_values")
        store.append(
            {
                "input_ids": torch.empty(tuple(ids.shape), device="meta"),
                "pixel_values": None if pixels is None else torch.empty(tuple(pixels.shape), device="meta"),
                "labels": kwargs.get("labels"),
                "return_logits": kwargs.get("return_logits", True),
                "keep_all_in_graph": kwargs.get("keep_all_in_graph", False),
            }
        )

    return hook


def bench_config(
    cfg: TrainConfig,
    steps: int,
    warmup: int,
    peaks: dict[str, Any] | None = None,
    peak_size: int = 2048,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build ``cfg`` with the trainer's ``setup`` and time ``steps`` of its ``train_step`` after ``warmup``.

    ``cfg`` should run ``warmup + steps`` steps in a scratch ``output_dir`` (:func:`run_bench_train` arranges it);
    nothing is written there. ``peaks`` caches measured peaks across calls.
    """
    from owl.models.builders import count_parameters
    from owl.train.loop import setup, train_step
    from owl.train.setup import preflight

    peaks = {} if peaks is None else peaks
    preflight(cfg)
    with contextlib.redirect_stdout(io.StringIO()):  # the resolved config and banner: not this report's
        run = setup(cfg)
    device = run.acc.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    raw = run.strategy.unwrap(run.model)
    counts = count_parameters(raw)["total"]
    precision = precision_name(run.acc.mixed_precision)
    say(
        f"  {run.strategy.describe()}, {device}, {precision}, batch {cfg.train.batch_size} x {cfg.train.grad_accum} "
        f"accum, {counts['trainable']:,} of {counts['total']:,} parameters train"
    )
    captured: list[dict[str, Any]] = []
    handle = raw.register_forward_pre_hook(_capture(captured), with_kwargs=True)
    times: list[float] = []
    flops: list[dict[str, dict[str, float]]] = []
    samples = real = padded = 0.0
    try:
        for i in range(warmup + steps):
            captured.clear()
            _sync(device)
            t = time.perf_counter()
            metrics = train_step(run)
            _sync(device)
            dt = time.perf_counter() - t
            run.step += 1
            timed = i >= warmup
            say(f"  step {i + 1}/{warmup + steps}: {dt:.3f} s{'' if timed else ' (warm-up, not timed)'}")
            if not timed:
                continue
            step = None
            for c in captured:
                kw = {"return_logits": c["return_logits"], "keep_all_in_graph": c["keep_all_in_graph"]}
                step = add_flops(step, step_flops(raw, c, **kw))
                padded += c["input_ids"].shape[0] * c["input_ids"].shape[1]
            times.append(dt)
            flops.append(step)
            samples += len(metrics.samples)
            real += sum(metrics.input_tokens)
    finally:
        handle.remove()
    peak = peak_tflops(precision, str(device), peak_size, peaks)
    total_s = sum(times)
    mean = {p: {k: statistics.fmean(f[p][k] for f in flops) for k in flops[0][p]} for p in (*PARTS, "total")}
    achieved = sum(f["total"]["total"] for f in flops) / total_s / 1e12
    result = {
        "stage": cfg.stage,
        "precision": precision,
        "device": str(device),
        "strategy": run.strategy.describe(),
        "batch_size": cfg.train.batch_size,
        "grad_accum": cfg.train.grad_accum,
        "processes": run.acc.num_processes,
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "parameters": counts,
        "steps": steps,
        "warmup": warmup,
        "step_s": {"median": statistics.median(times), "min": min(times), "max": max(times), "all": times},
        "samples_per_s": samples / total_s,
        "tokens_per_step": {"real": real / steps, "padded": padded / steps},
        "tokens_per_s": {"real": real / total_s, "padded": padded / total_s},
        "flops_per_step": mean,
        "tflops": achieved,
        "peak_tflops": peak["tflops"],
        "mfu": achieved / peak["tflops"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB; the whole process
        "gpu_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    run.acc.free_memory()  # accelerate keeps the prepared model and optimizer; the next recipe needs the memory
    del run, raw
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ------------------------------------------------------------------------------------------ the command


def run_bench_train(
    recipes: list[str] | None = None,
    out: str | Path = "runs/bench",
    steps: int = 5,
    warmup: int = 2,
    overrides: list[str] | None = None,
    world: WorldLoader | None = None,
    peak_size: int = 2048,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmark each recipe (default :data:`DEFAULT_RECIPES`), write ``train.json`` and ``train.md`` under ``out``.

    ``overrides`` (``key=value``) apply to every benchmarked recipe (``world.*`` ones to the world spec of
    ``world:`` recipes), not to the 1-step stage-1 runs that make stage 2's starting model. Every recipe is
    resolved and loaded before any runs, so a bad name or override fails at once.
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps {steps} must be >= 1 and --warmup {warmup} >= 0")
    if peak_size < 16:
        raise ConfigError(f"--peak-size {peak_size} must be >= 16")
    overrides = list(overrides or [])
    user_init = any(o.split("=", 1)[0].strip() == "init_from" for o in overrides)
    resolved = [resolve_recipe(r, world) for r in (recipes or DEFAULT_RECIPES)]
    # Fail fast on unknown keys and bad values; and learn which recipes start from a model (init_from).
    starts = [bool(r.load([*_for(r, overrides), *QUIET, "train.max_steps=1"]).init_from) for r in resolved]
    peaks: dict[str, Any] = {}
    rows = []
    for i, r in enumerate(resolved):
        say(f"[{i + 1}/{len(resolved)}] {r.name}")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="owl-bench-") as tmp:
            extra = [f"output_dir={Path(tmp) / 'run'}", f"train.max_steps={warmup + steps}"]
            if r.stage1 is not None and starts[i] and not user_init:
                extra.append(f"init_from={_stage1_model(r.stage1, overrides, Path(tmp), say)}")
            cfg = r.load([*_for(r, overrides), *QUIET, *extra])
            row = {"recipe": r.name} | bench_config(cfg, steps, warmup, peaks, peak_size, say)
        row["wall_s"] = time.perf_counter() - t0
        say(
            f"  {row['step_s']['median']:.3f} s/step, {row['tokens_per_s']['real']:,.0f} tokens/s, "
            f"{row['tflops']:.3g} TFLOP/s, MFU {row['mfu']:.1%}"
        )
        rows.append(row)
    result = {"machine": machine(), "peak": peaks, "overrides": overrides, "recipes": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "train.md").write_text(markdown(result))
    return result


def _stage1_model(stage1: Recipe, overrides: list[str], tmp: Path, say: Callable[[str], None]) -> Path:
    """A starting model for a stage-2 recipe: one step of its stage-1 recipe (the weights do not matter here)."""
    from owl.train.loop import train

    say(f"  init_from: a 1-step run of {stage1.name}")
    world_only = [o for o in overrides if o.startswith(WORLD_OVERRIDE)] if stage1.world else []
    cfg = stage1.load([*world_only, *QUIET, f"output_dir={tmp / 'stage1'}", "train.max_steps=1"])
    with contextlib.redirect_stdout(io.StringIO()):
        return train(cfg)


def markdown(result: dict[str, Any]) -> str:
    """One row per recipe, the machine and the peaks the MFU is taken against."""
    m = result["machine"]
    peaks = ", ".join(
        f"{k.replace('@', ' on ')} {v['tflops']:.3g} TFLOP/s (n={v['n']})" for k, v in result["peak"].items()
    )
    lines = [
        f"Training step on {m.get('gpu') or m['cpu']} ({m['torch_threads']} torch threads, torch {m['torch']}); "
        f"measured GEMM peak: {peaks}. Peak RSS is the process's, up to that row.",
        "",
        "| recipe | stage | precision | batch | s/step (median) | samples/s | tokens/s real | tokens/s padded "
        "| GFLOP/step | TFLOP/s | MFU | peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["recipes"]:
        lines.append(
            f"| {r['recipe']} | {r['stage'] or '-'} | {r['precision']} | {r['batch_size'] * r['grad_accum']} "
            f"| {r['step_s']['median']:.3f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']['real']:,.0f} "
            f"| {r['tokens_per_s']['padded']:,.0f} | {r['flops_per_step']['total']['total'] / 1e9:,.1f} "
            f"| {r['tflops']:.3g} | {r['mfu']:.1%} | {r['peak_rss_mib']:,.0f} |"
        )
    lines += ["", "FLOPs per step by part (GFLOP, forward + backward):", ""]
    lines += ["| recipe | vision | abstractor | llm |", "|---|---:|---:|---:|"]
    for r in result["recipes"]:
        f = r["flops_per_step"]
        lines.append(
            f"| {r['recipe']} | "
            + " | ".join(f"{f[p]['forward'] / 1e9:.3g} + {f[p]['backward'] / 1e9:.3g}" for p in PARTS)
            + " |"
        )
    return "\n".join(lines) + "\n"
