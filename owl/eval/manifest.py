"""What an evaluation run was: the exact model, data, settings, software and machine, in ``RUN/manifest.json``.

Why: a score is only comparable with another, or repeatable, when everything that produced it is written down.
The manifest records

* the model directory's content hash: sha256 over ``config.json``, the weights files, the tokenizer files, the
  generation config and a LoRA ``adapter/`` (each file streamed, never read whole), plus the prompt template
  and tokenisation compat that the config sets;
* the data's hashes: every data file (question / annotation files) and the images the run used;
* the generation settings as resolved (every field set), the batch size, device and dtype, the benchmark's
  own arguments;
* package versions (python, torch, transformers, owl and its git commit), the machine (CPU model, GPUs), the
  wall time.

``owl eval ... --manifest OLD/manifest.json`` takes the recorded settings and checks the hashes with
:func:`check_identity`: a model or data set that changed since is one error (``--force`` runs anyway). A run
directory's own manifest is checked the same way before a resume, so answers of two different runs never mix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from owl.atomic import write_text
from owl.errors import CheckpointError, DataError, InputError, InputNotFound

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
CHUNK = 1 << 20

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
"""Model directory files that decide what the model computes (besides weights, ``*.model`` and ``adapter/``)."""

PER_FILE_LIMIT = 1000
"""Above this many data files (e.g. VQAv2's 40k images) only their count and combined hash are kept."""

IDENTITY_KEYS = ("benchmark", "model.sha256", "data.sha256", "generation", "benchmark_args")
"""What makes two runs the same run: a resume or a --manifest rerun must agree on all of them."""


def sha256_file(path: str | Path) -> str:
    """The file's sha256, streamed in 1 MiB chunks (a 14 GB weights file never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def combined(hashes: dict[str, str]) -> str:
    """One hash for many files: sha256 over sorted ``name<NUL>sha256<LF>`` lines (names count, order does not)."""
    h = hashlib.sha256()
    for name in sorted(hashes):
        h.update(f"{name}\0{hashes[name]}\n".encode())
    return h.hexdigest()


def model_files(model_dir: Path) -> list[Path]:
    """The files of a model directory that decide its outputs: config, weights, tokenizer, generation config,
    adapter. Logs and lineage files beside them do not count."""
    files = [model_dir / n for n in MODEL_FILES if (model_dir / n).is_file()]
    files += sorted(p for p in model_dir.glob("model*.safetensors") if p.is_file())
    files += sorted(p for p in model_dir.glob("*.model") if p.is_file())  # SentencePiece tokenizers
    adapter = model_dir / "adapter"
    if adapter.is_dir():
        files += sorted(p for p in adapter.rglob("*") if p.is_file())
    return sorted(set(files))


def model_record(model_dir: str | Path, model_id: str) -> dict[str, Any]:
    """The model part of a manifest: path, id, content hash (per file and combined), template and compat."""
    from owl.config import OwlConfig
    from owl.models.checkpoint import CONFIG_NAME, check_model_dir

    path = check_model_dir(model_dir)
    files = {str(p.relative_to(path)): sha256_file(p) for p in model_files(path)}
    if not any(name.endswith(".safetensors") for name in files):
        raise CheckpointError(f"{path} has no safetensors weights to hash; is it a complete model directory?")
    processor = OwlConfig.load(path / CONFIG_NAME).processor
    return {
        "path": str(path),
        "id": model_id,
        "sha256": combined(files),
        "files": files,
        "template": processor.template,
        "compat": processor.compat,
        "max_length": processor.max_length,
    }


def data_record(root: str | Path, files: Iterable[str | Path], images: Iterable[str | Path] = ()) -> dict[str, Any]:
    """The data part of a manifest: every data file's hash, and the images' (one combined hash when many).

    Names are relative to ``root`` where they can be, so a data set moved elsewhere keeps its hashes.
    """
    root = Path(root).resolve()

    def name(p: str | Path) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    file_hashes = {name(p): sha256_file(p) for p in files}
    image_hashes = {name(p): sha256_file(p) for p in sorted(set(map(str, images)))}
    record: dict[str, Any] = {"path": str(root), "files": file_hashes, "images": {"count": len(image_hashes)}}
    record["images"]["sha256"] = combined(image_hashes)
    if len(image_hashes) <= PER_FILE_LIMIT:
        record["images"]["files"] = image_hashes
    record["sha256"] = combined({**file_hashes, "images": record["images"]["sha256"]})
    return record


def software() -> dict[str, Any]:
    """Versions that can change a result: python, torch, transformers, tokenizers, owl and its git commit."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "peft", "numpy", "pillow", "owl"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out.update(git_state(Path(__file__).resolve().parents[2]))
    return out


def git_state(repo: Path) -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (both None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"owl_git_commit": commit, "owl_git_dirty": None if status is None else bool(status)}


def machine() -> dict[str, Any]:
    """The CPU model, core count, torch threads and GPUs: the figures a wall time depends on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def generation_record(options: Any) -> dict[str, Any]:
    """A resolved GenerationOptions as plain JSON (what ``GenerationOptions(**record)`` rebuilds exactly)."""
    return dataclasses.asdict(options)


def load(path: str | Path) -> dict[str, Any]:
    """Read a manifest; a missing or foreign file is one readable error."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputNotFound(f"manifest not found: {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path} is not a JSON manifest ({e})") from None
    if not isinstance(data, dict) or data.get("owl_eval_manifest") != FORMAT_VERSION:
        raise InputError(f"{path} is not an owl eval manifest (no owl_eval_manifest: {FORMAT_VERSION})")
    return data


def save(path: str | Path, manifest: dict[str, Any]) -> None:
    """Write atomically: a run killed mid-write keeps the previous manifest."""
    write_text(path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def differences(recorded: dict[str, Any], current: dict[str, Any], keys: Iterable[str] = IDENTITY_KEYS) -> list[str]:
    """The identity fields that differ, each as ``name: recorded -> now`` (changed files named for hashes)."""
    out = []
    for key in keys:
        a, b = get(recorded, key), get(current, key)
        if a == b:
            continue
        if key.endswith("sha256"):
            section = key.split(".")[0]
            files_a, files_b = _all_files(recorded.get(section, {})), _all_files(current.get(section, {}))
            changed = sorted(n for n in files_a.keys() | files_b.keys() if files_a.get(n) != files_b.get(n))
            what = f" (changed: {', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''})" if changed else ""
            out.append(f"{section} sha256 {str(a)[:12]}... recorded, {str(b)[:12]}... now{what}")
        elif isinstance(a, dict) and isinstance(b, dict):
            diff = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
            out.append(f"{key}: {', '.join(diff)}")
        else:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _all_files(section: dict[str, Any]) -> dict[str, str]:
    files = dict(section.get("files") or {})
    images = section.get("images") or {}
    files.update(images.get("files") or {})
    if "files" not in images and "sha256" in images:
        files["images"] = images["sha256"]
    return files


def check_identity(recorded: dict[str, Any], current: dict[str, Any], source: str, force: bool) -> list[str]:
    """Compare a recorded manifest with the run about to start; raise one error naming what differs.

    ``force`` turns a model or data mismatch into a warning (returned, printed by the caller). Settings never
    differ here: a ``--manifest`` rerun takes them from the manifest.
    """
    diffs = differences(recorded, current)
    if not diffs:
        return []
    if force:
        return diffs
    kind = CheckpointError if any(d.startswith("model") for d in diffs) else DataError
    raise kind(f"{source} does not match this run: {'; '.join(diffs)}; pass --force to run anyway")


def print_warning(lines: list[str], source: str) -> None:
    for line in lines:
        print(f"owl eval: warning: {source}: {line} (--force)", file=sys.stderr)


def new_manifest(
    benchmark: str,
    *,
    model: dict[str, Any] | None,
    data: dict[str, Any],
    generation: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    benchmark_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest with every field but the outcome (status, counts, outputs, scores, times), filled by the run."""
    return {
        "owl_eval_manifest": FORMAT_VERSION,
        "benchmark": benchmark,
        "status": "running",
        "model": model,
        "data": data,
        "generation": generation,
        "seed": (generation or {}).get("seed"),
        "run": run or {},
        "benchmark_args": benchmark_args or {},
        "software": software(),
        "machine": machine(),
        "started": now(),
    }


def record_finished(
    out: str | Path,
    benchmark: str,
    *,
    data: dict[str, Any],
    scores: dict[str, Any],
    seconds: float,
    counts: dict[str, Any],
    model: dict[str, Any] | None = None,
    generation: Any = None,
    run: dict[str, Any] | None = None,
    benchmark_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``scores.json`` and a finished manifest for a run done in one go (a scoring of predictions, the
    Owl-World split): no resume, so no starting manifest."""
    out = Path(out)
    write_text(out / "scores.json", json.dumps(scores, indent=1, ensure_ascii=False) + "\n")
    gen = None if generation is None else generation_record(generation)
    manifest = new_manifest(benchmark, model=model, data=data, generation=gen, run=run, benchmark_args=benchmark_args)
    manifest.update(status="complete", finished=now(), wall_seconds=round(seconds, 2))
    manifest.update(wall_seconds_total=round(seconds, 2), counts=counts, scores=scores)
    manifest["outputs"] = {"scores.json": sha256_file(out / "scores.json")}
    save(out / MANIFEST_NAME, manifest)
    return manifest
