"""benchmarks/gpu.sh: the plan without a GPU, a one-line refusal without one, and its code run small on a CPU.

The GPU run itself cannot run here; ``--preset tiny --allow-cpu`` runs every line of it (data, both stages through
the trainer's step, generation, the JSON) on the tiny preset, so what reaches a GPU session has run before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = os.environ | {"PYTHON": sys.executable, "PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=full)


def test_dry_run_prints_the_7b_plan_without_a_gpu():
    r = _run("--dry-run")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert "llm: llama hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000" in out
    assert "clip 224 px / patch 14, width 1024, 24 layers" in out and "65 visual tokens per image" in out
    assert "6,738,415,616" in out  # LLaMA-7B's parameters, counted on the meta device
    assert "lora: r 8, alpha 32" in out and "target_modules q_proj,v_proj" in out and "lr 2e-05" in out
    assert "batch 8 x 1024 tokens" in out and "TFLOP" in out and "train.batch_size=16" in out
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")
def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    r = _run(env={"OUT": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.strip().startswith("gpu_bench: error: no CUDA device")
    assert len(r.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_the_whole_run_on_the_tiny_preset_on_a_cpu(tmp_path):
    r = _run(
        "--preset", "tiny", "--allow-cpu", "--steps", "1", "--warmup", "0", "--stage2-tokens", "128",
        "--gen-batch", "2", "--gen-tokens", "4", "--peak-size", "128", env={"OUT": str(tmp_path)},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.loads((tmp_path / "gpu.json").read_text())
    assert set(d["peak"]) == {"bf16", "fp32"} and d["preset"] == "tiny"
    for stage, tokens in (("stage1", None), ("stage2", 128)):
        s = d[stage]
        assert s["step_s"]["median"] > 0 and 0 < s["mfu"] < 1.5 and s["flops_per_step"]["total"]["total"] > 0
        if tokens:
            assert s["tokens_per_step"]["padded"] == s["batch_size"] * tokens  # every sample at max_length
    assert d["stage1"]["batch_size"] == 16 and d["stage2"]["batch_size"] == 8
    assert d["stage2"]["parameters"]["trainable"] < d["stage2"]["parameters"]["total"]
    assert d["generate"]["new_tokens"] > 0 and d["generate"]["new_tokens_per_s"] > 0
    assert "| stage2 | 8 x 128 |" in (tmp_path / "gpu.md").read_text()
