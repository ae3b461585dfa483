"""Training checkpoints: checksums taken at write time catch damage later, resume falls back, full disks are named."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from owl.errors import CheckpointError, CheckpointNotFound
from owl.train import checkpoint as ckpt
from owl.train.loop import CheckpointWriteError, _writing


def write(out: Path, step: int, keep: int = 5) -> Path:
    trainable = {"w": torch.arange(64, dtype=torch.float32) + step}
    optimizer = {"state": {0: {"exp_avg": torch.ones(64) * step}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return ckpt.save_checkpoint(out, step, trainable, optimizer, {"step": step}, "seed: 0\n", keep)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    for step in (2, 4, 6):
        write(tmp_path, step)
    return tmp_path


def test_checksums_cover_every_file_and_a_fresh_checkpoint_verifies(run: Path) -> None:
    newest = ckpt.list_checkpoints(run)[-1]
    sums = json.loads((newest / ckpt.CHECKSUMS).read_text())
    assert sums["algorithm"] == "sha256"
    assert sorted(sums["files"]) == [
        "optimizer.pt",
        "rng.safetensors",
        "state.json",
        "train_config.yaml",
        "trainable.safetensors",
    ]
    assert all(ckpt.verify_checkpoint(p) is None for p in ckpt.list_checkpoints(run))
    assert ckpt.find_resume(run, "auto", say=pytest.fail) == newest


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda d: (d / "trainable.safetensors").write_bytes((d / "trainable.safetensors").read_bytes()[:100]),
            "trainable.safetensors has 100 bytes",
        ),
        (lambda d: _flip(d / "trainable.safetensors", -3), "trainable.safetensors does not match its SHA-256"),
        (lambda d: _flip(d / "optimizer.pt", 40), "optimizer.pt does not match its SHA-256"),
        (lambda d: (d / "state.json").unlink(), "state.json is missing"),
        (lambda d: (d / "rng.safetensors").write_bytes(b""), "rng.safetensors has 0 bytes"),
        (lambda d: (d / ckpt.CHECKSUMS).write_text("{not json"), "checksums.json is unreadable"),
        (
            lambda d: (d / ckpt.CHECKSUMS).write_text('{"files": {}}'),
            "checksums.json does not list trainable.safetensors",
        ),
    ],
    ids=[
        "truncated",
        "bit-flip-weights",
        "bit-flip-optimizer",
        "file-deleted",
        "emptied",
        "checksums-garbled",
        "checksums-emptied",
    ],
)
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(run: Path, damage, expected: str) -> None:
    newest = ckpt.list_checkpoints(run)[-1]
    damage(newest)
    problem = ckpt.verify_checkpoint(newest)
    assert problem is not None and problem.startswith(expected), problem
    said: list[str] = []
    assert ckpt.find_resume(run, "auto", say=said.append).name == "step-000004"
    assert said == [f"checkpoint {newest} is damaged ({problem}); trying the one before it"]
    with pytest.raises(CheckpointError, match="step-000006.*the checkpoint is damaged"):
        ckpt.find_resume(run, str(newest))


def test_when_every_checkpoint_is_damaged_the_run_stops_instead_of_starting_over(run: Path) -> None:
    for path in ckpt.list_checkpoints(run):
        _flip(path / "trainable.safetensors", -1)
    with pytest.raises(CheckpointError, match=r"every checkpoint in .* is damaged .*checkpoint.resume=none"):
        ckpt.find_resume(run, "auto", say=lambda _: None)
    assert ckpt.find_resume(run, "none") is None


def test_older_checkpoints_without_checksums_still_resume(run: Path) -> None:
    newest = ckpt.list_checkpoints(run)[-1]
    (newest / ckpt.CHECKSUMS).unlink()
    assert ckpt.verify_checkpoint(newest) is None
    (newest / "rng.safetensors").unlink()
    assert ckpt.verify_checkpoint(newest) == "missing rng.safetensors"


def test_an_incomplete_directory_is_not_a_checkpoint(run: Path) -> None:
    (run / "checkpoints" / "step-000008").mkdir()  # no COMPLETE: never listed, refused by name
    assert ckpt.list_checkpoints(run)[-1].name == "step-000006"
    with pytest.raises(CheckpointNotFound, match="not a complete checkpoint"):
        ckpt.find_resume(run, str(run / "checkpoints" / "step-000008"))


def test_what_killed_writes_leave_behind_is_removed_and_nothing_else(run: Path) -> None:
    root = run / "checkpoints"
    for name in (".tmp-step-000008", ".step-000004.old-4242", ".step-000006.tmp-77"):
        (root / name).mkdir()
        (root / name / "trainable.safetensors").write_bytes(b"partial")
    (run / ".model.tmp-99").mkdir()
    (root / "notes").mkdir()  # not ours: kept
    removed = ckpt.remove_stale(run, extra=(".model.tmp-*",))
    assert sorted(p.name for p in removed) == [
        ".model.tmp-99",
        ".step-000004.old-4242",
        ".step-000006.tmp-77",
        ".tmp-step-000008",
    ]
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step-000002", "step-000004", "step-000006"]


def test_a_write_that_fails_leaves_no_staging_and_keeps_older_checkpoints(run: Path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "write_checksums", full)
    with pytest.raises(OSError):
        write(run, 8, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-000002", "step-000004", "step-000006"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("error", "free"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 10 << 30),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 10 << 30),
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), 10 << 30),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), 1 << 20),
    ],
    ids=["enospc", "quota", "safetensors", "torch-save-low-space"],
)
def test_disk_failures_become_one_clear_error(run: Path, monkeypatch, error: Exception, free: int) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(free * 2, free, free))
    with pytest.raises(CheckpointWriteError) as info:
        with _writing("checkpoint step 8", run / "checkpoints", run):
            raise error
    msg = str(info.value)
    cause = "over the disk quota: " if getattr(error, "errno", None) == errno.EDQUOT else "the disk is full: "
    assert msg.startswith(f"could not write checkpoint step 8 to {run / 'checkpoints'} ({cause}")
    assert f"{free / 2**20:.1f} MiB free there" in msg
    assert "step-000006, is intact" in msg and "run the same command again to resume" in msg
    assert "\n" not in msg


def test_other_failures_while_writing_are_not_blamed_on_the_disk(run: Path) -> None:
    with pytest.raises(KeyError):
        with _writing("checkpoint step 8", run / "checkpoints", run):
            raise KeyError("a bug")
