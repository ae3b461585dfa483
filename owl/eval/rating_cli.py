"""``owl eval rate | report | judge``: the human (and optional automatic-judge) side of OwlEval.

Kept apart from :mod:`owl.eval.cli` (which runs models) so that rating needs no model, no GPU and no torch
import; ``owl.cli`` wires :func:`add_parsers` into the ``owl eval`` group.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from owl.errors import DataError

DEFAULT_DATA = "../shared/owleval"


def _data(args: argparse.Namespace) -> Path:
    data = Path(args.data)
    if not (data / "questions.jsonl").is_file():
        raise DataError(f"{data}/questions.jsonl not found: pass --data DIR (the OwlEval folder)")
    return data


def _answers(args: argparse.Namespace, data: Path) -> list[Path]:
    from owl.eval.rating import default_answer_files

    return [Path(p) for p in args.answers] if args.answers else default_answer_files(data)


def cmd_rate(args: argparse.Namespace) -> None:
    """Serve the blind rating page until Ctrl-C; every rating is already on disk when the button returns."""
    from owl.eval.rating import RatingSession, load_answers, load_questions
    from owl.eval.rating_app import serve_rating

    data = _data(args)
    session = RatingSession(
        answers=load_answers(_answers(args, data)),
        questions=load_questions(data),
        rater=args.rater,
        out=Path(args.out),
        cases=data / "cases",
        seed=args.seed,
    )
    with serve_rating(session, host="127.0.0.1", port=args.port) as running:
        state = session.state()
        print(f"rating as {args.rater}: {state['done']}/{state['total']} done; open {running.url}/ (Ctrl-C to stop)")
        try:
            while running.thread.is_alive():
                threading.Event().wait(0.5)
        except KeyboardInterrupt:
            print(f"stopped; ratings are in {args.out} (rerun the same command to continue)")


def cmd_report(args: argparse.Namespace) -> None:
    """Write report.md, report.json and the chart for the given ratings files."""
    from owl.eval.report import write_report

    for p in args.ratings:
        if not Path(p).is_file():
            raise DataError(f"ratings file {p} does not exist")
    report = write_report(args.ratings, _data(args), args.out)
    judges = f", {len(report['judges'])} automatic judge(s)" if report["judges"] else ""
    print(
        f"{len(report['human_raters'])} human rater(s){judges}, {report['rated_answers']} answers rated by humans "
        f"-> {Path(args.out) / 'report.md'}"
    )


def cmd_judge(args: argparse.Namespace) -> None:
    """Rate every answer with an OpenAI-compatible model; resumable (already judged answers are skipped)."""
    from owl.eval.judge import SYSTEM_PROMPT, judge_answers
    from owl.eval.rating import load_answers, load_questions

    if args.show_prompt:
        print(SYSTEM_PROMPT)
        return
    missing = [f"--{k}" for k in ("endpoint", "model", "out") if not getattr(args, k)]
    if missing:
        raise DataError(f"owl eval judge needs {', '.join(missing)} (or --show-prompt)")
    data = _data(args)

    def progress(n: int, total: int) -> None:
        if args.progress:
            print(f"\rjudged {n}/{total}", end="" if n < total else "\n", file=sys.stderr, flush=True)

    result = judge_answers(
        load_answers(_answers(args, data)),
        load_questions(data),
        out=Path(args.out),
        endpoint=args.endpoint,
        model=args.model,
        api_key=args.api_key,
        cases=data / "cases" if args.images else None,
        limit=args.limit,
        retries=args.retries,
        max_tokens=args.max_tokens,
        progress=progress,
    )
    notes = []
    if result.unclear:
        notes.append(f"{result.unclear} without a clear letter")
    if result.refused:
        notes.append(f"{result.refused} refused by the endpoint, e.g. {result.first_refusal}")
    left = f"; left unjudged (rerun to retry): {'; '.join(notes)}" if notes else ""
    print(
        f"automatic judge judge:{args.model}: {result.added} new rating(s), {result.skipped} already there"
        f"{left} -> {args.out}"
    )


def add_parsers(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add ``rate``, ``report`` and ``judge`` to the ``owl eval`` subcommands."""
    from owl.eval.judge import SYSTEM_PROMPT

    r = eval_subparsers.add_parser(
        "rate",
        help="blind A/B/C/D rating of OwlEval answers in a local browser page",
        description="Serves a page on 127.0.0.1 showing each image, the dialogue so far, the question and one "
        "system's answer at a time, shuffled and unlabelled. Keys A-D (or 1-4) rate, U undoes. Each rating is "
        "appended to --out and fsynced at once; an undo appends an undo record. Rerun to continue.",
    )
    r.add_argument("--answers", nargs="+", help="answer .jsonl files (default: the six in DATA/answers)")
    r.add_argument("--out", required=True, help="ratings .jsonl (appended to; rerun to resume)")
    r.add_argument("--rater", required=True, help="your name (with --seed it fixes the order of the answers)")
    r.add_argument("--data", default=DEFAULT_DATA, help="OwlEval folder (questions.jsonl, cases/, answers/)")
    r.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    r.add_argument("--seed", type=int, default=0, help="seed of the per-rater shuffle (keep it to resume the order)")
    r.set_defaults(func=cmd_rate)

    p = eval_subparsers.add_parser(
        "report",
        help="A/B/C/D counts, rater agreement (kappa) and chart from ratings",
        description="Counts per system (overall, single-/multi-turn, per ability) beside the paper's, Cohen's, "
        "quadratic-weighted and Fleiss' kappa between human raters, and the automatic judges (raters judge:*) "
        "apart, with their agreement with the humans.",
    )
    p.add_argument("ratings", nargs="+", help="ratings .jsonl files (humans and judge:* raters)")
    p.add_argument("--out", required=True, help="folder for report.md, report.json, owleval_ratings.png")
    p.add_argument("--data", default=DEFAULT_DATA, help="OwlEval folder (questions.jsonl)")
    p.set_defaults(func=cmd_report)

    j = eval_subparsers.add_parser(
        "judge",
        help="optional: automatic A/B/C/D ratings from an LLM behind an OpenAI-compatible endpoint",
        description="Optional automatic judge, not a human rating: asks a chat model for one letter per answer, "
        "temperature 0, retried with backoff, appended as rater judge:MODEL (rerun to resume). `owl eval report` "
        "keeps it apart from the human counts and shows its agreement with the humans. The prompt:",
        epilog=SYSTEM_PROMPT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    j.add_argument("--answers", nargs="+", help="answer .jsonl files (default: the six in DATA/answers)")
    j.add_argument("--endpoint", help="base URL of the API, e.g. http://127.0.0.1:8000/v1 (owl serve)")
    j.add_argument("--model", help="judge model name (recorded as rater judge:MODEL)")
    j.add_argument("--out", help="judged .jsonl (appended to; rerun to resume)")
    j.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY, else none)")
    j.add_argument("--images", action="store_true", help="send the image too (the judge must accept images)")
    j.add_argument("--limit", type=int, default=None, help="judge at most N new answers")
    j.add_argument("--retries", type=int, default=4, help="retries on connection errors, 429 and 5xx (backoff 1,2,4 s)")
    j.add_argument("--max-tokens", type=int, default=16, help="max tokens of a reply (one letter is asked for)")
    j.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line on stderr")
    j.add_argument("--data", default=DEFAULT_DATA, help="OwlEval folder")
    j.add_argument("--show-prompt", action="store_true", help="print the judge's system prompt and exit")
    j.set_defaults(func=cmd_judge)
