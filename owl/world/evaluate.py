"""Answer Owl-World eval items with a model and score them (per ability, with chance level).

Generation goes through the same processor and batched generator as every
other caller; items are batched by prompt shape (number of images, length)
to keep padding small, and results come back in the file's order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from owl.generation import GenerationOptions, generate
from owl.models.owl import OwlModel
from owl.processing import OwlProcessor
from owl.world.formats import eval_item_to_sample, load_eval
from owl.world.scorers import score, summarize


def predict(
    model: OwlModel,
    processor: OwlProcessor,
    items: list[dict],
    root: str | Path,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to ``items`` (eval dicts), in order."""
    samples = [eval_item_to_sample(it, root) for it in items]
    order = sorted(
        range(len(samples)), key=lambda i: (len(samples[i].images), sum(len(m.content) for m in samples[i].messages))
    )
    answers: list[str] = [""] * len(samples)
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    bar = tqdm(total=len(samples), desc="evaluating", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, c in zip(idx, generate(model, processor, [samples[i] for i in idx], options, batch_size=batch_size)):
            answers[i] = c.text.strip()
        bar.update(len(idx))
    bar.close()
    return answers


def evaluate_world(
    model: OwlModel,
    processor: OwlProcessor,
    world_dir: str | Path,
    *,
    abilities: list[str] | None = None,
    out: str | Path | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a model on ``world_dir/eval.jsonl``; writes ``predictions.jsonl`` + ``scores.json`` to ``out``."""
    world_dir = Path(world_dir)
    items = load_eval(world_dir / "eval.jsonl")
    if abilities is not None:
        items = [it for it in items if it["ability"] in abilities]
    preds = predict(
        model, processor, items, world_dir, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
    )
    summary = summarize(items, preds)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "predictions.jsonl").open("w") as f:
            for it, p in zip(items, preds):
                f.write(
                    json.dumps(
                        {
                            "id": it["id"],
                            "ability": it["ability"],
                            "question": it["messages"][-1]["content"],
                            "answer": it["answer"],
                            "prediction": p,
                            "correct": score(p, it),
                        }
                    )
                    + "\n"
                )
        (out / "scores.json").write_text(json.dumps(summary, indent=1))
    return {"summary": summary, "items": items, "predictions": preds}
