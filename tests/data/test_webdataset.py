"""webdataset tar shards, laid out as img2dataset writes them, built in the test with tarfile."""

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from owl.conversation import Sample
from owl.data import Skipped, SourceSpec, count_records, iter_source
from owl.data.webdataset import split_member_name


def image_bytes(fmt: str, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def img2dataset_json(key: str, caption: str) -> bytes:
    """The per-sample metadata img2dataset writes next to each image."""
    meta = {
        "url": f"https://example.com/{key}.jpg",
        "caption": caption,
        "key": key,
        "status": "success",
        "error_message": None,
        "width": 8,
        "height": 8,
        "original_width": 640,
        "original_height": 480,
    }
    return json.dumps(meta).encode()


def write_shard(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def jpg_txt_shard(path: Path, shard: int, n: int) -> list[tuple[str, bytes, str]]:
    """A shard of jpg+txt pairs; returns (key, image, caption) for each record."""
    records = [(f"{shard:05d}{i:04d}", image_bytes("JPEG", (i * 40, 0, 0)), f"photo {shard}-{i}") for i in range(n)]
    members = []
    for key, image, caption in records:
        members += [(f"{key}.jpg", image), (f"{key}.txt", caption.encode())]
    write_shard(path, members)
    return records


def read(spec: SourceSpec) -> tuple[list[Sample], list[Skipped]]:
    items = list(iter_source(spec))
    return [x for x in items if isinstance(x, Sample)], [x for x in items if isinstance(x, Skipped)]


def test_jpg_txt_shard(tmp_path):
    records = jpg_txt_shard(tmp_path / "00000.tar", 0, 3)
    spec = SourceSpec("cc3m", "webdataset", str(tmp_path / "00000.tar"))
    samples, skipped = read(spec)
    assert skipped == []
    assert [(s.images, s.messages[1].content) for s in samples] == [([img], cap) for _, img, cap in records]
    assert [(m.role, m.content) for m in samples[0].messages] == [("user", "<image>"), ("assistant", "photo 0-0")]
    assert samples[0].id == "00000.tar:000000000" and samples[0].source == "cc3m"
    assert isinstance(samples[0].images[0], bytes)
    assert count_records(spec) is None


def test_png_json_shard_with_prompt_and_id_field(tmp_path):
    png = image_bytes("PNG", (0, 255, 0))
    write_shard(
        tmp_path / "laion" / "00007.tar",
        [("000070000.png", png), ("000070000.json", img2dataset_json("000070000", "a green square"))],
    )
    spec = SourceSpec(
        "laion",
        "webdataset",
        str(tmp_path / "laion" / "00007.tar"),
        fields={"id": "key"},
        caption_prompt="What is this?",
    )
    (sample,), skipped = read(spec)
    assert skipped == []
    assert sample.images == [png]
    assert [(m.role, m.content) for m in sample.messages] == [
        ("user", "<image>\nWhat is this?"),
        ("assistant", "a green square"),
    ]
    assert sample.id == "000070000"


def test_txt_wins_over_json_and_json_fills_an_empty_txt(tmp_path):
    jpg = image_bytes("JPEG", (1, 2, 3))
    write_shard(
        tmp_path / "s.tar",
        [
            ("a.jpg", jpg),
            ("a.txt", b"from txt"),
            ("a.json", img2dataset_json("a", "from json")),
            ("b.jpeg", jpg),
            ("b.txt", b""),
            ("b.json", json.dumps({"text": "renamed caption field"}).encode()),
        ],
    )
    samples, skipped = read(SourceSpec("s", "webdataset", str(tmp_path / "s.tar"), fields={"caption": "text"}))
    assert skipped == []
    assert [s.messages[1].content for s in samples] == ["from txt", "renamed caption field"]


def test_brace_pattern_sorted_shards_and_a_gzipped_shard(tmp_path):
    expected = []
    for shard in range(3):
        expected += jpg_txt_shard(tmp_path / "shards" / f"{shard:05d}.tar", shard, 2)
    jpg_txt_shard(tmp_path / "shards" / "00003.tar", 3, 2)  # outside the pattern
    samples, skipped = read(SourceSpec("cc", "webdataset", str(tmp_path / "shards" / "{00000..00002}.tar")))
    assert skipped == []
    assert [s.messages[1].content for s in samples] == [caption for _, _, caption in expected]

    gz = write_shard(
        tmp_path / "gz" / "00000.tar.gz", [("k.webp", image_bytes("WEBP", (9, 9, 9))), ("k.txt", b"w")], "w:gz"
    )
    (sample,), skipped = read(SourceSpec("gz", "webdataset", str(gz)))
    assert skipped == [] and sample.messages[1].content == "w"


def test_bad_records_inside_a_shard(tmp_path):
    jpg = image_bytes("JPEG", (0, 0, 0))
    write_shard(
        tmp_path / "s.tar",
        [
            ("nocap.jpg", jpg),
            ("noimg.txt", b"caption without image"),
            ("twoimg.jpg", jpg),
            ("twoimg.png", jpg),
            ("twoimg.txt", b"x"),
            ("badjson.jpg", jpg),
            ("badjson.json", b"{not json"),
            ("badtype.jpg", jpg),
            ("badtype.json", json.dumps({"caption": 5}).encode()),
            ("latin1.jpg", jpg),
            ("latin1.txt", "café".encode("latin-1")),
            ("blank.jpg", jpg),
            ("blank.txt", b"   "),
            ("good.jpg", jpg),
            ("good.txt", b"fine"),
        ],
    )
    samples, skipped = read(SourceSpec("s", "webdataset", str(tmp_path / "s.tar")))
    assert [s.messages[1].content for s in samples] == ["fine"]
    assert [(s.where, s.reason) for s in skipped] == [
        ("s.tar:nocap", "missing_field"),
        ("s.tar:noimg", "missing_image"),
        ("s.tar:twoimg", "image_count_mismatch"),
        ("s.tar:badjson", "malformed_json"),
        ("s.tar:badtype", "bad_type"),
        ("s.tar:latin1", "bad_encoding"),
        ("s.tar:blank", "empty"),
    ]


def test_truncated_shard_is_one_skip_and_the_next_shard_is_read(tmp_path):
    before = jpg_txt_shard(tmp_path / "00000.tar", 0, 4)
    broken = jpg_txt_shard(tmp_path / "00001.tar", 1, 6)
    after = jpg_txt_shard(tmp_path / "00002.tar", 2, 4)
    data = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[: len(data) // 2 + 100])
    samples, skipped = read(SourceSpec("cc", "webdataset", str(tmp_path / "{00000..00002}.tar")))
    assert [(s.reason, s.where) for s in skipped] == [("corrupt_shard", "00001.tar")]
    captions = [s.messages[1].content for s in samples]
    kept = len(captions) - len(before) - len(after)
    assert 0 < kept < len(broken)
    expected = before + broken[:kept] + after
    assert captions == [caption for _, _, caption in expected]
    assert [s.images[0] for s in samples] == [image for _, image, _ in expected]


def _payload_end(path: Path) -> int:
    """Where the last member's data ends: past it there are only end-of-archive blocks and padding."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


@pytest.mark.parametrize("where", [0.0, 0.05, 0.3, 0.51, 0.77, 0.99, 1.0])
@pytest.mark.parametrize("aligned", [False, True])
def test_any_cut_keeps_only_complete_records(tmp_path, where, aligned):
    """Cuts inside data, inside a header, or exactly between members (where tarfile itself ends quietly)."""
    records = jpg_txt_shard(tmp_path / "s.tar", 0, 5)
    data = (tmp_path / "s.tar").read_bytes()
    cut = max(1, int(_payload_end(tmp_path / "s.tar") * where))
    cut = cut // 512 * 512 if aligned else cut | 1
    (tmp_path / "s.tar").write_bytes(data[:cut])
    samples, skipped = read(SourceSpec("s", "webdataset", str(tmp_path / "s.tar")))
    assert [(s.reason, s.where) for s in skipped] == [("corrupt_shard", "s.tar")]
    captions = [s.messages[1].content for s in samples]
    assert captions == [caption for _, _, caption in records[: len(captions)]]
    assert len(captions) < len(records)


def test_a_whole_shard_without_padding_is_not_corrupt(tmp_path):
    jpg_txt_shard(tmp_path / "s.tar", 0, 3)
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "s.tar").write_bytes(data[: _payload_end(tmp_path / "s.tar") + 1024])  # just the two end blocks
    samples, skipped = read(SourceSpec("s", "webdataset", str(tmp_path / "s.tar")))
    assert len(samples) == 3 and skipped == []


def test_truncated_gzip_shard(tmp_path):
    members = []
    for i in range(20):  # noise: photos do not compress, so half the .gz is about half the records
        photo = Image.frombytes("RGB", (48, 48), random.Random(i).randbytes(48 * 48 * 3))
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG")
        members += [(f"{i:04d}.jpg", buffer.getvalue()), (f"{i:04d}.txt", f"caption {i}".encode())]
    data = write_shard(tmp_path / "s.tar.gz", members, "w:gz").read_bytes()
    (tmp_path / "s.tar.gz").write_bytes(data[: len(data) // 2])
    samples, skipped = read(SourceSpec("s", "webdataset", str(tmp_path / "s.tar.gz")))
    assert [(s.reason, s.where) for s in skipped] == [("corrupt_shard", "s.tar.gz")]
    assert [s.messages[1].content for s in samples] == [f"caption {i}" for i in range(len(samples))]
    assert 0 < len(samples) < 20


def test_a_file_that_is_not_a_tar(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"<html>403 Forbidden</html>")
    jpg_txt_shard(tmp_path / "00001.tar", 1, 1)
    samples, skipped = read(SourceSpec("s", "webdataset", str(tmp_path / "*.tar")))
    assert len(samples) == 1
    assert [(s.reason, s.where) for s in skipped] == [("corrupt_shard", "00000.tar")]


def test_member_names_follow_the_webdataset_key_convention():
    assert split_member_name("000123.jpg") == ("000123", "jpg")
    assert split_member_name("part/000123.JPG") == ("part/000123", "jpg")
    assert split_member_name("a.seg.png") == ("a", "seg.png")
    assert split_member_name("README") is None
    assert split_member_name("dir/.hidden") is None
