"""The one training loop. Stage 1 and stage 2 differ only in their ``TrainConfig``.

``train`` reads top to bottom: :func:`setup` (model, strategy, data, optimizer, schedule, resume), then
:func:`train_step` per optimizer step, :func:`record_metrics` every ``train.log_every`` steps, checkpoints, and
:func:`finish` (the final checkpoint and the model directory).

Per optimizer step: draw the step's samples (``TrainData``), count the target
tokens of the whole global batch (all ranks, all micro-batches), then for each
micro-batch backpropagate ``loss_sum / global_target_tokens`` so the gradient
is exactly that of the mean loss over the global batch, however it is split
across processes and accumulation steps. Clip, step, schedule. How that is
distributed (one process, DDP, FSDP2, DeepSpeed ZeRO-2/3) is the business of a
strategy's hooks (``owl.train.distributed``); accelerate owns the process group.
Resuming is ``owl.train.resume``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from owl.atomic import write_text
from owl.configtools import dump_yaml
from owl.data import SkipStats, count_records
from owl.errors import CheckpointError, ConfigError, DataError
from owl.models.checkpoint import save_pretrained
from owl.packing import pack
from owl.processing import Encoded, OwlProcessor
from owl.train import budget as tb
from owl.train import checkpoint as ckpt
from owl.train import resume
from owl.train.config import TrainConfig
from owl.train.data import TrainData
from owl.train.distill import distill_rows, kl_sum, select_rows, teacher_logits
from owl.train.distributed import Strategy, make_strategy
from owl.train.metrics import MetricsLog, StepMetrics, Window, log_line, plot_image_gain, plot_loss
from owl.train.precision import resolve_llm_attention, resolve_precision
from owl.train.probe import ImageGainProbe
from owl.train.setup import build_for_training, lineage, preflight
from owl.train.text_align import AlignPlan, align_sum, plan, teacher_states
from owl.train.trainable import (
    apply_trainable,
    enable_activation_checkpointing,
    merge_vision_lora,
    param_groups,
    set_train_modes,
    trainable_table,
)

MODEL_SUBDIR = "model"


class BadDataError(DataError):
    """Too large a share of the data is unusable; the message carries the skip summary."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint or the model directory could not be written (a full disk, a quota); nothing was replaced."""


@dataclass
class Run:
    """Everything :func:`setup` builds and the steps, logs and checkpoints of one run use."""

    cfg: TrainConfig
    acc: Any  # accelerate.Accelerator
    strategy: Strategy
    model: nn.Module  # as prepared by the strategy (wrapped, sharded)
    processor: OwlProcessor
    data: TrainData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[nn.Parameter]  # the trainable ones
    # {"total": optimizer steps of the whole run}: one mutable cell that the loop and the lr schedule both read, so
    # a time budget that lowers it once, after the first steps (owl.train.budget), is seen by both
    horizon: dict[str, int]
    step: int  # optimizer steps done (the resumed step at first)
    out: Path
    config_yaml: str
    keep_all_in_graph: bool  # run the vision tower and abstractor even on text-only micro-batches
    probe: ImageGainProbe | None = None  # the image-gain batch, when train.image_gain_every is set
    last_gain: float | None = None  # the latest image gain, shown in the progress bar
    budget: tb.TimeBudget | None = None  # train.time_budget_min's clock, until it has fixed the step count

    @property
    def total(self) -> int:
        return self.horizon["total"]

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def distill_sources(self) -> frozenset[str]:
        return frozenset(self.cfg.distill.sources)

    @property
    def align_sources(self) -> frozenset[str]:
        return frozenset(self.cfg.text_align.sources)

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        """The tokenizer's special ids: text_align drops them from the caption it gives the teacher."""
        return frozenset(i for i in self.processor.tokenizer.all_special_ids if i is not None)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) one training stage; returns the directory of the trained model."""
    preflight(cfg)  # before anything is built or written: a config error leaves no output directory behind
    run = setup(cfg)
    log = MetricsLog(run.out, cfg.train.tensorboard and run.main, resume_step=run.step) if run.main else None
    kill_at = int(os.environ.get("OWL_DEBUG_KILL_AFTER_STEP", "0"))  # tests: simulate SIGKILL mid-run
    bar = tqdm(
        total=run.total,
        initial=run.step,
        disable=not (run.main and cfg.train.progress),
        desc=f"stage {cfg.stage}",
        dynamic_ncols=True,
    )
    window = Window(run.step)
    last_loss = None
    while run.step < run.total:
        metrics = train_step(run)
        run.step += 1
        window.add(metrics)
        bar.update(1)
        _check_bad_data(run)
        gain = measure_image_gain(run) if _due(run.step, cfg.train.image_gain_every, run.total) else None
        if run.step % cfg.train.log_every == 0 or run.step == run.total or gain is not None:
            last_loss = record_metrics(run, log, bar, window, metrics.grad_norm, gain)
        if run.budget is not None and run.budget.after_step():  # before a checkpoint, which then keeps the count
            fit_to_budget(run, bar)
        if cfg.checkpoint.every and run.step % cfg.checkpoint.every == 0 and run.step < run.total:
            save_checkpoint(run)
        if kill_at and run.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    return finish(run, log, last_loss)


# ----------------------------------------------------------------------------------------------- setup


def setup(cfg: TrainConfig) -> Run:
    """Accelerator, model, strategy, data, optimizer, schedule; the resumed state if there is a checkpoint.

    The order is fixed by what needs what: trainable layout before sharding, the saved weights before sharding
    too (``resume.restore_weights``), the optimizer on the sharded parameters, the rest of the saved state after
    the strategy prepared model and optimizer (``resume.restore_state``).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    precision = _precision(cfg)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    say = print if acc.is_main_process else (lambda *a, **k: None)
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)
    total = _total_steps(cfg, cfg.train.batch_size * cfg.train.grad_accum * acc.num_processes)

    model, processor = build_for_training(cfg)
    attention, why = resolve_llm_attention(cfg.train.llm_attention, precision, acc.device.type)
    if attention is not None and attention != model.causal_lm.config._attn_implementation:
        model.causal_lm.set_attn_implementation(attention)  # a model that cannot switch only warns: say what holds
        now = model.causal_lm.config._attn_implementation
        say(f"llm attention: {why}" if now == attention else f"llm attention: stays {now} (asked for {attention})")
    apply_trainable(model, cfg.trainable, cfg.lora)
    if cfg.train.gradient_checkpointing:
        enable_activation_checkpointing(model)
    strategy = make_strategy(cfg, acc, precision)
    teachers = [k for k in ("distill", "text_align") if getattr(cfg, k).sources]
    if teachers and strategy.sharded:  # the teacher's forward would gather shards on some ranks only
        raise ConfigError(
            f"{teachers[0]} runs its teacher on some micro-batches only, which train.distributed="
            f"{cfg.train.distributed} cannot (its weights are gathered collectively); use one process or ddp"
        )
    n_layers = getattr(model.causal_lm.config, "num_hidden_layers", None)
    if cfg.text_align.sources and n_layers is not None and max(cfg.text_align.layers) > n_layers:
        raise ConfigError(
            f"text_align.layers={cfg.text_align.layers}: the LLM has {n_layers} layers; use numbers 1..{n_layers}"
        )
    data = TrainData(
        cfg.data.sources,
        cfg.data.mix,
        processor,
        cfg.seed,
        acc.process_index,
        acc.num_processes,
        cfg.train.batch_size,
        cfg.train.grad_accum,
        cfg.train.group_by_length,
    )
    if acc.is_main_process:
        for path in ckpt.remove_stale(out, extra=(f".{MODEL_SUBDIR}.tmp-*", f".{MODEL_SUBDIR}.old-*")):
            say(f"removed {path}, left by a run that was stopped while writing it")
    acc.wait_for_everyone()
    saved = resume.load(out, cfg.checkpoint.resume, say)
    if saved is not None:
        resume.restore_weights(saved, model)
    model = strategy.shard(model)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps
    )
    horizon = {"total": total}  # a time budget lowers it once; the schedule reads it at every step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cfg.schedule.factor(s, horizon["total"]))

    config_yaml = dump_yaml(cfg)
    say(f"owl train: stage {cfg.stage or '-'} -> {out}\n--- resolved config ---\n{config_yaml}-----------------------")
    say(f"{'module':<12}{'trainable':>14}{'total':>16}")
    for module, n_train, n_total in trainable_table(model):  # before prepare: ZeRO-3 empties the parameters
        say(f"{module:<12}{n_train:>14,}{n_total:>16,}")
    say(
        f"steps {total}, global batch {data.global_batch} ({cfg.train.batch_size} x {cfg.train.grad_accum} accum "
        f"x {acc.num_processes} processes, {strategy.describe()}), sources: "
        + ", ".join(f"{s.name} ({s.format}, weight {s.weight:g})" for s in cfg.data.sources)
    )

    model, optimizer = strategy.prepare(model, optimizer)
    step = 0
    if saved is not None:
        step = resume.restore_state(saved, model, optimizer, scheduler, data, strategy, acc)
        say(f"resumed from {saved['path']} at step {step}")
    clock = None
    if cfg.train.time_budget_min is not None:
        spent = saved["state"].get("budget") if saved is not None else None
        if spent and spent["decided"]:  # the step count was fixed before the interruption: keep it
            horizon["total"] = min(total, spent["total"])
            say(f"time budget: the step count was fixed at {horizon['total']} before this resume")
        else:
            t = cfg.train
            measure = tb.window(t.time_budget_measure, t.image_gain_every)
            clock = tb.TimeBudget(t.time_budget_min, measure, seconds_before=spent["seconds"] if spent else 0.0)
    raw = strategy.unwrap(model)
    set_train_modes(raw, cfg.trainable)
    probe = None
    if cfg.train.image_gain_every:
        held_out = bool(cfg.data.probe)
        sources = cfg.data.probe or cfg.data.sources
        probe = ImageGainProbe.from_sources(sources, processor, cfg.train.image_gain_samples, held_out)
        say(
            f"image gain every {cfg.train.image_gain_every} steps on {len(probe.items)} "
            f"{'held-out' if held_out else 'seen (training)'} samples"
            if probe is not None
            else "image gain: off (fewer than 2 usable samples with images in the probe sources)"
        )
    return Run(
        cfg=cfg,
        acc=acc,
        strategy=strategy,
        model=model,
        processor=processor,
        data=data,
        optimizer=optimizer,
        scheduler=scheduler,
        params=[p for p in raw.parameters() if p.requires_grad],
        horizon=horizon,
        step=step,
        out=out,
        config_yaml=config_yaml,
        # Every process must run every sharded/synchronised module each micro-batch, images or not.
        keep_all_in_graph=acc.num_processes > 1 or strategy.sharded,
        probe=probe,
        budget=clock,
    )


def fit_to_budget(run: Run, bar: tqdm) -> None:
    """Fix the step count to what fits in ``train.time_budget_min`` (``owl.train.budget``), the same on every
    process (their timings averaged)."""
    clock, cap = run.budget, run.total
    assert clock is not None
    timed = torch.tensor([clock.seconds_per_step(), clock.elapsed()], device=run.acc.device)
    per_step, elapsed = run.acc.reduce(timed, "mean").tolist()
    total = tb.fitted_steps(run.step, cap, clock.minutes * 60 - elapsed, per_step)
    run.horizon["total"] = total
    run.budget = None
    bar.total = total
    bar.refresh()
    if run.main:
        bar.write(tb.describe(clock.minutes, per_step, clock.measure, total, cap))


def _total_steps(cfg: TrainConfig, global_batch: int) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    counts = [count_records(s) for s in cfg.data.sources]
    if any(c is None for c in counts):
        raise ConfigError("train.epochs needs sources of known size (json/jsonl); use train.max_steps for tar shards")
    return max(1, math.ceil(cfg.train.epochs * sum(counts) / global_batch))


def _precision(cfg: TrainConfig) -> str:
    precision, why = resolve_precision(cfg.train.precision)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"precision: {why}")
    return precision


# ------------------------------------------------------------------------------------------------ step


def train_step(run: Run) -> StepMetrics:
    """One optimizer step: every micro-batch's forward and backward, then clip, update and schedule.

    Each micro-batch backpropagates ``loss_sum * processes / global_target_tokens``: the gradient all-reduce
    averages over processes, so the result is the gradient of the mean loss per target token of the global batch.
    """
    acc, strategy, model = run.acc, run.strategy, run.model
    micro = run.data.next_step()
    n_local = sum(e.num_targets for mb in micro for e in mb)
    n_global = acc.reduce(torch.tensor(float(n_local), device=acc.device), "sum").item()
    metrics = StepMetrics(grad_norm=float("nan"), target_tokens=n_global)
    for i, items in enumerate(micro):
        last = i == len(micro) - 1
        items_or_dummy = items or [_dummy(run.processor)]
        if run.cfg.train.pack_tokens:
            batch = pack(items_or_dummy, run.cfg.train.pack_tokens, run.processor.pad_id)
        else:
            batch = run.processor.collate(items_or_dummy, "right")
        batch = {k: v.to(acc.device) if v is not None else None for k, v in batch.items()}
        rows = distill_rows([e.source for e in items], run.distill_sources) if run.distill_sources else []
        align = _align_plan(run, items) if run.align_sources else None
        layers = run.cfg.text_align.layers if align else None
        with strategy.micro_batch(model, last=last):
            res = model(
                **batch, return_logits=bool(rows), keep_all_in_graph=run.keep_all_in_graph, hidden_layers=layers
            )
            loss_sum = res.loss_sum
            if align:  # the LLM's states after the image pulled towards its states after the caption's text
                teacher = teacher_states(strategy.unwrap(model), align, layers)
                dist = align_sum(res.hidden_states, teacher, align, run.cfg.text_align.distance)
                loss_sum = loss_sum + run.cfg.text_align.weight * dist
                metrics.align.append((dist.item(), align.num_positions))
            if rows:  # hold the starting model's distribution on these samples (owl.train.distill)
                sub = select_rows(batch, rows)
                teacher = teacher_logits(strategy.unwrap(model), sub)
                kl, n_kl = kl_sum(res.logits[rows], teacher, sub["labels"], run.cfg.distill.temperature)
                loss_sum = loss_sum + run.cfg.distill.weight * kl
                metrics.distill.append((kl.item(), n_kl))
            loss = loss_sum * acc.num_processes / max(n_global, 1.0)
            if loss.requires_grad:  # else one process lost every sample of a step: nothing to learn, nothing to sync
                strategy.backward(loss)
            strategy.after_backward(last)
        metrics.loss_sums.append(res.loss_sum.item())
        real = batch["segments"] >= 0 if "segments" in batch else batch["attention_mask"]
        metrics.input_tokens.append(float(real.sum()))
        metrics.samples += [
            (e.source, ls, nt)
            for e, ls, nt in zip(items, res.sample_loss_sum.tolist(), res.sample_target_tokens.tolist())
        ]
    metrics.grad_norm = strategy.step(run.optimizer, run.params, run.cfg.optim.grad_clip)
    run.scheduler.step()
    return metrics


def _align_plan(run: Run, items: list[Encoded]) -> AlignPlan | None:
    proc, positions = run.processor, run.cfg.text_align.positions
    return plan(items, run.align_sources, proc.num_visual_tokens, proc.pad_id, run.special_ids, positions)


def _due(step: int, every: int, total: int) -> bool:
    return bool(every) and (step % every == 0 or step == total)


def measure_image_gain(run: Run) -> dict[str, float] | None:
    """The probe's losses with right and with rotated images (``owl.train.probe``); None without a probe."""
    if run.probe is None:
        return None
    raw = run.strategy.unwrap(run.model)
    try:
        return run.probe.measure(raw, run.processor, run.acc.device)
    finally:
        set_train_modes(raw, run.cfg.trainable)


def _dummy(processor: OwlProcessor) -> Encoded:
    """A sample with no targets, for a rank whose micro-batch lost every sample (keeps DDP in step)."""
    return Encoded([processor.pad_id, processor.pad_id], [-100, -100], None, source="(empty)")


def _check_bad_data(run: Run) -> None:
    """Abort (on every process alike) once too large a share of the records seen so far was unusable."""
    acc, data, cfg = run.acc, run.data, run.cfg
    bad = acc.reduce(
        torch.tensor([float(data.stats.total_skipped), float(data.stats.total_seen)], device=acc.device), "sum"
    ).cpu()
    if bad[1] >= cfg.data.min_seen_for_abort and bad[0] / bad[1] > cfg.data.max_bad_fraction:
        lines = "; ".join(_merged_stats(run).summary_lines()[:6])
        raise BadDataError(
            f"{int(bad[0])} of {int(bad[1])} records unusable, over data.max_bad_fraction="
            f"{cfg.data.max_bad_fraction}: {lines}"
        )


# --------------------------------------------------------------------------------------------- metrics


def record_metrics(
    run: Run, log: MetricsLog | None, bar: tqdm, window: Window, grad_norm: float, gain: dict | None = None
) -> float:
    """Reduce the window over processes, write its record, show it (bar, or a log line); returns its loss.

    Every process calls it (reductions); only the main one writes and prints.
    """
    from accelerate.utils import gather_object

    acc, optimizer, step = run.acc, run.optimizer, run.step
    sums = acc.reduce(torch.tensor([window.loss, window.inputs], device=acc.device), "sum").tolist()
    loss = sums[0] / max(window.tokens, 1.0)
    kl = acc.reduce(torch.tensor(window.distill, device=acc.device), "sum").tolist() if run.distill_sources else None
    src: dict[str, list[float]] = {}
    for part in gather_object([window.sources]) if acc.num_processes > 1 else [window.sources]:
        for name, (ls, nt) in part.items():
            t = src.setdefault(name, [0.0, 0])
            t[0] += ls
            t[1] += nt
    dt = time.perf_counter() - window.t
    lr = optimizer.param_groups[0]["lr"]
    record = {
        "step": step,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": sums[1] / dt,
        "s_per_step": dt / max(step - window.since, 1),
        "target_tokens": window.tokens,
        "lr_by_group": {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)},
        "loss_by_source": {k: v[0] / v[1] for k, v in src.items() if v[1] and k != "(empty)"},
        **(gain or {}),
    }
    if kl is not None and kl[1]:
        record["distill_kl"] = kl[0] / kl[1]  # per distilled target token
    al = acc.reduce(torch.tensor(window.align, device=acc.device), "sum").tolist() if run.align_sources else None
    if al is not None and al[1]:
        record["text_align"] = al[0] / al[1]  # per aligned position (owl.train.text_align)
    if log is not None:
        log.write(record)
    if gain is not None:
        run.last_gain = gain["image_gain"]
    postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok_s": f"{sums[1] / dt:,.0f}"}
    if run.last_gain is not None:
        postfix["img_gain"] = f"{run.last_gain:.3f}"
    bar.set_postfix(**postfix)
    if run.main and not run.cfg.train.progress:  # no bar: one plain line instead
        print(log_line(run.cfg.stage, record, run.total), flush=True)
    window.reset(step)
    return loss


def _merged_stats(run: Run) -> SkipStats:
    """The skip counts of every process, merged (on every process: a collective)."""
    if run.acc.num_processes == 1:
        return run.data.stats
    from accelerate.utils import gather_object

    merged = SkipStats()
    for d in gather_object([run.data.stats.to_dict()]):
        merged.merge(SkipStats.from_dict(d))
    return merged


# ----------------------------------------------------------------------------------- checkpoints, end


def save_checkpoint(run: Run) -> None:
    """Write checkpoint ``run.step``: every process takes part (gathers; DeepSpeed's own files), the main one
    commits it."""
    acc, strategy, out, step = run.acc, run.strategy, run.out, run.step
    stats = _merged_stats(run)
    trainable, optimizer_state = strategy.checkpoint_state(run.model, run.optimizer)
    rng = [ckpt.rng_state()]
    if acc.num_processes > 1:  # each process's own streams (dropout masks differ by process)
        from accelerate.utils import gather_object

        rng = gather_object(rng)
    if strategy.writes_shards:
        if acc.is_main_process:
            ckpt.begin_checkpoint(out, step)
        acc.wait_for_everyone()
        strategy.save_shards(run.model, ckpt.staging_dir(out, step))
        acc.wait_for_everyone()
    if acc.is_main_process:
        state = {
            "step": step,
            "scheduler": run.scheduler.state_dict(),
            "data": {"mixture": run.data.mixture.state_dict(), "stats": stats.to_dict()},
        }
        if run.cfg.train.time_budget_min is not None:
            clock = run.budget
            state["budget"] = tb.state(run.total, clock is None, clock.elapsed() if clock else 0.0)
        with _writing(f"checkpoint step {step}", out / ckpt.CKPT_DIR, out):
            ckpt.save_checkpoint(
                out,
                step,
                trainable,
                optimizer_state,
                state,
                run.config_yaml,
                run.cfg.checkpoint.keep,
                rng=rng,
                staged=strategy.writes_shards,
            )
    acc.wait_for_everyone()


_LOW_SPACE = 64 << 20  # bytes free under which a failed write is put down to the disk


@contextlib.contextmanager
def _writing(what: str, where: Path, out: Path) -> Iterator[None]:
    """Turn a write that failed for want of space (or a read-only or failing disk) into one clear error.

    The writers underneath fail in their own words (``OSError`` 28, safetensors' "I/O error", torch's "unexpected
    pos"), so the disk is asked too. Every write is atomic, so the previous checkpoint is still there; the
    message says which, and how to go on. Any other failure is a bug and keeps its traceback.
    """
    try:
        yield
    except Exception as e:
        code = getattr(e, "errno", None)
        probe = where if where.exists() else where.parent
        free = shutil.disk_usage(probe).free if probe.exists() else None
        disk = code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO) or "No space left" in str(e)
        if not disk and (free is None or free >= _LOW_SPACE):
            raise
        done = ckpt.list_checkpoints(out)
        kept = f"the newest complete checkpoint, {done[-1]}, is intact" if done else "no complete checkpoint yet"
        first = (str(e).splitlines() or [""])[0]
        space = f"{free / 2**20:.1f} MiB free there" if free is not None else "free space unknown"
        if code == errno.EROFS:
            cause = f"the disk is read-only; {space}"
        elif code == errno.EIO:
            cause = f"the disk failed to write (EIO); {space}"
        elif code == errno.EDQUOT:
            cause = f"over the disk quota: {space}"
        elif disk or (free is not None and free < _LOW_SPACE):
            cause = f"the disk is full: {space}"  # whatever words the writer used, e.g. torch's "unexpected pos"
        else:
            cause = f"{type(e).__name__}: {first[:200]}; {space}"
        raise CheckpointWriteError(
            f"could not write {what} to {where} ({cause}); "
            f"{kept}: free some space (or lower checkpoint.keep) and run the same command again to resume"
        ) from e


def finish(run: Run, log: MetricsLog | None, last_loss: float | None) -> Path:
    """The final checkpoint, then the trained model as an ordinary model directory (plus report and plot)."""
    cfg, out = run.cfg, run.out
    save_checkpoint(run)
    stats = _merged_stats(run)
    model_dir = out / MODEL_SUBDIR
    final = run.strategy.full_model(run.model)  # gathered from every process; a plain model on the main one
    if run.main:
        log.close()
        merge_vision_lora(final)
        if cfg.merge_lora and hasattr(final.llm, "merge_and_unload"):
            final.llm = final.llm.merge_and_unload()
        with _writing("the model directory", model_dir, out):
            save_pretrained(
                final,
                model_dir,
                tokenizer=run.processor.tokenizer,
                extra_files={
                    "lineage.json": json.dumps(lineage(cfg, run.step, last_loss), indent=1),
                    "train_config.yaml": run.config_yaml,
                },
            )
        write_text(out / "train_config.yaml", run.config_yaml)
        report = "\n".join(stats.summary_lines())
        write_text(out / "data_report.txt", report + "\n")
        plot_loss(out, title=f"stage {cfg.stage}: {out.name}" if cfg.stage else out.name)
        plot_image_gain(out)
        print(report)
        print(f"model written to {model_dir} (load it with owl.models.load_model or any owl command)")
    run.acc.wait_for_everyone()
    return model_dir
