"""The ``owl eval`` command group: OwlEval answers, standard benchmarks (VQAv2, MME, MMBench), Owl-World.

``owl.cli`` wires it in with :func:`add_eval_parser`; other ``owl eval`` subcommands (rating, reports) join the
same group through the subparsers it returns. Thin, like ``owl.cli``: parse, build settings, call the library.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from owl.cli_use import add_generation_flags, generation_options
from owl.errors import InputError
from owl.eval import bootstrap

if TYPE_CHECKING:
    from owl.eval.runner import RunSettings

GENERATION_FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "do_sample": "--greedy/--sample",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "seed": "--seed",
}


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The flags as :class:`owl.eval.runner.RunSettings`; generation flags beside ``--manifest`` are an error."""
    from owl.eval.runner import RunSettings

    given = [flag for name, flag in GENERATION_FLAGS.items() if getattr(args, name, None) is not None]
    if args.manifest and given:
        raise InputError(f"--manifest reruns with the recorded generation settings; drop {', '.join(given)}")
    options = generation_options(args)
    return RunSettings(
        options=options,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        model_id=args.model_id,
        manifest=args.manifest,
        force=args.force,
        progress=not args.no_progress,
        limit=args.limit,
        show_settings=args.show_settings,
    )


def _need_out(args: argparse.Namespace) -> None:
    if not args.out:
        raise InputError(f"give --out RUN: the run directory (answers, manifest; a rerun resumes it) for {args.model}")


# ----------------------------------------------------------------------------- commands


def cmd_owleval(args: argparse.Namespace) -> None:
    from owl.eval.owleval import run_owleval

    _need_out(args)
    run_owleval(args.model, args.data, args.out, run_settings(args))


def cmd_vqa(args: argparse.Namespace) -> None:
    from owl.eval import vqa

    boot = {"resamples": args.bootstrap, "seed": args.bootstrap_seed}
    if args.predictions:
        _need_data(args)
        vqa.score_predictions(args.data, args.predictions, args.out, annotations=args.annotations, **boot)
        return
    _need_out(args)
    settings = run_settings(args)
    vqa.run_vqa(
        args.model, args.data, args.out, settings, annotations=args.annotations, image_root=args.image_root, **boot
    )


def cmd_mme(args: argparse.Namespace) -> None:
    from owl.eval import mme

    boot = {"resamples": args.bootstrap, "seed": args.bootstrap_seed}
    if args.predictions:
        mme.score_predictions(args.predictions, args.out, **boot)
        return
    _need_out(args)
    mme.run_mme(args.model, args.data, args.out, run_settings(args), **boot)


def cmd_mmbench(args: argparse.Namespace) -> None:
    from owl.eval import mmbench

    boot = {"resamples": args.bootstrap, "seed": args.bootstrap_seed}
    if args.predictions:
        _need_data(args)
        mmbench.score_predictions(args.data, args.predictions, args.out, circular=args.circular, **boot)
        return
    _need_out(args)
    mmbench.run_mmbench(args.model, args.data, args.out, run_settings(args), circular=args.circular, **boot)


def cmd_world(args: argparse.Namespace) -> None:
    from owl.eval.world import run_world, table

    summary = run_world(
        args.model,
        args.world,
        args.out,
        abilities=args.abilities.split(",") if args.abilities else None,
        batch_size=args.batch_size,
        predictions=args.predictions,
        resamples=args.bootstrap,
        seed=args.bootstrap_seed,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=1) if args.json else table(summary))


def _need_data(args: argparse.Namespace) -> None:
    if not args.data:
        raise InputError("--predictions is scored against the benchmark's data: give --data too")


# ----------------------------------------------------------------------------- parser


def _model_run_flags(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("model", nargs="?", help="model directory (or a training run's output; with --manifest: optional)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--out", help="run directory: answers, manifest.json; a rerun resumes what is missing")
    p.add_argument("--batch-size", type=int, help="prompts per forward pass (default 8, or the --manifest's)")
    p.add_argument("--model-id", help="the model's name in the outputs (default: the model directory's name)")
    p.add_argument(
        "--manifest",
        metavar="OLD/manifest.json",
        help="rerun with a recorded run's settings, model and data (their hashes must match, unless --force)",
    )
    p.add_argument("--force", action="store_true", help="run even if the model or data differ from --manifest's")
    p.add_argument("--limit", type=int, help="answer at most this many new prompts, then stop (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_flags(p)
    p.set_defaults(do_sample=None)


def _scorer_flags(p: argparse.ArgumentParser, predictions_help: str) -> None:
    p.add_argument("--predictions", help=predictions_help + " (scored without a model)")
    p.add_argument("--bootstrap", type=int, default=bootstrap.DEFAULT_RESAMPLES, help="resamples for the 95%% CIs")
    p.add_argument("--bootstrap-seed", type=int, default=bootstrap.DEFAULT_SEED, help="seed of the resampling")


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``owl eval`` and its subcommands to ``subparsers``; returns the group's own subparsers."""
    group = subparsers.add_parser(
        "eval",
        help="evaluate a model: OwlEval answers, VQAv2, MME, MMBench, Owl-World (resumable, with manifests)",
        description="Every model run writes RUN/manifest.json (model and data hashes, settings, versions, machine, "
        "wall time) and resumes when rerun; --manifest OLD/manifest.json reruns a recorded run exactly.",
    ).add_subparsers(dest="eval_cmd", required=True)

    o = group.add_parser(
        "owleval",
        help="answer the 82 OwlEval questions (dialogues per image) in the published answer format",
        description="Questions sharing an image are one dialogue, asked in question_id order with the model's "
        "own earlier answers in the prompt; rounds batch across images. Writes RUN/answers.jsonl (image, "
        "question_id, question, answer, model_id) and RUN/manifest.json. Generation: the model's own settings "
        "unless flags say otherwise.",
    )
    _model_run_flags(o, "the OwlEval folder (questions.jsonl, cases/) or its questions.jsonl")
    o.set_defaults(func=cmd_owleval)

    v = group.add_parser("vqa", help="VQAv2: official accuracy and normalisation, per answer type, with 95%% CIs")
    _model_run_flags(v, "the VQAv2 questions file (e.g. v2_OpenEnded_mscoco_val2014_questions.json)")
    v.add_argument("--annotations", help="the annotations file (default: v2_mscoco_<subtype>_annotations.json beside)")
    v.add_argument("--image-root", help="the COCO images folder (default: <subtype>/ beside the questions file)")
    _scorer_flags(v, "a results file [{question_id, answer}]")
    v.set_defaults(func=cmd_vqa)

    m = group.add_parser("mme", help="MME: acc, acc+ per subtask, perception and cognition totals, with 95%% CIs")
    _model_run_flags(m, "MME_Benchmark_release_version/ (one folder per subtask)")
    _scorer_flags(m, "a results folder as the official tool reads it (<subtask>.txt: image, question, truth, answer)")
    m.set_defaults(func=cmd_mme)

    b = group.add_parser("mmbench", help="MMBench-style multiple choice, circular evaluation, with 95%% CIs")
    _model_run_flags(b, "an MMBench TSV (index, question, hint, A-D, answer, category, l2-category, image)")
    b.add_argument(
        "--no-circular", dest="circular", action="store_false", help="ask each question once, options as published"
    )
    _scorer_flags(b, "JSON lines or a TSV with index and prediction per asked copy")
    b.set_defaults(func=cmd_mmbench)

    w = group.add_parser("world", help="score a model on an Owl-World eval split (as `owl world eval`, plus CIs)")
    w.add_argument("model", nargs="?", help="model directory (or a training run's output directory)")
    w.add_argument("--world", required=True, help="Owl-World directory (with eval.jsonl)")
    w.add_argument("--out", help="write predictions.jsonl, scores.json and manifest.json here")
    w.add_argument("--abilities", help="comma-separated subset, e.g. colour,shape")
    w.add_argument("--batch-size", type=int, default=32)
    w.add_argument("--json", action="store_true")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    _scorer_flags(w, "a predictions.jsonl (id, prediction per line) as --out writes")
    w.set_defaults(func=cmd_world)
    return group
