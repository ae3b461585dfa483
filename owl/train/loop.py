"""The one training loop. Stage 1 and stage 2 differ only in their ``TrainConfig``.

Per optimizer step: draw the step's samples (``TrainData``), count the target
tokens of the whole global batch (all ranks, all micro-batches), then for each
micro-batch backpropagate ``loss_sum / global_target_tokens`` so the gradient
is exactly that of the mean loss over the global batch, however it is split
across processes and accumulation steps. Clip, step, schedule, log,
checkpoint. How that is distributed (one process, DDP, FSDP2, DeepSpeed
ZeRO-2/3) is the business of a strategy's hooks (``owl.train.distributed``);
accelerate owns the process group.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from owl.configtools import dump_yaml
from owl.data import count_records
from owl.models.checkpoint import save_pretrained
from owl.processing import Encoded
from owl.train import checkpoint as ckpt
from owl.train.config import TrainConfig
from owl.train.data import TrainData
from owl.train.distributed import Strategy, make_strategy
from owl.train.metrics import MetricsLog, plot_loss
from owl.train.setup import build_for_training, lineage, prepare_world
from owl.train.trainable import apply_trainable, merge_vision_lora, param_groups, set_train_modes, trainable_table

MODEL_SUBDIR = "model"


class BadDataError(RuntimeError):
    """Too large a share of the data is unusable; the message carries the skip summary."""


def _total_steps(cfg: TrainConfig, global_batch: int) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    counts = [count_records(s) for s in cfg.data.sources]
    if any(c is None for c in counts):
        raise ValueError("train.epochs needs sources of known size (json/jsonl); use train.max_steps for tar shards")
    return max(1, math.ceil(cfg.train.epochs * sum(counts) / global_batch))


def _precision(cfg: TrainConfig) -> str:
    p = cfg.train.precision
    if p == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if p == "bf16" and not torch.cuda.is_available():
        print("owl: warning: bf16 on this CPU is 10-400x slower than fp32; training in bf16 as asked", file=sys.stderr)
    return "no" if p == "fp32" else p


def _dummy(processor) -> Encoded:  # noqa: ANN001
    """A sample with no targets, for a rank whose micro-batch lost every sample (keeps DDP in step)."""
    return Encoded([processor.pad_id, processor.pad_id], [-100, -100], None, source="(empty)")


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) one training stage; returns the directory of the trained model."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    precision = _precision(cfg)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    main = acc.is_main_process
    out = Path(cfg.output_dir)
    say = print if main else (lambda *a, **k: None)
    set_seed(cfg.seed)

    if cfg.data.world is not None and cfg.data.world.out:
        if main:
            prepare_world(cfg.data.world)
        acc.wait_for_everyone()

    model, processor = build_for_training(cfg)
    apply_trainable(model, cfg.trainable, cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inner = getattr(model.vision, "model", None)
        if getattr(inner, "supports_gradient_checkpointing", False):
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    strategy = make_strategy(cfg, acc, precision)
    # Every process must run every sharded/synchronised module each micro-batch, images or not.
    model.keep_unused_in_graph = acc.num_processes > 1 or strategy.sharded

    data = TrainData(cfg.data.sources, cfg.data.mix, processor, cfg.seed, acc.process_index, acc.num_processes,
                     cfg.train.batch_size, cfg.train.grad_accum, cfg.train.group_by_length)
    total = _total_steps(cfg, data.global_batch)
    resume_from = ckpt.find_resume(out, cfg.checkpoint.resume)
    saved = ckpt.load_checkpoint(resume_from) if resume_from is not None else None
    if saved is not None:  # into the plain model, before any sharding: every process holds the full tensors
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in saved["trainable"].items():
                params[name].copy_(tensor)
    model = strategy.shard(model)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  eps=cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cfg.schedule.factor(s, total))

    config_yaml = dump_yaml(cfg)
    say(f"owl train: stage {cfg.stage or '-'} -> {out}\n--- resolved config ---\n{config_yaml}-----------------------")
    say(f"{'module':<12}{'trainable':>14}{'total':>16}")
    for module, n_train, n_total in trainable_table(model):
        say(f"{module:<12}{n_train:>14,}{n_total:>16,}")
    say(f"steps {total}, global batch {data.global_batch} ({cfg.train.batch_size} x {cfg.train.grad_accum} accum "
        f"x {acc.num_processes} processes, {strategy.describe()}), sources: "
        + ", ".join(f"{s.name} ({s.format}, weight {s.weight:g})" for s in cfg.data.sources))

    step = 0
    if saved is not None:
        state = saved["state"]
        scheduler.load_state_dict(state["scheduler"])
        data.load_state_dict(state["data"])
        if not main:
            data.stats = type(data.stats)()  # merged counts live on the main process only
        step = state["step"]

    model, optimizer = strategy.prepare(model, optimizer, saved)  # restores the optimizer state of `saved`
    if saved is not None:
        ckpt.set_rng_state(*ckpt.rank_rng_state(saved["rng"], saved["state"], acc.process_index))
        say(f"resumed from {resume_from} at step {step}")
    raw = strategy.unwrap(model)
    set_train_modes(raw, cfg.trainable)
    trainable_params = [p for p in raw.parameters() if p.requires_grad]
    log = MetricsLog(out, cfg.train.tensorboard and main, resume_step=step) if main else None
    kill_at = int(os.environ.get("OWL_DEBUG_KILL_AFTER_STEP", "0"))  # tests: simulate SIGKILL mid-run

    bar = tqdm(total=total, initial=step, disable=not (main and cfg.train.progress), desc=f"stage {cfg.stage}",
               dynamic_ncols=True)
    window = {"loss": 0.0, "tokens": 0.0, "inputs": 0.0, "t": time.perf_counter(), "src": {}, "since": step}
    last_loss = None
    while step < total:
        micro = data.next_step()
        n_local = sum(e.num_targets for mb in micro for e in mb)
        n_global = acc.reduce(torch.tensor(float(n_local), device=acc.device), "sum").item()
        for i, items in enumerate(micro):
            batch = processor.collate(items or [_dummy(processor)], "right")
            batch = {k: v.to(acc.device) if v is not None else None for k, v in batch.items()}
            with strategy.micro_batch(model, last=i == len(micro) - 1):
                res = model(**batch, return_logits=False)
                strategy.backward(res.loss_sum * acc.num_processes / max(n_global, 1.0))
            window["loss"] += res.loss_sum.item()
            window["inputs"] += float(batch["attention_mask"].sum())
            for e, ls, nt in zip(items, res.sample_loss_sum.tolist(), res.sample_target_tokens.tolist()):
                tot = window["src"].setdefault(e.source, [0.0, 0])
                tot[0] += ls
                tot[1] += nt
        window["tokens"] += n_global
        grad_norm = strategy.step(optimizer, trainable_params, cfg.optim.grad_clip)  # clip, update, zero grads
        scheduler.step()
        step += 1
        bar.update(1)

        bad = acc.reduce(torch.tensor([float(data.stats.total_skipped), float(data.stats.total_seen)]), "sum")
        if bad[1] >= cfg.data.min_seen_for_abort and bad[0] / bad[1] > cfg.data.max_bad_fraction:
            lines = "; ".join(_merged_stats(acc, data).summary_lines()[:6])
            raise BadDataError(f"{int(bad[0])} of {int(bad[1])} records unusable, over data.max_bad_fraction="
                               f"{cfg.data.max_bad_fraction}: {lines}")

        if step % cfg.train.log_every == 0 or step == total:
            last_loss = _log(acc, log, bar, window, step, optimizer, grad_norm)
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < total:
            _checkpoint(acc, strategy, cfg, out, step, model, optimizer, scheduler, data, config_yaml)
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    _checkpoint(acc, strategy, cfg, out, step, model, optimizer, scheduler, data, config_yaml)
    stats = _merged_stats(acc, data)
    model_dir = out / MODEL_SUBDIR
    final = strategy.full_model(model)  # gathered from every process; a plain model on the main one
    if main:
        log.close()
        merge_vision_lora(final)
        if cfg.merge_lora and hasattr(final.llm, "merge_and_unload"):
            final.llm = final.llm.merge_and_unload()
        import json

        save_pretrained(final, model_dir, tokenizer=processor.tokenizer, extra_files={
            "lineage.json": json.dumps(lineage(cfg, step, last_loss), indent=1),
            "train_config.yaml": config_yaml})
        (out / "train_config.yaml").write_text(config_yaml)
        report = "\n".join(stats.summary_lines())
        (out / "data_report.txt").write_text(report + "\n")
        plot_loss(out, title=f"stage {cfg.stage}: {out.name}" if cfg.stage else out.name)
        say(report)
        say(f"model written to {model_dir} (load it with OwlModel.from_pretrained or any owl command)")
    acc.wait_for_everyone()
    return model_dir


def _merged_stats(acc, data: TrainData):  # noqa: ANN001, ANN202
    if acc.num_processes == 1:
        return data.stats
    from accelerate.utils import gather_object

    from owl.data import SkipStats

    merged = SkipStats()
    for d in gather_object([data.stats.to_dict()]):
        merged.merge(SkipStats.from_dict(d))
    return merged


def _log(acc, log: MetricsLog | None, bar, window: dict, step: int, optimizer, grad_norm: float  # noqa: ANN001
         ) -> float:
    from accelerate.utils import gather_object

    sums = acc.reduce(torch.tensor([window["loss"], window["inputs"]], device=acc.device), "sum").tolist()
    loss = sums[0] / max(window["tokens"], 1.0)
    src: dict[str, list[float]] = {}
    for part in (gather_object([window["src"]]) if acc.num_processes > 1 else [window["src"]]):
        for name, (ls, nt) in part.items():
            t = src.setdefault(name, [0.0, 0])
            t[0] += ls
            t[1] += nt
    dt = time.perf_counter() - window["t"]
    lr = optimizer.param_groups[0]["lr"]
    record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": sums[1] / dt,
              "s_per_step": dt / max(step - window["since"], 1), "target_tokens": window["tokens"],
              "lr_by_group": {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)},
              "loss_by_source": {k: v[0] / v[1] for k, v in src.items() if v[1] and k != "(empty)"}}
    if log is not None:
        log.write(record)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{sums[1] / dt:,.0f}")
    window.update(loss=0.0, tokens=0.0, inputs=0.0, t=time.perf_counter(), src={}, since=step)
    return loss


def _checkpoint(acc, strategy: Strategy, cfg: TrainConfig, out: Path, step: int,  # noqa: ANN001
                model, optimizer, scheduler, data: TrainData, config_yaml: str) -> None:  # noqa: ANN001
    """Write checkpoint ``step``: every process takes part (gathers; DeepSpeed's own files), the main one commits."""
    stats = _merged_stats(acc, data)
    trainable, optimizer_state = strategy.checkpoint_state(model, optimizer)
    rng = [ckpt.rng_state()]
    if acc.num_processes > 1:  # each process's own streams (dropout masks differ by process)
        from accelerate.utils import gather_object

        rng = gather_object(rng)
    if strategy.writes_shards:
        if acc.is_main_process:
            ckpt.begin_checkpoint(out, step)
        acc.wait_for_everyone()
        strategy.save_shards(model, ckpt.staging_dir(out, step))
        acc.wait_for_everyone()
    if acc.is_main_process:
        state = {"step": step, "scheduler": scheduler.state_dict(),
                 "data": {"mixture": data.mixture.state_dict(), "stats": stats.to_dict()}}
        ckpt.save_checkpoint(out, step, trainable, optimizer_state, state, config_yaml, cfg.checkpoint.keep, rng=rng,
                             staged=strategy.writes_shards)
    acc.wait_for_everyone()
