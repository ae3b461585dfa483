"""SkipStats: counts per source and reason, a readable summary, checkpoint round trip, merging ranks."""

import json

import pytest

from owl.data import Skipped, SkipStats


def _stats() -> SkipStats:
    stats = SkipStats()
    stats.add_ok("laion", 7)
    stats.add_ok("llava")
    stats.add(Skipped("laion", "missing_image", "a.jsonl:3", "image file not found: /x/3.jpg"))
    stats.add(Skipped("laion", "missing_image", "a.jsonl:9", "image file not found: /x/9.jpg"))
    stats.add(Skipped("laion", "malformed_json", "a.jsonl:5", "not a JSON line"))
    stats.add(Skipped("llava", "image_count_mismatch", "l.json[0]", "2 <image> placeholders but 1 images given"))
    return stats


def test_counts_totals_and_fractions():
    stats = _stats()
    assert stats.total_ok == 8
    assert stats.total_skipped == 4
    assert stats.total_seen == 12
    assert stats.by_reason() == {"missing_image": 2, "image_count_mismatch": 1, "malformed_json": 1}
    assert stats.by_reason("laion") == {"missing_image": 2, "malformed_json": 1}
    assert stats.by_source() == {
        "laion": {"seen": 10, "ok": 7, "skipped": 3, "distinct": 3},
        "llava": {"seen": 2, "ok": 1, "skipped": 1, "distinct": 1},
    }
    assert stats.bad_fraction() == pytest.approx(4 / 12)
    assert stats.bad_fraction("llava") == pytest.approx(0.5)
    assert stats.bad_fraction("never-seen") == 0.0
    assert SkipStats().bad_fraction() == 0.0


def test_summary_is_a_table_with_totals_and_first_examples():
    lines = _stats().summary_lines()
    assert lines[0].split() == ["source", "seen", "ok", "skipped", "bad", "records", "bad", "reasons"]
    assert lines[1].split()[:6] == ["laion", "10", "7", "3", "3", "30.00%"]
    assert "missing_image 2, malformed_json 1" in lines[1]
    assert lines[3].split() == ["total", "12", "8", "4", "4", "33.33%"]
    end = lines[0].index("seen") + len("seen")  # numbers are right-aligned under their header
    assert lines[1][end - 2 : end] == "10" and lines[3][end - 2 : end] == "12"
    examples = [line for line in lines if "e.g." in line]
    assert "  e.g. laion missing_image: a.jsonl:3: image file not found: /x/3.jpg" in examples
    assert len(examples) == 3


def test_checkpoint_round_trip_through_json():
    stats = _stats()
    restored = SkipStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert restored == stats
    assert restored.summary_lines() == stats.summary_lines()
    restored.add_ok("laion")
    assert stats.ok["laion"] == 7  # no shared dicts


def test_from_dict_rejects_what_to_dict_never_writes():
    with pytest.raises(ValueError, match="version"):
        SkipStats.from_dict({"ok": {}})
    with pytest.raises(ValueError, match="malformed counts"):
        SkipStats.from_dict({"version": 1, "ok": {"a": -1}})
    with pytest.raises(ValueError, match="malformed counts"):
        SkipStats.from_dict({"version": 1, "skipped": {"a": {"empty": "3"}}})


def test_merge_adds_counts_from_another_rank():
    rank0, rank1 = _stats(), SkipStats()
    rank1.add_ok("laion", 3)
    rank1.add_ok("alpaca", 2)
    rank1.add(Skipped("laion", "missing_image", "b.jsonl:1", "other example"))
    rank1.add(Skipped("alpaca", "empty", "a.json[4]", "an assistant turn is empty"))
    merged = SkipStats.from_dict(rank0.to_dict()).merge(rank1)
    assert merged.ok == {"laion": 10, "llava": 1, "alpaca": 2}
    assert merged.skipped["laion"] == {"missing_image": 3, "malformed_json": 1}
    assert merged.skipped["alpaca"] == {"empty": 1}
    assert merged.distinct == {
        "laion": {"missing_image": 3, "malformed_json": 1}, "llava": {"image_count_mismatch": 1}, "alpaca": {"empty": 1}
    }  # fmt: skip
    assert merged.total_seen == rank0.total_seen + rank1.total_seen
    assert merged.examples["laion"]["missing_image"].startswith("a.jsonl:3")  # keeps its own first example
    assert merged.examples["alpaca"]["empty"].startswith("a.json[4]")
    assert rank1.ok == {"laion": 3, "alpaca": 2}  # the other side is left alone


def test_records_met_again_in_later_epochs_count_once_as_bad_records():
    stats = SkipStats()
    stats.add_ok("laion", 6)
    for epoch in range(2):  # the same 8 bad records met in epoch 0, 6 of them again in epoch 1
        for i in range(8 if epoch == 0 else 6):
            stats.add(Skipped("laion", "missing_image", f"a.jsonl:{i}", "gone"), first=epoch == 0)
    assert (stats.total_distinct, stats.total_skipped) == (8, 14)
    row = stats.summary_lines()[1]
    assert row.split()[:5] == ["laion", "20", "6", "14", "8"]
    assert row.endswith("missing_image 8 (met 14)")
    assert SkipStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_version_1_checkpoints_still_load_with_each_skip_taken_as_distinct():
    old = {"version": 1, "ok": {"a": 3}, "skipped": {"a": {"empty": 2}}, "examples": {"a": {"empty": "x:1: e"}}}
    stats = SkipStats.from_dict(old)
    assert stats.distinct == {"a": {"empty": 2}} and stats.total_skipped == 2
    stats.add(Skipped("a", "empty", "x:1", "e"), first=False)
    assert (stats.total_distinct, stats.total_skipped) == (2, 3)
    with pytest.raises(ValueError, match="malformed counts"):
        SkipStats.from_dict({"version": 2, "distinct": {"a": {"empty": -1}}})
