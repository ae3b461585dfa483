"""FSDP2 and DeepSpeed ZeRO-2/3 through the real `owl train` under torchrun: 2 CPU processes over gloo.

Per strategy: stage 1 on 2 processes follows the 1-process run with the same global batch (loss curve, optimizer
state, final weights), and a stage-2 run (LoRA, frozen and trainable weights in one shard unit, text-only
micro-batches that skip the vision tower, LoRA dropout) killed after a checkpoint resumes to the same final weights,
bit for bit. On 2 processes the reductions add the same two partial sums in the same order every run, so resuming
is exact; against 1 process only the summation order differs (~1e-7).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from owl.configtools import ConfigError
from owl.train.distributed import resolve_strategy
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ROOT / "configs" / "tiny" / "stage1.yaml"
STAGE2 = ROOT / "configs" / "tiny" / "stage2.yaml"
QUIET = ["train.progress=false", "train.tensorboard=false"]
TORCHRUN = Path(sys.executable).parent / "torchrun"
STAGE1_ARGS = [
    "train",
    STAGE1,
    "train.max_steps=4",
    "checkpoint.every=2",
    *QUIET,
    "model.overrides.abstractor.attention_dropout=0.0",
]  # as in the DDP test: no dropout in stage 1
STAGE2_ARGS = [
    "train",
    STAGE2,
    "init_from=one",
    "train.max_steps=4",
    "checkpoint.every=2",
    "train.batch_size=4",
    *QUIET,
]
BANNER = {"fsdp": "FSDP2 over 2 processes", "zero2": "DeepSpeed ZeRO-2 over 2", "zero3": "DeepSpeed ZeRO-3 over 2"}


def _strategies() -> list:
    """fsdp, zero2, zero3; the DeepSpeed ones skip where DeepSpeed is not installed (it is optional)."""
    ds = pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="DeepSpeed is not installed (optional; pip install deepspeed)",
    )
    return ["fsdp", pytest.param("zero2", marks=ds), pytest.param("zero3", marks=ds)]


needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun next to the Python executable")


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def torchrun(work: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`owl train` on 2 CPU processes, one thread each; --standalone: a free port, not a clash with another run."""
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"} | (env or {})
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "owl.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=work, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """The 1-process reference of stage 1 (global batch 8); also the start of the stage-2 runs."""
    work = tmp_path_factory.mktemp("dist")
    (work / "configs").symlink_to(ROOT / "configs")  # the recipes' data paths are relative to the repository root
    ok(run_cli(*STAGE1_ARGS, "output_dir=one", "train.batch_size=8", cwd=work))
    return work


@needs_torchrun
def test_two_ddp_processes_with_packed_rows_match_one_padded_process(one):
    """Packing (train.pack_tokens) under DDP: each process packs its own micro-batches; the losses are the padded
    1-process run's."""
    out = "two-ddp-packed"
    ok(
        torchrun(
            one, *STAGE1_ARGS, f"output_dir={out}", "train.batch_size=2", "train.grad_accum=2", "train.pack_tokens=512"
        )
    )
    assert losses(one / out) == pytest.approx(losses(one / "one"), rel=1e-5)


@needs_torchrun
@pytest.mark.parametrize("strategy", _strategies())
def test_two_sharded_processes_match_one_process(one, strategy):
    work = one
    out = f"two-{strategy}"
    r = ok(
        torchrun(
            work,
            *STAGE1_ARGS,
            f"output_dir={out}",
            "train.batch_size=2",
            "train.grad_accum=2",
            f"train.distributed={strategy}",
        )
    )  # global batch 8 = 2 x 2 accumulated x 2 processes
    assert BANNER[strategy] in r.stdout
    assert losses(work / out) == pytest.approx(losses(work / "one"), rel=1e-5)

    from owl.models import load_model

    ref, got = load_model(work / "one").state_dict(), load_model(work / out).state_dict()
    assert ref.keys() == got.keys()
    for name, tensor in ref.items():
        if name.startswith("llm."):  # frozen: gathered back unchanged, bit for bit
            assert torch.equal(got[name], tensor), name
        else:  # trained: the same updates up to summation order
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-5, msg=name)
    final = load_file(str(work / out / "checkpoints" / "step-000004" / "trainable.safetensors"))
    assert final and all(torch.equal(got[k], v) for k, v in final.items())  # checkpoint == saved model

    ckpt_one, ckpt_two = (work / d / "checkpoints" / "step-000002" for d in ("one", out))
    if strategy == "fsdp":  # the unsharded optimizer layout: the same file a 1-process run writes
        a, b = (torch.load(d / "optimizer.pt", weights_only=True) for d in (ckpt_one, ckpt_two))
        assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
        for i, s in a["state"].items():
            assert torch.equal(s["step"], b["state"][i]["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(b["state"][i][key], s[key], rtol=0, atol=1e-6)
    else:  # DeepSpeed's partitioned optimizer state, one file per process
        assert len(list((ckpt_two / "deepspeed").glob("zero_pp_rank_*_optim_states.pt"))) == 2


@needs_torchrun
@pytest.mark.parametrize("strategy", _strategies()[:2])  # ZeRO-3 resumes through the same DeepSpeed calls as ZeRO-2
def test_killed_sharded_run_resumes_bit_identical(one, strategy):
    work = one
    args = [*STAGE2_ARGS, f"train.distributed={strategy}"]
    ok(torchrun(work, *args, f"output_dir=full-{strategy}"))
    killed = torchrun(work, *args, f"output_dir=resumed-{strategy}", env={"OWL_DEBUG_KILL_AFTER_STEP": "3"})
    assert killed.returncode != 0
    assert not (work / f"resumed-{strategy}" / "model").exists()
    if strategy == "fsdp":  # the same checkpoint (and log), resumed later on one process (see below)
        shutil.copytree(work / f"resumed-{strategy}", work / "cross")
    r = ok(torchrun(work, *args, f"output_dir=resumed-{strategy}"))
    assert "resumed from" in r.stdout and "step-000002" in r.stdout
    for f in ("model.safetensors", "adapter/adapter_model.safetensors"):
        full = load_file(str(work / f"full-{strategy}" / "model" / f))
        resumed = load_file(str(work / f"resumed-{strategy}" / "model" / f))
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full), f
    assert losses(work / f"full-{strategy}") == losses(work / f"resumed-{strategy}")

    if strategy == "fsdp":  # an FSDP checkpoint is an ordinary one: it resumes without FSDP, on one process
        r = ok(run_cli(*STAGE2_ARGS, "output_dir=cross", "train.batch_size=8", "train.distributed=ddp", cwd=work))
        assert "resumed from" in r.stdout and "step-000002" in r.stdout
        assert losses(work / "cross")[:2] == losses(work / "full-fsdp")[:2]
        assert losses(work / "cross")[2:] == pytest.approx(losses(work / "full-fsdp")[2:], rel=0.02)


def test_a_sharded_strategy_on_one_process_says_how_to_launch(one):
    r = run_cli(*STAGE1_ARGS, "output_dir=single", "train.distributed=fsdp", cwd=one)
    assert r.returncode == 2 and "launch 2 or more (torchrun --nproc_per_node N" in r.stderr.strip().splitlines()[-1]


def test_auto_follows_the_accelerate_launch_config():
    assert resolve_strategy("auto", {}) == "ddp"
    assert resolve_strategy("auto", {"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert resolve_strategy("auto", deepspeed) == "zero2"
    assert resolve_strategy("auto", deepspeed | {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == "zero3"
    assert resolve_strategy("fsdp", {"ACCELERATE_USE_DEEPSPEED": "true"}) == "fsdp"  # the config names it: it wins
    with pytest.raises(ValueError, match="zero_stage 1"):
        resolve_strategy("auto", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"})


def test_unknown_strategy_is_a_config_error():
    from owl.train.config import LoopConfig

    with pytest.raises(ConfigError, match="train.distributed='fsdp1'"):
        LoopConfig(max_steps=1, distributed="fsdp1")


def test_deepspeed_missing_is_a_config_error(monkeypatch):
    import sys

    from owl.train.distributed import DeepSpeedStrategy

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    with pytest.raises(ConfigError, match="train.distributed=zero2 needs DeepSpeed, which is not installed"):
        DeepSpeedStrategy(None, None, "fp32", stage=2)  # type: ignore[arg-type]
