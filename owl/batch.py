"""`owl generate`: answers for a whole file of prompts, in one batched, resumable run (file in, file out).

Why a command of its own: ``owl chat --message`` per question loads the model every time (seconds for a small
model, minutes for a 7B) and answers one prompt per forward pass. Here the model loads once and the prompts go
through in batches, grouped by length within a window (so little of a batch is padding; greedy answers do not
depend on the grouping, tested against batch size 1).

Input: JSON lines (or one JSON list), one prompt per record. The id is the record's ``id`` (string or integer),
else its line number (its 1-based index in a JSON list). Each record is read by the first rule that fits, with the
training readers' converters (:mod:`owl.data.formats`), so a training or eval file runs as it is:

* ``conversations`` or ``messages``, turns with ``from``/``value`` (LLaVA, ShareGPT) or ``role``/``content``
  (ShareGPT, OpenAI-style; ``content`` may be OpenAI parts: ``{"type": "text", "text": ...}``,
  ``{"type": "image_url", "image_url": {"url": PATH | file://PATH | data:image/...;base64,...}}`` or
  ``{"type": "image", "image": PATH}``, each image part a ``<image>`` marker where it stands);
* ``text`` holding ``Human:`` / ``AI:`` lines (the reference's mPLUG format);
* ``instruction`` (+ ``input``; ``output`` is the reference answer) (Alpaca);
* ``prompt``, ``question`` or ``text``: one user turn (``answer`` or ``reference`` is the reference answer);
* ``caption`` with an image (captions): the image alone is the prompt, the caption the reference.

Images: ``image`` or ``images`` (a path or a list), relative paths against ``--image-root``, else the input file's
folder; every path must stay under that root once ``..`` and symlinks are resolved (``image_outside_root``
otherwise: an input file from elsewhere reads no file outside the folder it was given; ``--image-root /`` allows
any). With images and no ``<image>`` marker, one marker per image goes before the first user turn (LLaVA's rule).
A trailing assistant turn is dropped from the prompt and written as ``reference``, so a labelled file runs as is.

Output: JSON lines, one per input record, in completion order: ``id``, ``answer`` (whitespace-stripped),
``finish_reason``, ``prompt_tokens``, ``completion_tokens`` (+ ``reference``). A record that cannot be answered
(malformed JSON, no prompt, a missing or corrupt image, a prompt over the model's length limit, ...) becomes
``id``, ``error`` (one readable sentence) and ``error_code`` (a short key), and the run goes on.

Resume: every line is written whole and flushed as soon as its batch ends, so a killed run (even ``kill -9``)
leaves whole lines, plus at most one torn last line, which the next run cuts off. A run skips every id that OUT
already answers or reports as a permanent error (the same input gives the same error again); transient errors
(``out_of_memory``) are removed from OUT and retried, and ``--retry-errors`` retries every error line. A record
whose id repeats an earlier one's is an error (``duplicate_id``, with its ``line``). Greedy runs resumed in any
number of pieces give the same records as one uninterrupted run (tested); sampled ones draw per batch, so theirs
differ. Each prompt's images are decoded twice (once to check and measure the prompt before batching, once in
the batch): cheap next to generating.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from owl.conversation import IMAGE_TOKEN, Message, Sample, SampleError
from owl.data.formats import _conversation, _image_paths, _llava, _mplug, image_path
from owl.data.source import SourceSpec
from owl.errors import InputError, InputNotFound, OwlError
from owl.generation import GenerationOptions, generate

try:
    import fcntl
except ImportError:  # not on Windows: no lock against a second writer there
    fcntl = None

TRANSIENT_ERRORS = frozenset({"out_of_memory"})
"""Error codes that say nothing about the record: resumed runs retry them."""

WINDOW_BATCHES = 16
"""Prompts are sorted by length within windows of this many batches (bigger: less padding, later first lines)."""

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass
class Prompt:
    """One input record: its id, and either a sample to answer or why there is none."""

    line: int
    id: Any
    key: tuple
    record: Any = None
    sample: Sample | None = None
    reference: str | None = None
    error_code: str = ""
    error: str = ""
    tokens: int = 0


@dataclass
class Summary:
    """What a run did; ``errors`` counts error lines written per code."""

    answered: int = 0
    skipped: int = 0
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self, output: str | Path) -> str:
        errors = sum(self.errors.values())
        detail = f" ({', '.join(f'{k} {v}' for k, v in self.errors.most_common())})" if errors else ""
        rate = f", {self.answered / self.seconds:.2f} answers/s" if self.seconds > 0 and self.answered else ""
        return (
            f"owl generate: {self.answered} answered, {errors} errors{detail}, {self.skipped} skipped "
            f"(already in {output}) in {self.seconds:.1f} s{rate}"
        )


def _key(id_value: Any, duplicate_line: int | None = None) -> tuple:
    """Resume key: ids compare as strings (``5`` and ``"5"`` are one id); a duplicate is keyed by its line."""
    return (str(id_value), duplicate_line)


# ----------------------------------------------------------------------------- reading the input


def read_records(path: str | Path) -> Iterator[Prompt]:
    """Every record of the input with its id and resume key; a line that is not JSON carries its error."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16).removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, RecursionError) as e:
            raise InputError(
                f"{path} is not valid JSON ({e}); write it as JSON lines so one bad record only fails itself"
            ) from None
        raw: Iterator[tuple[int, Any, str]] = ((i, r, "") for i, r in enumerate(records, start=1))
    else:
        raw = _json_lines(path)
    seen: dict[str, int] = {}
    for line, record, error in raw:
        own = record.get("id") if isinstance(record, dict) else None
        id_value = own if isinstance(own, (str, int)) and not isinstance(own, bool) else line
        prompt = Prompt(
            line, id_value, _key(id_value), record, error_code="malformed_json" if error else "", error=error
        )
        first = seen.setdefault(str(id_value), line)
        if first != line:
            prompt.key = _key(id_value, line)
            prompt.error_code, prompt.error = (
                "duplicate_id",
                f"line {line}: id {id_value!r} is also the id of line {first}",
            )
        yield prompt


def _json_lines(path: Path) -> Iterator[tuple[int, Any, str]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), ""
            except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting
                yield lineno, None, f"line {lineno} is not a JSON record: {e}"


def to_sample(record: Any, image_root: str) -> tuple[Sample, str | None]:
    """One input record -> (the prompt to answer, the reference answer or None); SampleError when unusable."""
    if not isinstance(record, dict):
        raise SampleError("bad_type", f"a record must be a JSON object, got {type(record).__name__}")
    image_field = "images" if "images" in record and "image" not in record else "image"
    turns_field = next((k for k in ("conversations", "messages") if k in record), None)
    text = record.get("text")
    reference = None
    if turns_field is not None:
        sample = _turns_sample(record, turns_field, image_field, image_root)
    elif isinstance(text, str) and any(line.startswith(("Human:", "AI:")) for line in text.split("\n")):
        sample = _mplug(record, _spec("mplug", image=image_field), image_root)
    else:
        images = _image_paths(record.get(image_field), _spec("llava", image=image_field), image_root)
        if isinstance(record.get("instruction"), str):
            parts = (record["instruction"], record.get("input") if isinstance(record.get("input"), str) else "")
            prompt, reference = "\n\n".join(p for p in parts if p.strip()), record.get("output")
        else:
            prompt = next((record[k] for k in ("prompt", "question", "text") if isinstance(record.get(k), str)), None)
            reference = next((record[k] for k in ("reference", "answer") if isinstance(record.get(k), str)), None)
            if prompt is None and isinstance(record.get("caption"), str) and images:
                prompt, reference = "", record["caption"]
            elif prompt is None:
                raise SampleError(
                    "no_prompt",
                    "no prompt: give 'prompt', 'question' or 'text', 'instruction', or a conversation in "
                    f"'conversations' / 'messages' (keys: {', '.join(map(str, record)) or 'none'})",
                )
        if images and IMAGE_TOKEN not in prompt:
            prompt = f"{IMAGE_TOKEN}\n" * len(images) + prompt
            prompt = prompt.rstrip("\n") if not prompt.replace(IMAGE_TOKEN, "").strip() else prompt
        sample = Sample([Message("user", prompt)], images)
    messages = list(sample.messages)
    if messages and messages[-1].role == "assistant":
        last = messages.pop()
        reference = last.content if last.content.strip() else reference
    users = [m for m in messages if m.role == "user"]
    if (
        not users
        or messages[-1].role != "user"
        or not (users[-1].content.replace(IMAGE_TOKEN, "").strip() or sample.images)
    ):
        raise SampleError("no_prompt", "no user turn to answer (the record has no question, or it is empty)")
    sample = Sample(messages, sample.images, meta=sample.meta).validate()
    for image in sample.images:
        if isinstance(image, str) and not os.path.isfile(image):
            raise SampleError("missing_image", f"image file not found: {image}")
    return sample, reference if isinstance(reference, str) and reference.strip() else None


def _spec(fmt: str, **fields: str) -> SourceSpec:
    """A source spec for the training converters, naming this record's fields."""
    return SourceSpec("input", fmt, "-", fields={k: v for k, v in fields.items() if v != k})


def _turns_sample(record: dict, turns_field: str, image_field: str, image_root: str) -> Sample:
    """LLaVA / ShareGPT / OpenAI-style turns, through the training readers' one set of conversation rules."""
    turns = record[turns_field]
    if not isinstance(turns, list):
        raise SampleError("bad_type", f"field {turns_field!r} must be a list of turns")
    first = next((t for t in turns if isinstance(t, dict)), {})
    speaker, text = ("role", "content") if "role" in first else ("from", "value")
    spec = _spec("llava", conversations=turns_field, image=image_field, **{"from": speaker, "value": text})
    if not any(isinstance(t, dict) and isinstance(t.get(text), list) for t in turns):
        return _llava(record, spec, image_root)
    # OpenAI content parts: text as is, each image part a marker where it stands.
    images: list[str | bytes] = []
    flat = []
    for t in turns:
        if isinstance(t, dict) and isinstance(t.get(text), list):
            t = {**t, text: "".join(_part(p, images, image_root) for p in t[text])}
        flat.append(t)
    extra = _image_paths(record.get(image_field), spec, image_root)
    messages = _conversation(flat, spec)
    if extra:  # images of the record itself come first, before the first user turn (LLaVA's rule)
        i = next(i for i, m in enumerate(messages) if m.role == "user")
        messages[i] = Message("user", f"{IMAGE_TOKEN}\n" * len(extra) + messages[i].content)
    return Sample(messages, [*extra, *images])


def _part(part: Any, images: list, image_root: str) -> str:
    if not isinstance(part, dict):
        raise SampleError("bad_type", f"a content part must be an object, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):  # a type error, not an "unknown part type 'text'"
            raise SampleError("bad_type", f"a text part needs a string 'text', got {repr(part.get('text'))[:60]}")
        return part["text"]
    if kind in ("image_url", "image"):
        url = part.get("image_url", part.get("image"))
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise SampleError("bad_type", f"an {kind} part needs a path or URL, got {url!r}")
        if url.startswith("data:"):
            try:
                images.append(base64.b64decode(url.split(",", 1)[1], validate=True))
            except (IndexError, ValueError):
                raise SampleError("bad_image", "an image data URL is not valid base64") from None
        elif url.startswith(("http://", "https://")):
            raise SampleError("remote_image", f"{url}: remote images are not fetched; download it and give its path")
        else:
            images.append(image_path(url.removeprefix("file://"), image_root))
        return f"{IMAGE_TOKEN}\n"
    raise SampleError("bad_type", f"unknown content part type {kind!r} (text, image_url, image)")


# ----------------------------------------------------------------------------- the output file


class ResultsFile:
    """OUT, opened for appending whole lines, after repairing what a killed run left and noting the ids it has."""

    def __init__(self, path: str | Path, retry_errors: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple] = set()
        self.file = self._open_locked()
        data = self.path.read_bytes()
        keep, dropped = [], 0
        end = data.rfind(b"\n") + 1  # a killed run may leave one torn last line: cut it off
        for raw in data[:end].splitlines(keepends=True):
            try:
                rec = json.loads(raw)
            except (ValueError, RecursionError):
                rec = None
            if not isinstance(rec, dict) or "id" not in rec:
                dropped += raw.strip() != b""
                continue
            if "error" in rec and (retry_errors or rec.get("error_code") in TRANSIENT_ERRORS):
                dropped += 1
                continue
            dup = rec.get("line") if rec.get("error_code") == "duplicate_id" else None
            self.done.add(_key(rec["id"], dup))
            keep.append(raw)
        if dropped:  # rewrite without the lines to retry, atomically, then hold the lock on the new file
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(b"".join(keep))
            os.replace(tmp, self.path)
            self.file.close()
            self.file = self._open_locked()
        elif end < len(data):
            self.file.truncate(end)
        self.repaired = dropped + (end < len(data))

    def _open_locked(self):  # noqa: ANN202
        f = open(self.path, "a+b")
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise InputError(
                    f"{self.path} is being written by another owl generate; wait for it or pick another --output"
                ) from None
        return f

    def write(self, record: dict) -> None:
        """One whole line, flushed at once: a kill leaves whole lines (and at most a torn last one)."""
        self.file.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------- the run


def generate_file(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 8,
    image_root: str | Path | None = None,
    options: GenerationOptions | None = None,
    limit: int | None = None,
    retry_errors: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    show_settings: bool = False,
) -> Summary:
    """Answer every record of ``input_path`` not yet in ``output_path``; see the module docstring.

    ``options``: explicit settings over the model's generation_config.json and owl's defaults. ``limit``: answer
    (or fail) at most this many new records, then stop (the rest waits for the next run).
    """
    from owl.chat import resolve_device
    from owl.generation import load_generation_defaults
    from owl.models import load_model
    from owl.processing import OwlProcessor

    input_path, output_path = Path(input_path), Path(output_path)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size} must be >= 1")
    if limit is not None and limit < 0:
        raise InputError(f"--limit {limit} must be >= 0")
    if not input_path.is_file():
        raise InputNotFound(f"input file not found: {input_path}")
    if output_path.is_dir():
        raise InputError(f"--output {output_path} is a directory; name a file, e.g. {output_path / 'answers.jsonl'}")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise InputError(f"--output {output_path} is the input file; write the answers to another file")
    if image_root is not None and not Path(image_root).is_dir():
        raise InputNotFound(f"--image-root {image_root}: no such directory")
    root = os.path.abspath(image_root if image_root is not None else input_path.parent)
    options = (options or GenerationOptions()).resolve(load_generation_defaults(model_dir))
    dev, dt = resolve_device(device, dtype)
    start = time.perf_counter()
    out = ResultsFile(output_path, retry_errors)
    summary = Summary()
    try:
        if out.repaired:
            print(
                f"owl generate: {output_path}: removed {out.repaired} line(s) to redo (torn or retried)",
                file=sys.stderr,
            )
        todo = sum(1 for p in read_records(input_path) if p.key not in out.done)
        todo = todo if limit is None else min(todo, limit)
        model = load_model(model_dir, dtype=dt).to(dev).eval()
        proc = OwlProcessor.from_pretrained(model_dir)
        if show_settings:
            print(f"owl generate: {options.describe()}, batches of {batch_size}", file=sys.stderr)
        run = BatchRunner(
            model,
            proc,
            options,
            out,
            summary,
            tqdm(total=todo, desc="owl generate", unit=" samples", disable=not progress, dynamic_ncols=True),
        )
        window: list[Prompt] = []
        taken = 0
        for prompt in read_records(input_path):
            if prompt.key in out.done:
                summary.skipped += 1
                continue
            if limit is not None and taken >= limit:
                break
            taken += 1
            if run.check(prompt, root):
                window.append(prompt)
            if len(window) >= batch_size * WINDOW_BATCHES:
                run.window(window, batch_size)
                window = []
        run.window(window, batch_size)
        run.bar.close()
    finally:
        out.close()
        summary.seconds = time.perf_counter() - start
    print(summary.line(output_path), file=sys.stderr)
    return summary


class BatchRunner:
    """The loaded model and the open output of one run; writes each record's line."""

    def __init__(self, model, proc, options: GenerationOptions, out: ResultsFile, summary: Summary, bar) -> None:  # noqa: ANN001
        self.model, self.proc, self.options, self.out, self.summary, self.bar = model, proc, options, out, summary, bar

    def fail(self, prompt: Prompt, code: str, message: str) -> None:
        record = {"id": prompt.id, "error": message, "error_code": code}
        if code == "duplicate_id":
            record["line"] = prompt.line
        self.out.write(record)
        self.summary.errors[code] += 1
        self.bar.update(1)

    def check(self, prompt: Prompt, root: str) -> bool:
        """Build and measure the prompt (images decoded, tokens counted); a problem becomes its error line."""
        if prompt.error:
            self.fail(prompt, prompt.error_code, prompt.error)
            return False
        try:
            prompt.sample, prompt.reference = to_sample(prompt.record, root)
            prompt.sample.id = str(prompt.id)
            prompt.tokens = len(self.proc.encode(prompt.sample, for_generation=True).input_ids)
        except SampleError as e:
            self.fail(prompt, e.reason, str(e))
            return False
        limit = self.options.max_length
        if self.options.max_new_tokens is None and prompt.tokens >= limit:
            self.fail(
                prompt,
                "prompt_too_long",
                f"the prompt has {prompt.tokens} tokens, leaving no room for an answer within max_length={limit}; "
                "set --max-new-tokens",
            )
            return False
        prompt.record = None  # the sample holds what is needed
        return True

    def window(self, prompts: list[Prompt], batch_size: int) -> None:
        """Longest first (a batch that runs out of memory does so early), in batches of similar lengths."""
        prompts = sorted(prompts, key=lambda p: -p.tokens)
        for i in range(0, len(prompts), batch_size):
            self.batch(prompts[i : i + batch_size])

    def batch(self, prompts: list[Prompt]) -> None:
        try:
            completions = generate(self.model, self.proc, [p.sample for p in prompts], self.options, len(prompts))
        except (OwlError, _OOM) as e:  # split the batch until the failing prompt is alone
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(prompts) > 1:
                half = len(prompts) // 2
                self.batch(prompts[:half])
                self.batch(prompts[half:])
                return
            code = "out_of_memory" if isinstance(e, _OOM) else getattr(e, "reason", "invalid")
            hint = " (a smaller --batch-size may help; retried on the next run)" if code == "out_of_memory" else ""
            self.fail(
                prompts[0], code, f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}{hint}"
            )
            return
        for p, c in zip(prompts, completions):
            record = {
                "id": p.id,
                "answer": c.text.strip(),
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
            }
            if p.reference is not None:
                record["reference"] = p.reference
            self.out.write(record)
        os.fsync(self.out.file.fileno())
        self.summary.answered += len(prompts)
        self.bar.update(len(prompts))
