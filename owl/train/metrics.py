"""Run feedback: metrics as JSON lines (+ TensorBoard), a plain log line, and a PNG loss curve at the end.

``logs/metrics.jsonl`` is the source of truth (one object per logged step);
TensorBoard, the progress bar (or, without it, one printed line per logged
step) and the plot are views of it. On resume, lines past the resumed step
(written by the killed run after its last checkpoint) are dropped so the file
describes one consistent run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepMetrics:
    """What one optimizer step measured on this process, per micro-batch and per sample, in the order it happened
    (the window below adds them in that order: float sums depend on it, and logged losses are compared bit for
    bit across a resume)."""

    grad_norm: float
    target_tokens: float  # of the whole global batch (all processes, all micro-batches)
    loss_sums: list[float] = field(default_factory=list)  # per micro-batch, this process
    input_tokens: list[float] = field(default_factory=list)  # per micro-batch, this process
    samples: list[tuple[str, float, int]] = field(default_factory=list)  # (source, loss sum, target tokens)
    distill: list[tuple[float, int]] = field(default_factory=list)  # per distilled micro-batch: (KL sum, tokens)
    align: list[tuple[float, int]] = field(default_factory=list)  # per aligned micro-batch: (distance sum, positions)


class Window:
    """Sums over the optimizer steps since the last logged one; the logged values are their means."""

    def __init__(self, step: int) -> None:
        self.reset(step)

    def reset(self, step: int) -> None:
        self.loss, self.tokens, self.inputs = 0.0, 0.0, 0.0
        self.sources: dict[str, list[float]] = {}  # source -> [loss sum, target tokens]
        self.distill = [0.0, 0.0]  # KL sum, target tokens (owl.train.distill)
        self.align = [0.0, 0.0]  # distance sum, positions (owl.train.text_align)
        self.t = time.perf_counter()
        self.since = step

    def add(self, m: StepMetrics) -> None:
        for loss in m.loss_sums:
            self.loss += loss
        for n in m.input_tokens:
            self.inputs += n
        for source, loss, n in m.samples:
            tot = self.sources.setdefault(source, [0.0, 0])
            tot[0] += loss
            tot[1] += n
        self.tokens += m.target_tokens
        for kl, n in m.distill:
            self.distill[0] += kl
            self.distill[1] += n
        for d, n in m.align:
            self.align[0] += d
            self.align[1] += n


def log_line(stage: str | None, record: dict[str, Any], total: int) -> str:
    """The line printed per logged step when the progress bar is off (logs of batch jobs, CI)."""
    return (
        f"stage {stage or '-'} step {record['step']}/{total} loss {record['loss']:.4f} lr {record['lr']:.2e} "
        f"grad_norm {record['grad_norm']:.3f} tok/s {record['tokens_per_s']:,.0f} "
        f"s/step {record['s_per_step']:.2f}"
        + (f" image_gain {record['image_gain']:.4f}" if "image_gain" in record else "")
    )


class MetricsLog:
    """``logs/metrics.jsonl`` (and TensorBoard's event files): one record per logged step."""

    def __init__(self, output_dir: str | Path, tensorboard: bool, resume_step: int = 0) -> None:
        self.dir = Path(output_dir) / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if self.path.exists():
            keep = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in keep))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key.replace(".", "/"), value, step)
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, (int, float)):
                            self.tb.add_scalar(f"{key}/{sub}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``logs/metrics.jsonl``, oldest first (none if the run logged nothing yet)."""
    path = Path(output_dir) / "logs" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(output_dir: str | Path, title: str = "") -> Path | None:
    """``loss.png``: training loss per step, per-source losses, and the learning rate."""
    rows = read_metrics(output_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], label="loss", color="black", lw=1.5)
    sources = sorted({s for r in rows for s in r.get("loss_by_source", {})})
    if len(sources) > 1:
        for s in sources:
            pts = [(r["step"], r["loss_by_source"][s]) for r in rows if s in r.get("loss_by_source", {})]
            ax.plot(*zip(*pts), label=s, lw=0.8, alpha=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_title(title or Path(output_dir).name)
    ax.grid(alpha=0.3)
    if "lr" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in rows], color="tab:gray", ls="--", lw=0.8, label="lr")
        ax2.set_ylabel("learning rate", color="tab:gray")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = Path(output_dir) / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_image_gain(output_dir: str | Path, title: str = "") -> Path | None:
    """``image_gain.png``: the probe's loss with right and with rotated images, and their difference, per step."""
    rows = [r for r in read_metrics(output_dir) if "image_gain" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), dpi=110, sharex=True)
    top.plot(steps, [r["probe_loss"] for r in rows], marker=".", label="right images")
    top.plot(steps, [r["probe_loss_shuffled"] for r in rows], marker=".", label="images rotated across the batch")
    top.set_ylabel("probe loss (nats/token)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    top.set_title(title or f"image gain: {Path(output_dir).name}")
    bottom.plot(steps, [r["image_gain"] for r in rows], marker=".", color="black")
    bottom.axhline(0, color="gray", lw=0.8, ls=":")
    bottom.set_ylabel("image gain (nats/token)")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(output_dir) / "image_gain.png"
    fig.savefig(out)
    plt.close(fig)
    return out
