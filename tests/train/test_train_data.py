"""The training stream: mixture shares, exact resume, epochs, rank slices, skip counting."""

from __future__ import annotations

import json

import pytest

from owl.config import preset
from owl.data import SourceSpec
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from owl.train.data import TrainData
from tests.helpers import random_image


def write_sources(tmp_path, n_caps=20, n_text=12, bad_lines=()):
    img = tmp_path / "a.png"
    random_image(0).save(img)
    lines = [json.dumps({"image": "a.png", "caption": f"caption {i}"}) for i in range(n_caps)]
    for pos, line in bad_lines:
        lines.insert(pos, line)
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "text.json").write_text(
        json.dumps([{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(n_text)])
    )
    return [
        SourceSpec("caps", "captions", str(tmp_path / "caps.jsonl"), weight=1),
        SourceSpec("text", "alpaca", str(tmp_path / "text.json"), weight=1),
    ]


def make(sources, mix="sample", rank=0, world=1, batch=4, accum=1, seed=0):
    proc = OwlProcessor.from_config(preset("tiny"), byte_tokenizer())
    return TrainData(sources, mix, proc, seed, rank, world, batch, accum, group_by_length=True)


def ids(step):
    return [e.id for mb in step for e in mb]


def test_per_batch_mix_has_exact_shares(tmp_path):
    data = make(write_sources(tmp_path), mix="per_batch", batch=6)
    for _ in range(5):
        sources = [e.source for mb in data.next_step() for e in mb]
        assert sorted(sources) == ["caps"] * 3 + ["text"] * 3


def test_sample_mix_follows_weights(tmp_path):
    specs = write_sources(tmp_path, n_caps=40, n_text=40)
    specs[0].weight = 3
    data = make(specs, batch=20)
    sources = [e.source for _ in range(10) for mb in data.next_step() for e in mb]
    assert 0.65 < sources.count("caps") / len(sources) < 0.85


def test_resume_continues_exactly(tmp_path):
    specs = write_sources(tmp_path, n_caps=7, n_text=5)  # small sources: the run crosses epochs
    a = make(specs, batch=4, accum=2)
    for _ in range(3):
        a.next_step()
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON, as in a checkpoint
    expected = [ids(a.next_step()) for _ in range(4)]
    b = make(specs, batch=4, accum=2)
    b.load_state_dict(state)
    assert [ids(b.next_step()) for _ in range(4)] == expected
    assert a.mixture.streams[0].epoch >= 2  # epochs wrapped around


def test_epochs_are_shuffled_differently_but_deterministically(tmp_path):
    specs = write_sources(tmp_path, n_caps=10, n_text=1)
    specs[1].weight = 1e-9
    epochs = [[s.id for _, s, _ in make(specs, seed=3).mixture.draw(20, make(specs).stats)] for _ in range(2)]
    assert epochs[0] == epochs[1]
    first, second = epochs[0][:10], epochs[0][10:]
    assert sorted(first) == sorted(second) and first != second


def test_ranks_split_the_global_batch(tmp_path):
    specs = write_sources(tmp_path)
    single = make(specs, batch=4, world=1)
    r0, r1 = make(specs, batch=2, rank=0, world=2), make(specs, batch=2, rank=1, world=2)
    for _ in range(3):
        assert sorted(ids(single.next_step())) == sorted(ids(r0.next_step()) + ids(r1.next_step()))


def test_bad_records_are_counted_not_fatal(tmp_path):
    bad = [
        (2, "{not json"),
        (5, json.dumps({"image": "missing.png", "caption": "x"})),
        (7, json.dumps({"image": "a.png", "caption": 5})),
    ]
    specs = write_sources(tmp_path, n_caps=10, bad_lines=bad)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    with open(specs[0].path, "a") as f:
        f.write(json.dumps({"image": "corrupt.png", "caption": "y"}) + "\n")
    specs[1].weight = 1e-9
    data = make(specs, batch=11)  # one epoch: 14 lines, 3 bad at read time (not drawn), 11 drawn
    got = ids(data.next_step())
    assert len(got) == 10  # the corrupt image fails at encode time; the other 10 are used
    reasons = data.stats.by_reason("caps")
    assert reasons == {"malformed_json": 1, "missing_image": 1, "bad_type": 1, "bad_image": 1}


def test_bad_records_met_over_several_epochs_are_reported_once_and_survive_resume(tmp_path):
    """4 bad records (2 at read time, 1 corrupt image, 1 missing) among 6 good, read for 3 epochs: 4 bad records,
    skipped about 3x as often; resuming mid-way from the saved state reports the same."""
    bad = [
        (1, "{oops"),
        (3, json.dumps({"image": "a.png", "caption": 7})),
        (4, json.dumps({"image": "corrupt.png", "caption": "y"})),
        (6, json.dumps({"image": "no.png", "caption": "z"})),
    ]
    specs = write_sources(tmp_path, n_caps=6, bad_lines=bad)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    specs[1].weight = 1e-9
    data = make(specs, batch=3, seed=1)
    for _ in range(3):
        data.next_step()
    state = json.loads(json.dumps(data.state_dict()))
    for _ in range(3):
        data.next_step()  # 6 steps x 3 = 18 samples drawn = 3 epochs of 6
    resumed = make(specs, batch=3, seed=1)
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.next_step()
    for stats in (data.stats, resumed.stats):
        assert stats.distinct == {"caps": {"malformed_json": 1, "bad_type": 1, "bad_image": 1, "missing_image": 1}}
        assert 9 <= stats.total_skipped <= 12 and stats.total_distinct == 4
    assert resumed.stats == data.stats


def test_source_without_usable_records_is_an_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{oops\n[1, 2]\n")
    data = make([SourceSpec("bad", "captions", str(tmp_path / "bad.jsonl"))])
    with pytest.raises(ValueError, match="data source 'bad'.*has no usable records"):
        data.next_step()
