"""One model-backed benchmark run in a directory: load once, answer in batches, resume, record a manifest.

Every benchmark (OwlEval, VQAv2, MME, MMBench) answers its prompts the same way, so that way lives here once:

* answers go to ``RUN/generations.jsonl`` in ``owl generate``'s output format, through :mod:`owl.batch`'s
  resumable results file (whole lines, flushed per batch; a torn last line from a killed run is cut off; a lock
  against a second writer) and its batch runner (batches sorted by prompt length; a batch that fails, e.g. out
  of memory, is split until the failing prompt is alone and becomes an error line). The benchmark's published
  file (answers.jsonl, results.json, ...) is written from it, so a rerun only ever appends;
* a prompt id already in the log is never asked again, so a stopped run continues where it was; a greedy run
  resumed in pieces gives the answers of one uninterrupted run (owl.batch's guarantee: batching does not change
  greedy answers);
* ``RUN/manifest.json`` (:mod:`owl.eval.manifest`) is written when the run starts and when it ends. Before a
  resume it is compared with the run about to start, so the answers of two different models or settings never
  mix in one directory; with ``--manifest OLD`` the recorded settings are taken and the hashes checked.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from owl.batch import TRANSIENT_ERRORS, WINDOW_BATCHES, BatchRunner, Prompt, ResultsFile, Summary
from owl.conversation import Sample, SampleError
from owl.errors import InputError
from owl.eval import manifest as mf
from owl.generation import GenerationOptions

LOG_NAME = "generations.jsonl"
DEFAULT_BATCH_SIZE = 8
DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
"""torch dtypes by the --dtype names that choose them (what a manifest records, and a rerun passes back)."""


@dataclass
class RunSettings:
    """How to run, as the command line gives it (or a recorded manifest, with ``manifest``).

    ``options`` holds the explicit generation flags only (unset fields: the benchmark's defaults, then the
    model's generation_config.json, then owl's). ``batch_size`` and ``dtype`` unset (None, "auto"): a recorded
    manifest's, else 8 and the device's default. ``limit``: answer at most this many new prompts, then stop.
    """

    options: GenerationOptions = field(default_factory=GenerationOptions)
    batch_size: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    model_id: str | None = None
    manifest: str | None = None
    force: bool = False
    progress: bool = True
    limit: int | None = None
    show_settings: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size} must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise InputError(f"--limit {self.limit} must be >= 0")


@dataclass
class Plan:
    """What a run will use once a recorded manifest (if any) has had its say."""

    model_dir: str
    data: str
    args: dict[str, Any]
    recorded: dict[str, Any] | None = None


def plan(benchmark: str, model_dir: str | None, data: str | None, settings: RunSettings, args: dict[str, Any]) -> Plan:
    """The model, data and benchmark arguments: the given ones, or with ``--manifest`` the recorded ones.

    With a manifest, a model directory or data path given anyway is used (and its hash checked against the
    record); the benchmark's own arguments always come from the record, since they shape the prompts.
    """
    recorded = mf.load(settings.manifest) if settings.manifest else None
    if recorded is not None:
        if recorded.get("benchmark") != benchmark:
            raise InputError(
                f"--manifest {settings.manifest} records a {recorded.get('benchmark')!r} run, not {benchmark!r}"
            )
        if recorded.get("model") is None:
            raise InputError(f"--manifest {settings.manifest} records a scoring of predictions, not a model run")
        model_dir = model_dir or recorded["model"]["path"]
        data = data or recorded["data"].get("input")
        args = dict(recorded.get("benchmark_args") or {})
    if not model_dir:
        raise InputError(f"give a model directory: owl eval {benchmark} DIR --data PATH --out RUN (or --manifest)")
    if not data:
        raise InputError(f"give the data: owl eval {benchmark} DIR --data PATH")
    return Plan(model_dir, data, args, recorded)


class EvalRun:
    """A run directory being filled: :meth:`start`, :meth:`answer` (any number of times), :meth:`finish`."""

    def __init__(
        self,
        benchmark: str,
        out: str | Path,
        plan: Plan,
        settings: RunSettings,
        data_record: dict[str, Any],
        defaults: GenerationOptions | None = None,
    ) -> None:
        self.benchmark, self.out, self.plan, self.settings = benchmark, Path(out), plan, settings
        self.data_record = {**data_record, "input": str(Path(plan.data).resolve())}
        self.defaults = defaults or GenerationOptions()
        self.summary = Summary()
        self.stopped = False  # --limit reached: the rest waits for the next run
        self.taken = 0
        self.bar = None

    # ------------------------------------------------------------------ start
    def start(self) -> EvalRun:
        """Hash and check, write the starting manifest, load the model, open the log."""
        from owl.chat import resolve_device
        from owl.generation import load_generation_defaults
        from owl.models import load_model
        from owl.processing import OwlProcessor

        self.t0 = time.perf_counter()
        s, recorded = self.settings, self.plan.recorded
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} is a file; name a directory for the run")
        model_id = s.model_id or (recorded["model"]["id"] if recorded else Path(self.plan.model_dir).resolve().name)
        model = mf.model_record(self.plan.model_dir, model_id)
        run = (recorded or {}).get("run") or {}
        if recorded is not None:
            options = GenerationOptions(**recorded["generation"])
        else:
            options = s.options.resolve(self.defaults, load_generation_defaults(self.plan.model_dir))
        batch_size = s.batch_size or run.get("batch_size") or DEFAULT_BATCH_SIZE
        dtype = run.get("dtype", "auto") if s.dtype == "auto" else s.dtype
        device, torch_dtype = resolve_device(s.device, dtype)
        dtype = DTYPE_NAMES.get(str(torch_dtype), str(torch_dtype))
        self.options, self.batch_size = options, batch_size
        run = {"batch_size": batch_size, "device": device, "dtype": dtype}
        self.manifest = mf.new_manifest(
            self.benchmark,
            model=model,
            data=self.data_record,
            generation=mf.generation_record(options),
            run=run,
            benchmark_args=self.plan.args,
        )
        if recorded is not None:
            source = f"--manifest {s.manifest}"
            mf.print_warning(mf.check_identity(recorded, self.manifest, source, s.force), source)
        self.previous_seconds = self._check_resume()
        self.manifest["wall_seconds_total"] = round(self.previous_seconds, 2)  # kept if this run is killed
        self.out.mkdir(parents=True, exist_ok=True)
        mf.save(self.out / mf.MANIFEST_NAME, self.manifest)
        if s.show_settings:
            print(f"owl eval {self.benchmark}: {options.describe()}, batches of {batch_size}", file=sys.stderr)
        self.log = ResultsFile(self.out / LOG_NAME)
        if self.log.repaired:
            print(f"owl eval: {self.out / LOG_NAME}: removed {self.log.repaired} line(s) to redo", file=sys.stderr)
        try:
            self.model = load_model(self.plan.model_dir, dtype=torch_dtype).to(device).eval()
            self.processor = OwlProcessor.from_pretrained(self.plan.model_dir)
        except BaseException:
            self.close()
            raise
        return self

    def _check_resume(self) -> float:
        """An existing manifest in RUN must describe this same run; returns the seconds it already ran."""
        path = self.out / mf.MANIFEST_NAME
        if not path.exists():
            return 0.0
        old = mf.load(path)
        diffs = mf.differences(old, self.manifest)
        if diffs:
            raise InputError(
                f"{self.out} holds another run's answers ({'; '.join(diffs)}); resume it with the same settings, "
                "or give a new --out"
            )
        return float(old.get("wall_seconds_total") or 0.0)

    # ------------------------------------------------------------------ answering
    def records(self) -> dict[str, dict[str, Any]]:
        """Every line of the log by id (answers and error lines), as written so far."""
        out: dict[str, dict[str, Any]] = {}
        path = self.out / LOG_NAME
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line: ResultsFile cuts it on the next start
                if isinstance(rec, dict) and "id" in rec:
                    out[str(rec["id"])] = rec
        return out

    def progress(self, pending: int) -> None:
        """Open the progress bar for ``pending`` prompts still to answer (what the resume left)."""
        total = pending if self.settings.limit is None else min(pending, self.settings.limit)
        self.bar = tqdm(
            total=total,
            desc=f"owl eval {self.benchmark}",
            unit=" answers",
            disable=not self.settings.progress,
            dynamic_ncols=True,
        )

    def answer(self, prompts: list[tuple[str, Sample]]) -> None:
        """Answer the prompts whose id is not in the log yet (in batches); each answer is a log line."""
        done = self.records()
        new = [(str(pid), sample) for pid, sample in prompts if str(pid) not in done]
        if self.bar is None:
            self.progress(len(new))
        runner = BatchRunner(self.model, self.processor, self.options, self.log, self.summary, self.bar)
        window: list[Prompt] = []
        for pid, sample in new:
            if self.settings.limit is not None and self.taken >= self.settings.limit:
                self.stopped = True
                break
            self.taken += 1
            prompt = Prompt(line=0, id=pid, key=(pid, None), sample=sample)
            if self._measure(runner, prompt):
                window.append(prompt)
            if len(window) >= self.batch_size * WINDOW_BATCHES:  # answers start before every prompt is measured
                runner.window(window, self.batch_size)
                window = []
        runner.window(window, self.batch_size)

    def _measure(self, runner: BatchRunner, prompt: Prompt) -> bool:
        """Tokenise once to sort by length and to catch a prompt that cannot be answered (its error line)."""
        try:
            prompt.tokens = len(self.processor.encode(prompt.sample, for_generation=True).input_ids)
        except SampleError as e:
            runner.fail(prompt, e.reason, str(e))
            return False
        limit = self.options.max_length
        if self.options.max_new_tokens is None and prompt.tokens >= limit:
            runner.fail(prompt, "prompt_too_long", f"the prompt has {prompt.tokens} tokens, over max_length={limit}")
            return False
        return True

    @staticmethod
    def text(record: dict[str, Any] | None) -> str:
        """A log record's answer; an error line answers '' (scored wrong, counted in the manifest)."""
        return "" if record is None or "error" in record else str(record.get("answer", ""))

    @staticmethod
    def transient(record: dict[str, Any] | None) -> bool:
        """An error that says nothing about the prompt (out of memory): retried by the next run."""
        return record is not None and record.get("error_code") in TRANSIENT_ERRORS

    # ------------------------------------------------------------------ finish
    def finish(self, counts: dict[str, Any], outputs: list[Path], scores: dict[str, Any] | None = None) -> dict:
        """Close the log and write the final manifest: status, counts, output hashes, scores, wall times."""
        if self.bar is not None:
            self.bar.close()
        self.log.close()
        seconds = time.perf_counter() - self.t0
        errors = {k: v for k, v in counts.get("errors", {}).items() if v}
        final = sum(v for k, v in errors.items() if k not in TRANSIENT_ERRORS)  # out of memory: retried next run
        complete = counts.get("answered", 0) + final >= counts.get("questions", 0)
        self.manifest.update(
            status="complete" if complete and not self.stopped else "incomplete",
            finished=mf.now(),
            wall_seconds=round(seconds, 2),
            wall_seconds_total=round(self.previous_seconds + seconds, 2),
            counts={**counts, "answered_this_run": self.summary.answered},
            outputs={p.name: mf.sha256_file(p) for p in outputs if p.exists()},
        )
        if scores is not None:
            self.manifest["scores"] = scores
        mf.save(self.out / mf.MANIFEST_NAME, self.manifest)
        return self.manifest

    def close(self) -> None:
        """Release the log's lock after a failure (finish does it on success)."""
        if getattr(self, "log", None) is not None and not self.log.file.closed:
            self.log.close()


def error_counts(records: dict[str, dict[str, Any]], ids: list[str]) -> dict[str, int]:
    """Error lines per error code among ``ids``."""
    counts: dict[str, int] = {}
    for i in ids:
        rec = records.get(str(i))
        if rec is not None and "error" in rec:
            counts[rec.get("error_code", "error")] = counts.get(rec.get("error_code", "error"), 0) + 1
    return counts
