"""`owl bench generate`: runs end to end on a tiny model with minimal sizes and writes its report (no timing asserts).

The figures themselves depend on the machine; what is checked is that every part ran through the real code (the
real command, ``generate``, and a real ``owl serve`` when this checkout has one), that the random model decodes the
full length (its EOS is never greedy), and that batched greedy texts matched the batch-1 loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from owl.bench.generate import bench_prompts, counts, make_model_dir, markdown, server_available
from owl.errors import ConfigError
from owl.generation import GenerationOptions, generate
from owl.models import load_model
from owl.processing import OwlProcessor
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_bench_generate_cli_writes_json_and_markdown(tmp_path):
    out = tmp_path / "out"
    r = run_cli(
        "bench", "generate", "--size", "tiny", "--batches", "1,2", "--new-tokens", "3", "--repeats", "1",
        "--clients", "1,2", "--requests", "1", "--device", "cpu", "--out", out, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.loads((out / "generate.json").read_text())
    assert d["device"] == "cpu" and d["machine"]["cpu"] and d["new_tokens"] == 3 and d["parameters"] > 0
    assert [x["batch"] for x in d["batches"]] == [1, 2]
    for x in d["batches"]:
        assert x["ttft_s"] > 0 and x["total_s"] > 0
        assert x["completion_tokens"] == 3 * x["batch"]  # the random model's EOS is never greedy: full length
    (row,) = d["loop_vs_batched"]["rows"]
    assert row["batch"] == 2 and row["identical"] and row["speedup"] > 0
    if server_available():
        served = d["served"]["rows"]
        assert [x["clients"] for x in served] == [1, 2]
        for x in served:
            assert not x["errors"] and x["requests"] == x["clients"] and x["completion_tokens"] == 3 * x["clients"]
        assert served[0]["scaling"] == pytest.approx(1.0)
    else:
        assert "skipped" in d["served"]
    md = (out / "generate.md").read_text()
    assert md == markdown(d) and "| batch | time to first token |" in md and "Targets:" in md
    assert "decode" in r.stdout and "written to" in r.stdout


def test_batched_texts_match_the_loop_on_the_bench_model(tmp_path):
    """The bench's own check, directly: batched greedy = one at a time, on prompts of different lengths."""
    model_dir = make_model_dir(tmp_path / "m", "tiny")
    model, proc = load_model(model_dir).eval(), OwlProcessor.from_pretrained(model_dir)
    prompts = bench_prompts(3)
    options = GenerationOptions(max_new_tokens=4)
    batched = generate(model, proc, prompts, options, batch_size=3)
    assert [c.text for c in batched] == [generate(model, proc, [p], options, 1)[0].text for p in prompts]
    assert {c.finish_reason for c in batched} == {"length"}


def test_bad_counts_are_one_line_errors(tmp_path):
    assert counts("1, 8,32", "--clients") == [1, 8, 32] and counts("", "--clients") == []
    with pytest.raises(ConfigError, match="comma-separated whole numbers"):
        counts("1,x", "--batches")
    r = run_cli("bench", "generate", "--batches", "0", "--out", tmp_path, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("owl: error: batch sizes [0]")
    assert not (tmp_path / "generate.json").exists()
