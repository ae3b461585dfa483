"""Pictures and markdown for Owl-World results: accuracy per ability, loss curves, example answers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from owl.world.items import ABILITIES


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ordered(summary: dict[str, dict]) -> list[str]:
    return [a for a in ABILITIES if a in summary] + [a for a in summary if a not in ABILITIES and a != "overall"]


def plot_accuracy(summary: dict[str, dict], path: str | Path, title: str = "", baseline: dict | None = None) -> Path:
    """Bars per ability with the chance level marked (and an optional 'before' bar, e.g. the untuned LLM)."""
    plt = _plt()
    abilities = ordered(summary)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(abilities) + 2), 3.8), dpi=110)
    xs = range(len(abilities))
    acc = [100 * summary[a]["accuracy"] for a in abilities]
    ax.bar(xs, acc, color="tab:blue", label="model", width=0.7)
    for x, a in zip(xs, abilities):
        ax.hlines(
            100 * summary[a]["chance"], x - 0.38, x + 0.38, colors="tab:red", lw=2, label="chance" if x == 0 else None
        )
        if baseline and a in baseline:
            ax.plot(x, 100 * baseline[a]["accuracy"], "kD", ms=5, label="before tuning" if a == "text" else None)
        ax.text(x, acc[x] + 1.5, f"{acc[x]:.0f}", ha="center", fontsize=7)
    ax.set_xticks(list(xs), abilities, rotation=35, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_losses(run_dirs: dict[str, str | Path], path: str | Path) -> Path:
    """One panel per training stage, loss per step (and per source when there are several)."""
    from owl.train.metrics import read_metrics

    plt = _plt()
    fig, axes = plt.subplots(1, len(run_dirs), figsize=(5 * len(run_dirs), 3.4), dpi=110, squeeze=False)
    for ax, (name, run) in zip(axes[0], run_dirs.items()):
        rows = read_metrics(run)
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="black", lw=1.4, label="loss")
        sources = sorted({s for r in rows for s in r.get("loss_by_source", {})})
        if len(sources) > 1:
            for s in sources:
                pts = [(r["step"], r["loss_by_source"][s]) for r in rows if s in r.get("loss_by_source", {})]
                ax.plot(*zip(*pts), lw=0.8, alpha=0.8, label=s)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_examples(
    items: list[dict], predictions: list[str], correct: list[bool], root: str | Path, path: str | Path, n: int = 8
) -> Path:
    """A grid of eval images with the question, the expected answer and the model's answer."""
    from PIL import Image

    plt = _plt()
    picked: list[int] = []
    seen: set[str] = set()
    for i, it in enumerate(items):  # one example per ability first, then fill
        if it["image"] and it["ability"] not in seen:
            picked.append(i)
            seen.add(it["ability"])
    picked = (picked + [i for i, it in enumerate(items) if it["image"] and i not in picked])[:n]
    cols = 4
    rows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def clean(text: str) -> str:  # untrained models emit arbitrary bytes; show them as "?"
        return "".join(c if c.isprintable() and ord(c) < 0x2000 else "?" for c in text)

    for ax, i in zip(axes.flat, picked):
        it = items[i]
        ax.imshow(Image.open(Path(root) / it["image"][-1]).convert("RGB"))
        q = textwrap.shorten(it["messages"][-1]["content"].replace("<image>", "").strip(), 70)
        mark = "OK" if correct[i] else "WRONG"
        ax.set_title(
            f"[{it['ability']}] {textwrap.fill(q, 34)}\nexpected: {it['answer']}\nmodel: "
            f"{textwrap.shorten(clean(predictions[i]), 30) or '(empty)'} ({mark})",
            fontsize=7.5,
            loc="left",
            color="black" if correct[i] else "darkred",
        )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def table(summary: dict[str, dict], baseline: dict | None = None, blind: dict | None = None) -> str:
    """Markdown: accuracy per ability beside chance, the blind commonest-answer score and the untuned LLM."""
    head = (
        "| ability | n | accuracy | chance |" + (" blind |" if blind else "") + (" before tuning |" if baseline else "")
    )
    lines = [head, "|---|---:|---:|---:|" + ("---:|" if blind else "") + ("---:|" if baseline else "")]
    for a in ordered(summary) + (["overall"] if "overall" in summary else []):
        s = summary[a]
        row = f"| {a} | {s['n']} | {100 * s['accuracy']:.1f}% | {100 * s['chance']:.1f}% |"
        if blind:
            row += f" {100 * blind[a]['accuracy']:.1f}% |" if a in blind else " |"
        if baseline:
            b = baseline.get(a)
            row += f" {100 * b['accuracy']:.1f}% |" if b else " |"
        lines.append(row)
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=1))
