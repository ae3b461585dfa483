"""`owl bench peers`: owl's training step against transformers' peer architectures, measured side by side.

A step time alone says little; a user wants to know whether the abstractor costs or saves time against the
alternatives (LLaVA's projector on every patch or on a pooled grid, BLIP-2's Q-Former). So every model gets the
*same* LLM config, a vision tower of the *same* config, the *same* batch and the *same* trainability per stage
(:data:`NOTES` says what each model and loop is; ``peers.md`` carries it). All are built with random weights in
one process and timed in alternation, the order rotated each round, so a neighbour's load on a shared machine
hits all of them alike; medians, so one slow step does not decide a ratio. Two loops: ``model-only`` gives every
model, owl included, one plain loop (the difference is the architecture alone); ``trainer`` runs owl through its
real ``owl.train.loop.train_step`` on a ``Run`` assembled as ``setup`` assembles one (what an owl user gets)
against the peers in the plain loop. FLOPs are counted once per model with ``FlopCounterMode``; MFU is against
the GEMM peak measured in the same run (``owl.bench.peak``), as a step time means little without it.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from owl.bench.peer_models import (  # noqa: F401  (re-exported: the tests build with them)
    LLMS,
    LORA,
    PooledProjector,
    Setup,
    _llama,
    _trainability,
    build_blip2,
    build_llava,
    build_owl,
    model_batch,
    shared_batch,
)
from owl.constants import IMAGE_PLACEHOLDER_ID
from owl.errors import ConfigError

STAGES = (1, 2)
MODES = ("model-only", "trainer")
PEERS = ("llava-all", "llava-64", "blip2")
# What the shipped Owl-World recipes (configs/world/full) give AdamW; the trainer mode uses them.
OPTIM = {
    1: {"lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01, "grad_clip": 1.0},
    2: {"lr": 5e-4, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 1e-4, "grad_clip": 1.0},
}
# Per-LLM defaults for a run without --batch/--rounds. SmolLM2's 30 layers make one round of its five models
# ~65 s at batch 4 on one contended CPU core (llava-all alone 27 s), so it runs at batch 2 for 3 rounds; with the
# tiny LLM at batch 4 for 5 rounds the default run stays under 10 minutes on 2 CPU cores.
DEFAULT_PLAN = {"smollm2": {"batch": 2, "rounds": 3}, "tiny": {"batch": 4, "rounds": 5}}


NOTES = [
    "owl: CLIP ViT -> abstractor (64 queries + end-of-image vector = 65 tokens). llava-all: MLP projector on every "
    "patch token (class token dropped). llava-64: the patch grid average-pooled to 8 x 8 before the projector (same "
    "image and tower). blip2: Q-Former with 32 queries; its ViT is BLIP-2's class with the CLIP tower's shape.",
    "plain: AdamW over the trainable parameters, loss.backward(), step, zero_grad; full-sequence logits. owl trainer: "
    "owl.train.loop.train_step (owl's precision, parameter groups, clipping, schedule, collate, logits only where "
    "targets are). Stage 1: vision + connector train, LLM frozen; stage 2: vision frozen, connector + LoRA (r 8, "
    "alpha 32, q_proj/v_proj) on the LLM. FLOPs: FlopCounterMode on one whole step (matmuls, convolutions, attention).",
    "",
]


@dataclass
class Entry:
    """One model in one loop, ready to step. ``groups`` maps vision / connector / llm to their parameters."""

    name: str
    loop: str  # "plain" or "owl-trainer"
    model: nn.Module
    forward: Callable[[], torch.Tensor]  # the loss of the batch, with autograd
    step: Callable[[], float]  # one optimizer step; returns the loss
    groups: dict[str, list[tuple[str, nn.Parameter]]]
    image_tokens: int
    seq_len: int
    precision: str = "fp32"
    losses: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({'owl trainer' if self.loop == 'owl-trainer' else 'plain loop'})"


def _quiet(_: str) -> None:
    """The default progress sink of the library functions: silent (the CLI passes ``print``)."""


# ----------------------------------------------------------------------------------------------- loops


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _plain(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Callable, Callable]:
    """The one plain loop every model gets: AdamW (lr 1e-4, torch's other defaults) over requires_grad params."""
    model.to(_device()).train()
    batch = {k: v.to(_device()) for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def forward() -> torch.Tensor:
        return model(**batch).loss

    def step() -> float:
        loss = forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return forward, step


def _owl_trainer(model: nn.Module, batch: dict[str, torch.Tensor], stage: int, out: str) -> tuple[Any, Callable]:
    """owl's real ``train_step`` on a ``Run`` assembled the way ``owl.train.loop.setup`` does (no data files)."""
    from accelerate import Accelerator

    from owl.data import SourceSpec
    from owl.processing import Encoded, OwlProcessor
    from owl.tokenizer import byte_tokenizer
    from owl.train import loop
    from owl.train.config import DataConfig, LoopConfig, LoraSpec, OptimConfig, Trainable, TrainConfig
    from owl.train.distributed import make_strategy
    from owl.train.trainable import param_groups, set_train_modes

    t = _trainability(stage)
    cfg = TrainConfig(
        output_dir=out,
        data=DataConfig(sources=[SourceSpec(name="synthetic", format="captions", path="(in memory)")]),
        trainable=Trainable(vision=t["vision"], abstractor="full", queries="full", llm=t["llm"]),
        lora=LoraSpec(**LORA),
        optim=OptimConfig(**OPTIM[stage]),
        train=LoopConfig(batch_size=batch["input_ids"].shape[0], max_steps=10**6, progress=False, tensorboard=False),
        stage=str(stage),
    )
    precision = loop._precision(cfg)  # owl's own resolution of train.precision=auto
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    strategy = make_strategy(cfg, acc, precision)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps
    )
    total = cfg.train.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cfg.schedule.factor(s, total))
    model, optimizer = strategy.prepare(model, optimizer)
    raw = strategy.unwrap(model)
    set_train_modes(raw, cfg.trainable)
    items = [
        Encoded(ids.tolist(), lab.tolist(), px.unsqueeze(0), source="synthetic")
        for ids, lab, px in zip(batch["input_ids"], batch["labels"], batch["pixel_values"])
    ]
    run = loop.Run(
        cfg=cfg,
        acc=acc,
        strategy=strategy,
        model=model,
        processor=OwlProcessor.from_config(raw.config, byte_tokenizer()),
        data=SimpleNamespace(next_step=lambda: [items]),  # TrainData's one method here: the same micro-batch
        optimizer=optimizer,
        scheduler=scheduler,
        params=[p for p in raw.parameters() if p.requires_grad],
        horizon={"total": total},
        step=0,
        out=Path(out),
        config_yaml="",
        keep_all_in_graph=False,
    )

    def step() -> float:
        metrics = loop.train_step(run)
        run.step += 1
        return sum(metrics.loss_sums) / max(metrics.target_tokens, 1.0)

    return run, step


def build_entries(
    llm: dict[str, Any],
    setup: Setup,
    stage: int,
    batch: int,
    modes: tuple[str, ...] = MODES,
    peers: tuple[str, ...] = PEERS,
    say: Callable[[str], None] = _quiet,
    out: str = "runs/bench",
) -> list[Entry]:
    """Every model of one (LLM, stage) cell, each with a fresh seed-0 init, on the same shared batch."""
    shared = shared_batch(llm, setup, batch)
    image_id = llm["vocab_size"] - 1
    entries: list[Entry] = []
    owl_v = setup.owl_queries + 1
    for mode in modes:
        t = time.perf_counter()
        torch.manual_seed(0)
        model, groups = build_owl(llm, setup, stage)
        b = model_batch(shared, IMAGE_PLACEHOLDER_ID, owl_v) | {"image_counts": torch.ones(batch, dtype=torch.long)}
        if mode == "model-only":
            forward, step = _plain(model, b)
            entries.append(Entry("owl", "plain", model, forward, step, groups, owl_v, b["input_ids"].shape[1]))
        else:
            run, step = _owl_trainer(model, b, stage, out)
            precision = "bf16" if run.strategy.precision == "bf16" else "fp32"

            def forward(m: nn.Module = model, b: dict = b) -> torch.Tensor:
                return m(**{k: v.to(_device()) for k, v in b.items()}, return_logits=False).loss

            entries.append(
                Entry("owl", "owl-trainer", model, forward, step, groups, owl_v, b["input_ids"].shape[1], precision)
            )
        say(f"  built {entries[-1].label} in {time.perf_counter() - t:.1f} s")
    for name in peers:
        t = time.perf_counter()
        torch.manual_seed(0)
        if name == "blip2":
            model, groups, n_img = build_blip2(llm, setup, stage)
        else:
            model, groups, n_img = build_llava(llm, setup, stage, pooled=name == "llava-64")
        b = model_batch(shared, image_id, n_img)
        forward, step = _plain(model, b)
        entries.append(Entry(name, "plain", model, forward, step, groups, n_img, b["input_ids"].shape[1]))
        say(f"  built {entries[-1].label} in {time.perf_counter() - t:.1f} s")
    return entries


# ----------------------------------------------------------------------------------------------- timing


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def count_flops(entry: Entry) -> float:
    """FLOPs of one whole step (forward + backward; the optimizer has no matmuls), counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        entry.losses.append(entry.step())
    return float(counter.get_total_flops())


def time_entries(
    entries: list[Entry], rounds: int, warmup: int = 0, say: Callable[[str], None] = _quiet
) -> dict[str, Any]:
    """FLOPs (one counted step each, which is also the warm-up: allocations, AdamW state, thread pools), ``warmup``
    more untimed steps each, then ``rounds`` rounds of one timed step per model, the order rotated by one every
    round so that no model always runs first. Returns per-entry step times and FLOPs, keyed by label."""
    flops = {}
    for e in entries:
        flops[e.label] = count_flops(e)
        for _ in range(warmup):
            e.losses.append(e.step())
    times: dict[str, list[float]] = {e.label: [] for e in entries}
    for r in range(rounds):
        order = entries[r % len(entries) :] + entries[: r % len(entries)]
        for e in order:
            _sync()
            t = time.perf_counter()
            e.losses.append(e.step())
            _sync()
            times[e.label].append(time.perf_counter() - t)
        say(f"  round {r + 1}/{rounds}: " + ", ".join(f"{e.label} {times[e.label][-1]:.2f} s" for e in entries))
    return {"times": times, "flops": flops}


def summarise(entries: list[Entry], timed: dict[str, Any], batch: int, peak: dict[str, float]) -> list[dict]:
    """One row per entry: median step, samples/s, FLOPs, MFU, and ratios peer/owl for each owl loop present."""
    from owl.models.builders import count_parameters  # any module: tied tensors counted once

    rows = []
    for e in entries:
        ts = timed["times"][e.label]
        med = statistics.median(ts)
        fl = timed["flops"][e.label]
        row = {"model": e.name, "loop": e.loop, "precision": e.precision, "image_tokens": e.image_tokens}
        row |= {"seq_len": e.seq_len, "params": count_parameters(e.model)["total"], "step_s": med, "step_s_all": ts}
        row |= {"samples_per_s": batch / med, "flops_per_step": fl}
        row["mfu"] = fl / med / (peak[e.precision] * 1e12) if peak.get(e.precision) else None
        row |= {"loss_first": e.losses[0] if e.losses else None, "loss_last": e.losses[-1] if e.losses else None}
        rows.append(row)
    owl = {("model-only" if r["loop"] == "plain" else "trainer"): r["step_s"] for r in rows if r["model"] == "owl"}
    for r in rows:
        r["ratio_vs_owl"] = {mode: r["step_s"] / s for mode, s in owl.items()}
    return rows


# ----------------------------------------------------------------------------------------------- the command


def _parse(value: str, allowed: tuple, what: str, cast: Callable = str) -> tuple:
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        parsed = tuple(dict.fromkeys(cast(v) for v in items))
    except ValueError:
        parsed = ()
    bad = [v for v in parsed if v not in allowed]
    if not parsed or bad:
        raise ConfigError(f"--{what} {value!r}: use a comma-separated subset of {','.join(map(str, allowed))}")
    return parsed


def check_args(
    llm: str, stages: str, modes: str, batch: int | None, rounds: int | None, image_size: int, patch: int = 14
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """Validate the CLI's values (one-line ``ConfigError`` for each mistake); returns the parsed lists."""
    llms = _parse(llm, tuple(LLMS), "llm")
    stage_t = _parse(stages, STAGES, "stages", int)
    mode_t = _parse(modes, MODES, "modes")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch {batch} must be >= 1")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be >= 1")
    if image_size < patch or image_size % patch:
        raise ConfigError(f"--image-size {image_size} must be a positive multiple of the patch size {patch}")
    return llms, stage_t, mode_t


def run_peers(
    llms: tuple[str, ...] = tuple(LLMS),
    stages: tuple[int, ...] = STAGES,
    modes: tuple[str, ...] = MODES,
    batch: int | None = None,
    rounds: int | None = None,
    setup: Setup | None = None,
    out: str | Path = "runs/bench",
    warmup: int = 0,
    say: Callable[[str], None] = print,
    llm_configs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure every (LLM, stage) cell, write ``peers.json`` and ``peers.md`` under ``out``, return the result.

    ``batch`` / ``rounds`` of None take each LLM's :data:`DEFAULT_PLAN`; ``llm_configs`` replaces :data:`LLMS`
    (tests use a micro LLM under the same names).
    """
    from owl.bench.peak import gemm_tflops, machine

    setup = setup or Setup()
    configs = llm_configs or LLMS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    say("measuring the fp32 GEMM peak ...")
    peak = {"fp32": gemm_tflops(1024, torch.float32, 1.0, device)}
    result: dict[str, Any] = {
        "machine": machine(),
        "device": device,
        "peak": peak,
        "setup": dataclasses.asdict(setup),
        "llms": {name: configs[name] for name in llms},
        "lora": LORA,
        "cells": [],
    }
    t0 = time.perf_counter()
    for name in llms:
        plan = DEFAULT_PLAN.get(name, {"batch": 4, "rounds": 5})
        b, r = batch or plan["batch"], rounds or plan["rounds"]
        for stage in stages:
            say(f"[{name} stage {stage}] batch {b}, {r} rounds (after 1 FLOP-counted warm-up step + {warmup} more)")
            entries = build_entries(configs[name], setup, stage, b, modes, say=say, out=str(out))
            if any(e.precision == "bf16" for e in entries) and "bf16" not in peak:
                peak["bf16"] = gemm_tflops(1024, torch.bfloat16, 1.0, device)
            timed = time_entries(entries, r, warmup, say)
            rows = summarise(entries, timed, b, {k: v["tflops"] for k, v in peak.items()})
            result["cells"].append({"llm": name, "stage": stage, "batch": b, "rounds": r, "rows": rows})
            del entries
    result["peak_after"] = {"fp32": gemm_tflops(1024, torch.float32, 1.0, device)}
    result["wall_s"] = time.perf_counter() - t0
    (out / "peers.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "peers.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The tables of ``peers.md``: one per (LLM, stage); ratio = the model's median step / owl's (>1: slower)."""
    m, s = result["machine"], result["setup"]
    peak = result["peak"]["fp32"]["tflops"]
    after = result.get("peak_after", {}).get("fp32", {}).get("tflops")
    lines = [
        f"Peers on {m['cpu']} ({result['device']}, {m['torch_threads']} torch threads, torch {m['torch']}); "
        f"fp32 GEMM peak {peak:.3f} TFLOP/s" + (f" (after the run: {after:.3f})" if after else "") + ".",
        f"Vision: CLIP-shaped ViT {s['image_size']} px / patch {s['patch_size']}, width {s['vision_hidden']}, "
        f"{s['vision_layers']} layers; text {s['text_len']} tokens, all targets; random weights.",
        "ratio = the model's median step time / owl's (above 1: slower than owl); MFU against the measured peak.",
        "",
    ]
    for cell in result["cells"]:
        rows = cell["rows"]
        modes = [mode for mode in MODES if any(mode in r["ratio_vs_owl"] for r in rows)]
        lines += [
            f"### {cell['llm']}, stage {cell['stage']} (batch {cell['batch']}, median of {cell['rounds']} rounds)",
            "",
            "| model | loop | precision | image tokens | seq | trainable params | GFLOP/step | s/step | samples/s "
            "| MFU % | " + " | ".join(f"ratio vs owl {mode}" for mode in modes) + " |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(modes),
        ]
        for r in rows:
            mfu = f"{100 * r['mfu']:.1f}" if r["mfu"] is not None else "-"
            ratios = " | ".join(f"{r['ratio_vs_owl'][mode]:.2f}" for mode in modes)
            lines.append(
                f"| {r['model']} | {'owl trainer' if r['loop'] == 'owl-trainer' else 'plain'} | {r['precision']} "
                f"| {r['image_tokens']} | {r['seq_len']} | {r['params']['trainable']:,} "
                f"| {r['flops_per_step'] / 1e9:,.1f} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | {mfu} "
                f"| {ratios} |"
            )
        lines.append("")
    return "\n".join(lines + NOTES)


def main(
    llm: str, stages: str, modes: str, batch: int | None, rounds: int | None, image_size: int, out: str | Path
) -> dict[str, Any]:
    """``owl bench peers``: validate, measure with progress lines, print the tables and where they went."""
    llms, stage_t, mode_t = check_args(llm, stages, modes, batch, rounds, image_size)
    result = run_peers(
        llms, stage_t, mode_t, batch, rounds, Setup(image_size=image_size), out, say=lambda s: print(s, flush=True)
    )
    print(markdown(result), end="")
    print(f"written to {Path(out) / 'peers.json'} and peers.md ({result['wall_s']:.0f} s)")
    return result
