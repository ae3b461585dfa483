"""Atomic writes: a file or directory appears under its final name complete, or not at all.

One helper for every writer (model directories, training checkpoints, caches):
build in a temporary sibling, then ``os.replace`` it into place. A process
killed at any moment leaves either the old content or the new, never half.
``durable=True`` also flushes the files and the directory entries to the disk
(``fsync``) before and after the rename, so that the machine itself losing
power cannot leave a renamed directory whose files were never written: what
training checkpoints need, since a run resumes from whatever is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (a leftover from a killed run is removed first)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the files' data is what matters most
        pass
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """``fsync`` every file and directory under ``root`` (and ``root`` itself): their data is on the disk."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def commit_dir(tmp: Path, path: Path, durable: bool = False) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing what was there, in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        sync_tree(tmp)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if durable:
        _fsync(path.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, staging: str | Path | None = None, durable: bool = False) -> Iterator[Path]:
    """Write a directory atomically: yields a staging directory that becomes ``path`` when the block ends.

    ``staging`` names the staging directory (default: a hidden per-process sibling); strategies whose processes
    each write a part of one checkpoint pass the same name on every process and let only one of them commit.
    If the block raises, the staging directory is removed and ``path`` is untouched. ``durable``: see the module.
    """
    path = Path(path)
    tmp = Path(staging) if staging is not None else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if staging is None or not tmp.exists():
        fresh_dir(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, path, durable)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary sibling + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
