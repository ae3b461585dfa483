"""Training checkpoints: everything needed to continue a run exactly, written atomically.

``output_dir/checkpoints/step-000120/`` holds::

    trainable.safetensors   the trainable parameters (LoRA weights included) under their model names, full
                            (unsharded) whatever the distribution strategy
    optimizer.pt            AdamW state in the layout of ``Optimizer.state_dict()`` of the unsharded model (tensors
                            and numbers only; loaded with weights_only=True); absent under DeepSpeed, whose
                            partitioned state DeepSpeed writes itself into ``deepspeed/``
    rng.safetensors         torch (and CUDA) RNG states: process 0's (``torch``), process r's (``rank{r}.torch``)
    state.json              step, scheduler, data position (mixture RNG, per-source epoch+offset), skip counts,
                            numpy and python RNG states (``rng``; other processes' in ``rng_ranks``)
    train_config.yaml       the resolved config of the run
    checksums.json          size and SHA-256 of every file above, taken at write time
    COMPLETE                written last; a directory without it is ignored

A checkpoint directory appears under its final name only once complete
(``owl.atomic.atomic_dir``: staging directory + rename), so a run killed at
any moment leaves either the previous checkpoints or the new one, never half
of one; ``COMPLETE`` marks it as such for readers that list the directory.
The staging directory has the same name on every process, so that strategies
whose processes each write a part (DeepSpeed) can write there first. Files
are flushed to the disk (``fsync``) before the rename.

A rename guards against a killed process, not against what happens to the
files afterwards (a disk error, a copy cut short, a hand edit): the checksums
catch that. ``resume: auto`` checks the newest complete checkpoint against
them and, if it is damaged, says why and takes the previous one (hence
``checkpoint.keep`` >= 2 by default).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from owl.atomic import atomic_dir, fresh_dir
from owl.errors import CheckpointError, CheckpointNotFound

CKPT_DIR = "checkpoints"
CHECKSUMS = "checksums.json"
_STEP_RE = re.compile(r"^step-(\d+)$")
_STALE_RE = re.compile(r"^\.(tmp-step-\d+|step-\d+\.(old|tmp)-\d+)$")


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG states as (tensors, JSON-able values): safe to store without pickle."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    plain = {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": [version, list(internal), gauss_next]}
    return tensors, plain


def rank_rng_state(
    tensors: dict[str, torch.Tensor], state: dict[str, Any], rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Process ``rank``'s saved RNG states; process 0's when the checkpoint has none for it (older checkpoints,
    or fewer processes then than now)."""
    prefix = f"rank{rank}."
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    ranks = state.get("rng_ranks", [])
    if rank == 0 or not mine or rank > len(ranks):
        return {k: v for k, v in tensors.items() if not k.startswith("rank")}, state["rng"]
    return mine, ranks[rank - 1]


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


def staging_dir(output_dir: str | Path, step: int) -> Path:
    """Where checkpoint ``step`` is assembled before its rename: the same path on every process."""
    return Path(output_dir) / CKPT_DIR / f".tmp-step-{step:06d}"


def begin_checkpoint(output_dir: str | Path, step: int) -> Path:
    """An empty staging directory for checkpoint ``step`` (a leftover of a killed run is removed)."""
    return fresh_dir(staging_dir(output_dir, step))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict | None,
    state: dict[str, Any],
    config_yaml: str,
    keep: int,
    rng: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    staged: bool = False,
) -> Path:
    """Write checkpoint ``step`` and drop all but the newest ``keep``.

    ``rng``: every process's :func:`rng_state` (default: this process's only). ``staged``: the staging directory
    was made by :func:`begin_checkpoint` and may already hold files written by every process.
    """
    final = Path(output_dir) / CKPT_DIR / f"step-{step:06d}"
    tmp = staging_dir(output_dir, step) if staged else begin_checkpoint(output_dir, step)
    with atomic_dir(
        final, staging=tmp, durable=True
    ):  # becomes `final` (replacing one of the same step) when the block ends
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        rng = rng or [rng_state()]
        rng_tensors = dict(rng[0][0])
        for r, (tensors, _) in enumerate(rng[1:], start=1):
            rng_tensors |= {f"rank{r}.{k}": v for k, v in tensors.items()}
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        extra = {"rng_ranks": [plain for _, plain in rng[1:]]} if len(rng) > 1 else {}
        (tmp / "state.json").write_text(json.dumps(state | {"rng": rng[0][1]} | extra))
        (tmp / "train_config.yaml").write_text(config_yaml)
        write_checksums(tmp)
        (tmp / "COMPLETE").write_text("")
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and (p / "COMPLETE").exists()
    ]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file under ``root`` but the markers, as sorted POSIX paths relative to it."""
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(n for n in names if n not in (CHECKSUMS, "COMPLETE"))


def write_checksums(root: Path) -> None:
    """Record the size and SHA-256 of every file of the checkpoint being assembled in ``root``."""
    files = {name: {"size": (root / name).stat().st_size, "sha256": _sha256(root / name)} for name in _files(root)}
    (root / CHECKSUMS).write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1))


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with the complete checkpoint ``path`` (a missing, truncated or altered file), or None.

    Sizes are compared first (cheap; what a copy cut short or a full disk leaves), then the hashes. A checkpoint
    from before checksums were recorded is checked for its required files only.
    """
    required = ["trainable.safetensors", "rng.safetensors", "state.json"]
    sums_file = path / CHECKSUMS
    if not sums_file.exists():
        missing = [n for n in required if not (path / n).is_file()]
        return f"missing {', '.join(missing)}" if missing else None
    try:
        files = json.loads(sums_file.read_text())["files"]
        expected = {str(name): (int(v["size"]), str(v["sha256"])) for name, v in files.items()}
    except (ValueError, KeyError, TypeError) as e:
        return f"{CHECKSUMS} is unreadable ({e})"
    missing = [n for n in required if n not in expected]
    if missing:
        return f"{CHECKSUMS} does not list {', '.join(missing)}"
    for name, (size, _) in expected.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
    for name, (_, digest) in expected.items():
        if _sha256(path / name) != digest:
            return f"{name} does not match its SHA-256 recorded at write time"
    return None


def find_resume(output_dir: str | Path, resume: str, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from: ``auto`` = newest complete and intact one (or None), ``none``, or a path.

    Under ``auto`` a damaged checkpoint is reported through ``say`` and the previous one is tried; when every
    one is damaged the run stops rather than silently start over. An explicit path must be intact.
    """
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        damaged = []
        for path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                return path
            damaged.append(f"{path.name}: {problem}")
            say(f"checkpoint {path} is damaged ({problem}); trying the one before it")
        if damaged:
            raise CheckpointError(
                f"every checkpoint in {Path(output_dir) / CKPT_DIR} is damaged ({'; '.join(damaged)}); "
                "to start over, set checkpoint.resume=none or choose another output_dir"
            )
        return None
    path = Path(resume)
    if not (path / "COMPLETE").exists():
        raise CheckpointNotFound(
            f"checkpoint.resume={resume}: not a complete checkpoint directory (one with a "
            "COMPLETE file, e.g. output_dir/checkpoints/step-000120); or use auto or none"
        )
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint.resume={resume}: the checkpoint is damaged ({problem}); use another one")
    return path


def remove_stale(output_dir: str | Path, extra: tuple[str, ...] = ()) -> list[Path]:
    """Delete what killed runs left behind (staging and replaced directories); returns what was removed.

    Harmless to complete checkpoints: only hidden ``checkpoints/.tmp-step-*``, ``.step-*.old-*`` and
    ``.step-*.tmp-*`` directories match, plus the ``extra`` glob patterns in ``output_dir`` itself (the
    training loop's model directory staging). Call it before a run writes anything, from one process.
    """
    out, root = Path(output_dir), Path(output_dir) / CKPT_DIR
    stale = [p for p in root.iterdir() if _STALE_RE.match(p.name)] if root.is_dir() else []
    stale += [p for pattern in extra for p in out.glob(pattern)] if out.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(stale)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything saved by :func:`save_checkpoint` (and its path), loaded without executing pickled code."""
    optimizer = path / "optimizer.pt"
    return {
        "path": path,
        "trainable": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(optimizer, weights_only=True) if optimizer.exists() else None,
        "rng": load_file(str(path / "rng.safetensors")),
        "state": json.loads((path / "state.json").read_text()),
    }
