"""`owl train` end to end through the real command: both tiny stages, exact resume, bad data, 2 processes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ROOT / "configs" / "tiny" / "stage1.yaml"
STAGE2 = ROOT / "configs" / "tiny" / "stage2.yaml"
QUIET = ["train.progress=false", "train.tensorboard=false"]


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "logs" / "metrics.jsonl").read_text().splitlines()]


def ok(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    (work / "configs").symlink_to(ROOT / "configs")  # the recipes' data paths are relative to the repository root
    ok(run_cli("train", STAGE1, "output_dir=A", *QUIET, cwd=work))
    return work


def test_two_stages_losses_fall_and_the_result_generates(stage1):
    work = stage1
    a = losses(work / "A")
    assert len(a) == 40 and sum(a[-5:]) / 5 < sum(a[:5]) / 5 - 0.3
    r = ok(run_cli("train", STAGE2, "init_from=A", "output_dir=B", *QUIET, cwd=work))
    assert "llm" in r.stdout and "trainable" in r.stdout  # the per-module trainable table
    b = losses(work / "B")
    assert sum(b[-5:]) / 5 < sum(b[:5]) / 5 - 0.3
    for d in ("A", "B"):
        assert (work / d / "loss.png").stat().st_size > 1000
        assert (work / d / "model" / "config.json").exists()
    assert (work / "B" / "model" / "adapter" / "adapter_config.json").exists()
    lineage = json.loads((work / "B" / "model" / "lineage.json").read_text())
    assert lineage["parent"]["path"] == str((work / "A" / "model").resolve()) and lineage["data"][0]["files"]

    from owl.conversation import Message, Sample
    from owl.generation import GenerationOptions, generate
    from owl.models import load_model
    from owl.processing import OwlProcessor

    model, proc = load_model(work / "B").eval(), OwlProcessor.from_pretrained(work / "B")
    img = sorted((ROOT / "configs" / "tiny" / "data" / "images").glob("inst_*.png"))[0]
    out = generate(
        model,
        proc,
        [Sample([Message("user", "<image>\nWhat colour is the shape?")], [str(img)])],
        GenerationOptions(max_new_tokens=6),
    )
    assert out[0].completion_tokens > 0


RESUMABLE = ["train", STAGE2, "init_from=A", "train.max_steps=8", "checkpoint.every=3", *QUIET]


@pytest.fixture(scope="module")
def full_run(stage1):
    """The uninterrupted 8-step stage-2 run that killed and resumed runs must equal."""
    ok(run_cli(*RESUMABLE, "output_dir=full", cwd=stage1))
    return stage1 / "full"


def same_run(a: Path, b: Path) -> None:
    full = load_file(str(a / "model" / "model.safetensors"))
    resumed = load_file(str(b / "model" / "model.safetensors"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    fa = load_file(str(a / "model" / "adapter" / "adapter_model.safetensors"))
    ra = load_file(str(b / "model" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(fa[k], ra[k]) for k in fa)
    assert losses(a) == losses(b)


def test_killed_run_resumes_bit_identical(stage1, full_run):
    work = stage1
    killed = run_cli(*RESUMABLE, "output_dir=resumed", cwd=work, env={"OWL_DEBUG_KILL_AFTER_STEP": "5"})
    assert killed.returncode == -9  # SIGKILL
    assert not (work / "resumed" / "model").exists()
    r = ok(run_cli(*RESUMABLE, "output_dir=resumed", cwd=work))
    assert "resumed from" in r.stdout and "step-000003" in r.stdout
    same_run(full_run, work / "resumed")


def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(stage1, full_run):
    work = stage1
    killed = run_cli(*RESUMABLE, "output_dir=damaged", cwd=work, env={"OWL_DEBUG_KILL_AFTER_STEP": "7"})
    assert killed.returncode == -9
    newest = work / "damaged" / "checkpoints" / "step-000006"
    blob = bytearray((newest / "trainable.safetensors").read_bytes())
    blob[-5] ^= 0x10  # one bit of one weight: same size, so only the hash can tell
    (newest / "trainable.safetensors").write_bytes(bytes(blob))
    r = ok(run_cli(*RESUMABLE, "output_dir=damaged", cwd=work))
    assert "step-000006 is damaged (trainable.safetensors does not match its SHA-256" in r.stdout
    assert "resumed from" in r.stdout and "step-000003 at step 3" in r.stdout
    same_run(full_run, work / "damaged")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): room for two checkpoints of the tiny stage-2 run (0.44 MiB each), not three."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1100k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(stage1, full_run, small_disk):
    from owl.train.checkpoint import list_checkpoints, verify_checkpoint

    work = stage1
    r = run_cli(*RESUMABLE, "checkpoint.every=2", f"output_dir={small_disk / 'run'}", cwd=work)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("owl: error: could not write checkpoint step 6") and "step-000004, is intact" in last
    kept = list_checkpoints(small_disk / "run")
    assert [p.name for p in kept] == ["step-000002", "step-000004"]
    assert all(verify_checkpoint(p) is None for p in kept)
    assert not [p for p in (small_disk / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    shutil.copytree(small_disk / "run", work / "moved")  # the user frees space: here, moves to a roomier disk
    r = ok(run_cli(*RESUMABLE, "checkpoint.every=2", "output_dir=moved", cwd=work))
    assert "step-000004 at step 4" in r.stdout
    same_run(full_run, work / "moved")


def _bad_data_config(work, max_bad):
    images = sorted((ROOT / "configs" / "tiny" / "data" / "images").glob("*.png"))[:20]
    lines = [json.dumps({"image": str(p), "caption": f"shape number {i}"}) for i, p in enumerate(images)]
    lines[3:3] = [
        "{broken json",
        json.dumps({"image": "nope.png", "caption": "x"}),
        json.dumps({"image": str(images[0]), "caption": 7}),
    ]
    (work / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines.append(json.dumps({"image": str(work / "corrupt.png"), "caption": "y"}))
    (work / "planted.jsonl").write_text("\n".join(lines) + "\n")
    # absolute image paths outside the data file's folder: allowed by image_root: /
    cfg = STAGE1.read_text().replace(
        "path: configs/tiny/data/captions.jsonl", f"path: {work / 'planted.jsonl'}, image_root: /"
    )
    assert str(work / "planted.jsonl") in cfg
    cfg = cfg.replace(
        "  max_length: 256", f"  max_length: 256\n  max_bad_fraction: {max_bad}\n  min_seen_for_abort: 10"
    )
    path = work / f"planted-{max_bad}.yaml"
    path.write_text(cfg)
    return path


def test_planted_bad_lines_train_to_the_end_with_counts(stage1):
    work = stage1
    r = ok(run_cli("train", _bad_data_config(work, 0.5), "output_dir=bad", "train.max_steps=3", *QUIET, cwd=work))
    report = (work / "bad" / "data_report.txt").read_text()
    for reason in ("malformed_json", "missing_image", "bad_type", "bad_image"):
        assert reason in report, report
    assert "captions" in r.stdout and (work / "bad" / "model" / "config.json").exists()


def test_too_much_bad_data_aborts_with_one_line(stage1):
    work = stage1
    r = run_cli("train", _bad_data_config(work, 0.01), "output_dir=abort", "train.max_steps=3", *QUIET, cwd=work)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("owl: error:") and "data.max_bad_fraction=0.01" in last


def test_a_step_whose_every_sample_is_skipped_trains_on(stage1):
    """Most images corrupt, batches of 2: some steps lose every sample; they update nothing and the run goes on,
    its report counting 10 bad records however often they were met."""
    work = stage1
    images = sorted((ROOT / "configs" / "tiny" / "data" / "images").glob("*.png"))[:2]
    (work / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lines = [{"image": str(p), "caption": "a shape"} for p in images]
    lines += [{"image": str(work / "bad.png"), "caption": f"bad {i}"} for i in range(10)]
    (work / "mostly-bad.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    source = f"data.sources=[{{name: c, format: captions, path: {work / 'mostly-bad.jsonl'}, image_root: /}}]"
    args = ["train", STAGE1, source, "data.max_bad_fraction=1.0", "train.batch_size=2", "train.max_steps=12"]
    r = ok(run_cli(*args, "output_dir=mostly-bad", *QUIET, cwd=work))
    rows = [json.loads(x) for x in (work / "mostly-bad" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any(x["target_tokens"] == 0 for x in rows if "target_tokens" in x), rows[:3]
    report = (work / "mostly-bad" / "data_report.txt").read_text()
    assert "bad_image 10 (met " in report, report
    assert "model written to" in r.stdout


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_processes_match_one_process(stage1):
    work = stage1
    common = [
        "train",
        STAGE1,
        "train.max_steps=6",
        "checkpoint.every=0",
        *QUIET,
        "model.overrides.abstractor.attention_dropout=0.0",
    ]
    ok(run_cli(*common, "output_dir=one", "train.batch_size=8", cwd=work))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    import os
    import subprocess

    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "owl.cli", *map(str, common), "output_dir=two", "train.batch_size=4"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 processes" in r.stdout
    one, two = losses(work / "one"), losses(work / "two")
    assert len(one) == len(two) == 6
    assert one == pytest.approx(two, rel=1e-4)


DISTILL = [
    "trainable.abstractor=frozen",
    "trainable.queries=frozen",
    "lora.dropout=0",
    "train.max_steps=6",
    "checkpoint.every=0",
    *QUIET,
]


def test_owl_train_distills_from_zero_kl_and_logs_it(stage1):
    work = stage1
    ok(run_cli("train", STAGE2, "init_from=A", "output_dir=D", "distill.sources=[text]", *DISTILL, cwd=work))
    ok(run_cli("train", STAGE2, "init_from=A", "output_dir=N", *DISTILL, cwd=work))
    d = [json.loads(x) for x in (work / "D" / "logs" / "metrics.jsonl").read_text().splitlines()]
    n = [json.loads(x) for x in (work / "N" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert abs(d[0]["distill_kl"]) < 1e-6  # LoRA's B starts at zero: the student is its teacher at step 1
    assert d[0]["loss"] == pytest.approx(n[0]["loss"], rel=1e-6)  # and the KL adds nothing to the loss
    assert all(r["distill_kl"] > 0 for r in d[1:]) and "distill_kl" not in n[0]
    assert d[-1]["loss"] != n[-1]["loss"]  # the term moved the training
    bad = run_cli("train", STAGE2, "init_from=A", "output_dir=E", "distill.sources=[text]", *QUIET, cwd=work)
    assert bad.returncode != 0 and "set trainable.llm=lora" in bad.stderr and "Traceback" not in bad.stderr
    assert not Path(work / "E" / "model").exists()
