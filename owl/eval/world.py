"""``owl eval world``: the Owl-World held-out split under ``owl eval``, with intervals and a manifest.

The answering and the scoring are Owl-World's own (:func:`owl.world.evaluate.evaluate_world`, the rules in
:mod:`owl.world.scorers`), unchanged, so ``owl world eval`` and ``owl eval world`` give the same table; this adds
what every ``owl eval`` run has: bootstrap intervals over items per ability, ``manifest.json`` (model and world
hashes, settings, versions, machine, wall time) and scoring a predictions file without a model
(``--predictions``: the ``predictions.jsonl`` that ``--out`` writes, one ``id`` and ``prediction`` a line).

This is the one module of ``owl.eval`` that imports the toy world; the rest serves any model on public sets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from owl.errors import DataError, DataFileNotFound
from owl.eval import bootstrap
from owl.eval import manifest as mf
from owl.generation import GenerationOptions
from owl.world.evaluate import evaluate_world
from owl.world.formats import load_eval
from owl.world.scorers import score, summarize

MAX_NEW_TOKENS = 16
"""What owl.world.evaluate generates with (greedy): recorded in the manifest."""


def _items(world: str | Path, abilities: list[str] | None) -> tuple[Path, list[dict]]:
    path = Path(world) / "eval.jsonl"
    if not path.is_file():
        raise DataFileNotFound(f"no eval.jsonl in {world}; build a world with `owl world build --out DIR`")
    items = load_eval(path)
    return path, [it for it in items if abilities is None or it["ability"] in abilities]


def with_intervals(items: list[dict], predictions: list[str], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Owl-World's summary (per ability and overall) with a bootstrap interval over each ability's items."""
    summary = summarize(items, predictions)
    right = np.array([score(p, it) for p, it in zip(predictions, items)], dtype=float)
    abilities = np.array([it["ability"] for it in items])
    for ability, row in summary.items():
        mask = np.ones(len(items), dtype=bool) if ability == "overall" else abilities == ability
        row["ci95"] = bootstrap.interval(right[mask], resamples=resamples, seed=seed)
    return summary


def read_predictions(path: str | Path, items: list[dict]) -> list[str]:
    """Predictions in item order from a ``predictions.jsonl`` (``id`` and ``prediction`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFound(f"predictions file not found: {path}")
    by_id = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rec = json.loads(line)
                by_id[str(rec["id"])] = str(rec["prediction"])
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{number}: a prediction line has 'id' and 'prediction'") from None
    missing = [it["id"] for it in items if str(it["id"]) not in by_id]
    if missing:
        raise DataError(f"{path} lacks predictions for {len(missing)} of {len(items)} items (e.g. {missing[0]})")
    return [by_id[str(it["id"])] for it in items]


def run_world(
    model_dir: str | None,
    world: str,
    out: str | None,
    *,
    abilities: list[str] | None = None,
    batch_size: int = 32,
    predictions: str | None = None,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = bootstrap.DEFAULT_SEED,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a model (or a predictions file) on the world's held-out split; returns the summary with intervals."""
    t0 = time.perf_counter()
    eval_path, items = _items(world, abilities)
    if predictions is not None:
        preds = read_predictions(predictions, items)
        model = None
    else:
        from owl.models import load_model
        from owl.processing import OwlProcessor

        if not model_dir:
            raise DataError("give a model directory, or --predictions FILE to score answers already written")
        model = mf.model_record(model_dir, Path(model_dir).resolve().name)
        net, proc = load_model(model_dir).eval(), OwlProcessor.from_pretrained(model_dir)
        res = evaluate_world(net, proc, world, abilities=abilities, out=out, batch_size=batch_size, progress=progress)
        preds = res["predictions"]
    summary = with_intervals(items, preds, resamples, seed)
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [eval_path] + ([Path(predictions)] if predictions else [])
        images = sorted({str(Path(world) / p) for it in items for p in it["image"]})
        generation = None if model is None else GenerationOptions(max_new_tokens=MAX_NEW_TOKENS).resolve()
        mf.record_finished(
            out_dir,
            "world",
            model=model,
            data=mf.data_record(world, files, images),
            generation=generation,
            run={"batch_size": batch_size, "device": "cpu", "dtype": "fp32"} if model else {},
            benchmark_args={"abilities": abilities},
            counts={"questions": len(items)},
            scores=summary,
            seconds=time.perf_counter() - t0,
        )
    return summary


def table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown: accuracy per ability with its interval and chance."""
    lines = ["| ability | n | accuracy | 95% CI | chance |", "|---|---:|---:|---|---:|"]
    for ability, s in summary.items():
        ci = bootstrap.describe(s.get("ci95"), 1)
        lines.append(f"| {ability} | {s['n']} | {100 * s['accuracy']:.1f}% | {ci} | {100 * s['chance']:.1f}% |")
    return "\n".join(lines)
