"""Stream image-caption pairs out of webdataset tar shards (what img2dataset writes).

A shard holds files grouped by key: ``000123.jpg`` with ``000123.txt`` (the
caption) and/or ``000123.json`` (metadata with a caption field). Shards are
read in tar streaming mode, member by member, so a 1 GB shard is never
extracted to disk or held in memory; the image stays raw ``bytes`` in
``Sample.images`` for the processor to decode.

Written on :mod:`tarfile` rather than the ``webdataset`` package: the grouping
is a few lines, and owning it is what lets a damaged shard become one
:class:`~owl.data.source.Skipped` that names the shard and key, with the
records before the damage kept and the next shard read as usual.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from owl.conversation import Sample, SampleError
from owl.data.source import Skipped, SourceSpec, build_sample, caption_messages, record_id

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Member extensions (lower-cased) that hold the sample's image."""

_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.jpg`` -> ``("dir/000123", "jpg")``: the key ends at the first dot of the file name.

    This is the webdataset convention (``a.seg.png`` has key ``a`` and
    extension ``seg.png``). Names without an extension, or hidden files, are
    not sample members and give None.
    """
    folder, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None
    stem, extension = base.split(".", 1)
    return posixpath.join(folder, stem), extension.lower()


def iter_shard(spec: SourceSpec, path: str) -> Iterator[Sample | Skipped]:
    """Yield one Sample or Skipped per key of the shard, in tar order.

    A shard that breaks off (truncated download, bad gzip) yields the records
    read completely before the damage, then one Skipped ``corrupt_shard`` for
    the rest: the key being read when it broke is part of that rest, since it
    cannot be known to be complete.
    """
    shard = os.path.basename(path)
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with _open_decompressed(path) as raw:
            stream = _CountingReader(raw)
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    parts = split_member_name(member.name) if member.isfile() else None
                    if parts is None:
                        continue
                    member_key, extension = parts
                    if member_key != key:
                        if key is not None:
                            yield _to_sample(spec, shard, key, members)
                        key, members = member_key, {}
                    file = tar.extractfile(member)
                    assert file is not None  # a regular file always has contents
                    members[extension] = file.read()
                # tarfile ends quietly when the data stops at a member boundary; a whole
                # archive has an end-of-archive block there, so no block means a cut.
                if stream.count < tar.offset + tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("unexpected end of data (no end-of-archive block)")
    except _READ_ERRORS as error:
        at = f" at key {key}" if key is not None else ""
        yield Skipped(spec.name, "corrupt_shard", shard, f"shard unreadable{at}, rest skipped: {error}")
        return
    if key is not None:
        yield _to_sample(spec, shard, key, members)


def _open_decompressed(path: str) -> BinaryIO:
    """The shard's bytes as a tar stream, decompressing gzip/bzip2/xz shards (chosen by magic bytes)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


class _CountingReader:
    """A read-only file that counts the bytes handed out, to tell a cut-off tar from a whole one."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


def _to_sample(spec: SourceSpec, shard: str, key: str, members: dict[str, bytes]) -> Sample | Skipped:
    def make() -> Sample:
        images = [members[ext] for ext in IMAGE_EXTENSIONS if ext in members]
        if not images:
            found = ", ".join(sorted(members))
            raise SampleError("missing_image", f"no image member ({'/'.join(IMAGE_EXTENSIONS)}); found {found}")
        if len(images) > 1:
            raise SampleError("image_count_mismatch", f"{len(images)} image members for one key")
        metadata: dict = {}
        if "json" in members:
            try:
                metadata = json.loads(members["json"])
            except (ValueError, RecursionError) as error:
                raise SampleError("malformed_json", f"{key}.json is not JSON: {error}") from None
            if not isinstance(metadata, dict):
                raise SampleError("bad_type", f"{key}.json must hold an object, got {type(metadata).__name__}")
        caption = _caption(spec, key, members, metadata)
        sample = Sample(caption_messages(caption.strip(), spec.caption_prompt), images=images)
        sample.id = record_id(metadata, spec)
        return sample

    return build_sample(spec, f"{shard}:{key}", make)


def _caption(spec: SourceSpec, key: str, members: dict[str, bytes], metadata: dict) -> str:
    """The ``.txt`` caption, or the caption field of the ``.json`` when there is no (non-blank) ``.txt``."""
    text = None
    if "txt" in members:
        try:
            text = members["txt"].decode("utf-8")
        except UnicodeDecodeError as error:
            raise SampleError("bad_encoding", f"{key}.txt is not UTF-8: {error}") from None
    if text is not None and text.strip():
        return text
    name = spec.field_name("caption")
    value = metadata.get(name)
    if value is None:
        if text is not None:
            return text  # an empty .txt and nothing better: skipped as "empty" downstream
        raise SampleError("missing_field", f"no {key}.txt and no {name!r} field in {key}.json")
    if not isinstance(value, str):
        raise SampleError("bad_type", f"{key}.json field {name!r} must be a string, got {type(value).__name__}")
    return value
