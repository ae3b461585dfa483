"""`owl bench peak` through the real command: figures written as JSON and markdown, FLOPs counted right."""

from __future__ import annotations

import json

import pytest
import torch

from owl.bench.peak import gemm_tflops
from tests.helpers import run_cli


def test_gemm_rate_is_flops_over_time(monkeypatch):
    """2 n^3 FLOPs per GEMM: with a clock that advances 1 s per call pair, the rate is 2 n^3 / 1 s."""
    ticks = iter(range(10_000))
    monkeypatch.setattr("owl.bench.peak.time.perf_counter", lambda: float(next(ticks)))
    r = gemm_tflops(64, torch.float32, seconds=4.0)
    assert r["tflops"] == pytest.approx(2 * 64**3 / 1e12) and r["repeats"] >= 3


def test_bench_peak_cli_writes_json_and_markdown(tmp_path):
    r = run_cli("bench", "peak", "--out", tmp_path, "--size", "128", "--seconds", "0.05")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((tmp_path / "peak.json").read_text())
    assert set(d["peak"]) == {"fp32", "bf16"} and all(v["tflops"] > 0 for v in d["peak"].values())
    assert d["machine"]["torch_threads"] >= 1 and d["n"] == 128
    assert "| fp32 |" in (tmp_path / "peak.md").read_text() and "| bf16 |" in r.stdout
    bad = run_cli("bench", "peak", "--out", tmp_path, "--size", "4")
    assert bad.returncode == 2 and bad.stderr.startswith("owl: error: --size 4")


def test_a_precision_without_fast_kernels_is_timed_once(monkeypatch):
    """bf16 on a CPU without AMX: seconds per GEMM, so one timed repeat instead of minutes of them."""
    ticks = iter(range(0, 100_000, 10))  # every clock read 10 s later: a 10 s GEMM against a 2 s budget
    monkeypatch.setattr("owl.bench.peak.time.perf_counter", lambda: float(next(ticks)))
    r = gemm_tflops(32, torch.float32, seconds=2.0)
    assert r["repeats"] == 1 and r["tflops"] == pytest.approx(2 * 32**3 / 10 / 1e12)
