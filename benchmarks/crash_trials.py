"""Kill `owl train` with SIGKILL at seeded random moments, resume it, and check it ends bit-identical.

What a crash can hit, each a kind of trial (cycled, so every kind gets its share):

- ``random``      SIGKILL at a random time in the run (1-3 times per trial), wherever it lands;
- ``in-ckpt``     SIGKILL while a checkpoint is being written (the parent watches for the staging directory);
- ``in-final``    SIGKILL while the final model directory is being written;
- ``corrupt``     SIGKILL while a random checkpoint (step 9 on) is written, then the newest complete checkpoint is
                  damaged on the disk (a file truncated, or one byte flipped): resuming must say so and fall back
                  to the one before;
- ``disk-full``   (root only: a small tmpfs) the run's output lies on a filesystem too small for its third
                  checkpoint: the run stops with one clear line, the previous checkpoint verifies, and after
                  moving the output to a roomier disk the same command finishes it.

Every trial resumes with the default ``checkpoint.resume: auto`` until the run completes, then compares its
final weights (``model.safetensors`` and the LoRA adapter) and its logged losses with an uninterrupted run's:
they must be equal bit for bit (``torch.equal``).

    python benchmarks/crash_trials.py --trials 24 --seed 0 --json benchmarks/results/crash-trials.json

Runs the tiny stage-2 recipe (LoRA + abstractor, dropout on, two data sources mixed per batch) for 24 steps with
a checkpoint every 3, from a 4-step stage-1 model it trains first. About 10 minutes on 2 CPU cores for 24 trials.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = ROOT / "configs" / "tiny" / "stage1.yaml"
STAGE2 = ROOT / "configs" / "tiny" / "stage2.yaml"
COMMON = ["train.progress=false", "train.tensorboard=false"]
RUN = ["init_from=A", "train.max_steps=24", "checkpoint.every=3", "checkpoint.keep=2", *COMMON]
KINDS = ("random", "in-ckpt", "in-final", "corrupt", "disk-full")


@dataclass
class Trial:
    """One trial's story: where each kill landed, what resuming said, and whether the end matched."""

    index: int
    kind: str
    kills: list[dict] = field(default_factory=list)  # {"at_s", "in_write", "steps_done"} per kill
    launches: int = 0
    fell_back: bool = False  # a damaged checkpoint was reported and passed over
    damage: str = ""
    disk_full_error: str = ""
    identical: bool = False
    seconds: float = 0.0
    skipped: str = ""


def owl(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "owl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "owl.cli"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OWL_CPU_BF16": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*cmd, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate()
    return proc.returncode, out, err


def steps_done(out_dir: Path) -> int:
    ckpts = sorted((out_dir / "checkpoints").glob("step-*")) if (out_dir / "checkpoints").is_dir() else []
    return int(ckpts[-1].name.split("-")[1]) if ckpts else 0


def writing(out_dir: Path) -> bool:
    """A checkpoint or the model directory is being assembled right now."""
    ck = out_dir / "checkpoints"
    staging = ck.is_dir() and any(p.name.startswith(".tmp-step-") for p in os.scandir(ck))
    return staging or any(p.name.startswith(".model.tmp-") for p in os.scandir(out_dir))


def launch_and_kill(work: Path, out: str, trial: Trial, when: str, delay: float = 0.0, step: int = 0) -> bool:
    """Start the run; kill it per ``when``: ``time`` after ``delay`` s, ``ckpt`` while checkpoint ``step`` (or a
    later one) is being written, ``final`` while the model directory is. Returns True if it was killed, False if
    it finished first.
    """
    out_dir = work / out
    proc = owl("train", str(STAGE2), f"output_dir={out}", *RUN, cwd=work)
    trial.launches += 1
    t0 = time.monotonic()
    target = f".tmp-step-{step:06d}"
    while proc.poll() is None:
        now = time.monotonic() - t0
        if when == "time" and now >= delay:
            break
        if when == "ckpt" and (out_dir / "checkpoints").is_dir():
            staging = [p.name for p in os.scandir(out_dir / "checkpoints") if p.name.startswith(".tmp-step-")]
            if staging and max(staging) >= target:
                break
        if when == "final" and out_dir.is_dir() and any(p.name.startswith(".model.tmp-") for p in os.scandir(out_dir)):
            break
        time.sleep(0.0005 if when != "time" else 0.005)
    if proc.poll() is not None:
        finish(proc)
        return False
    in_write = out_dir.is_dir() and writing(out_dir)
    proc.kill()
    finish(proc)
    trial.kills.append(
        {"at_s": round(time.monotonic() - t0, 3), "in_write": in_write, "steps_done": steps_done(out_dir)}
    )
    return True


def run_to_end(work: Path, out: str, trial: Trial) -> str:
    """Resume until the run completes; returns what it printed."""
    code, stdout, stderr = finish(owl("train", str(STAGE2), f"output_dir={out}", *RUN, cwd=work))
    trial.launches += 1
    if code != 0:
        raise RuntimeError(f"resume of {out} failed ({code}): {stderr[-2000:]}")
    return stdout + stderr


def when(rng: random.Random, span: tuple[float, float]) -> float:
    """A random kill time: one in ten during setup, the rest while the run trains and checkpoints."""
    setup_s, end_s = span
    return rng.uniform(0.3, setup_s) if rng.random() < 0.1 else rng.uniform(setup_s, end_s)


def damage_newest(out_dir: Path, rng: random.Random) -> str:
    newest = sorted((out_dir / "checkpoints").glob("step-*"))[-1]
    victim = newest / rng.choice(["trainable.safetensors", "optimizer.pt", "state.json", "rng.safetensors"])
    data = bytearray(victim.read_bytes())
    if rng.random() < 0.5:
        victim.write_bytes(data[: rng.randrange(len(data))])
        return f"truncated {newest.name}/{victim.name}"
    i = rng.randrange(len(data))
    data[i] ^= 0x01
    victim.write_bytes(bytes(data))
    return f"flipped byte {i} of {newest.name}/{victim.name}"


def same_as_reference(work: Path, out: str) -> bool:
    import torch
    from safetensors.torch import load_file

    def losses(d: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in (d / "logs" / "metrics.jsonl").read_text().splitlines()]

    ok = losses(work / "ref") == losses(work / out)
    for name in ("model/model.safetensors", "model/adapter/adapter_model.safetensors"):
        a, b = load_file(str(work / "ref" / name)), load_file(str(work / out / name))
        ok = ok and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return ok


def disk_full_trial(work: Path, out: str, trial: Trial, ckpt_bytes: int) -> None:
    """Output on a tmpfs with room for two checkpoints and the logs: the third checkpoint's write fails."""
    mount = work / f"{out}-tmpfs"
    mount.mkdir()
    size = int(ckpt_bytes * 2.5) + (64 << 10)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode != 0:
        trial.skipped = "cannot mount a tmpfs (needs root)"
        return
    try:
        code, _, stderr = finish(owl("train", str(STAGE2), f"output_dir={mount / 'run'}", *RUN, cwd=work))
        trial.launches += 1
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        trial.disk_full_error = last
        if code != 2 or "could not write" not in last or "Traceback" in stderr:
            raise RuntimeError(f"disk-full run ended {code}: {stderr[-2000:]}")
        sys.path.insert(0, str(ROOT))
        from owl.train.checkpoint import list_checkpoints, verify_checkpoint

        kept = list_checkpoints(mount / "run")
        if not kept or any(verify_checkpoint(p) is not None for p in kept):
            raise RuntimeError(f"checkpoints after the disk filled up do not verify: {kept}")
        trial.kills.append({"at_s": 0, "in_write": True, "steps_done": steps_done(mount / "run")})
        shutil.copytree(mount / "run", work / out)  # "free some space": the same run, on a roomier disk
    finally:
        subprocess.run(["umount", str(mount)])
    run_to_end(work, out, trial)


def one_trial(
    work: Path, index: int, kind: str, rng: random.Random, span: tuple[float, float], ckpt_bytes: int
) -> Trial:
    """``span``: when the reference run's training began and ended, in seconds after launch; random kills fall
    in it (a tenth of them in the setup before it)."""
    trial = Trial(index, kind)
    out = f"t{index:02d}"
    t0 = time.monotonic()
    if kind == "disk-full":
        disk_full_trial(work, out, trial, ckpt_bytes)
        if trial.skipped:
            return trial
    elif kind == "in-ckpt":
        launch_and_kill(work, out, trial, "ckpt", step=rng.choice(range(3, 25, 3)))
    elif kind == "in-final":
        launch_and_kill(work, out, trial, "final")
    elif kind == "random":
        for _ in range(rng.randint(1, 3)):
            if not launch_and_kill(work, out, trial, "time", when(rng, span)):
                break
    else:  # corrupt: killed while a checkpoint from step 9 on is written, so two complete ones exist before it
        launch_and_kill(work, out, trial, "ckpt", step=rng.choice(range(9, 25, 3)))
        if len(list((work / out / "checkpoints").glob("step-*"))) >= 2:
            trial.damage = damage_newest(work / out, rng)
            shutil.rmtree(work / out / "model", ignore_errors=True)  # if it had finished: make it run again
    if not (work / out / "model" / "model.safetensors").exists():
        said = run_to_end(work, out, trial)
        trial.fell_back = "is damaged" in said
    trial.identical = same_as_reference(work, out)
    trial.seconds = round(time.monotonic() - t0, 1)
    return trial


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed after)")
    ap.add_argument("--json", default=None, help="write every trial's record here")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="owl-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "configs").exists():
        (work / "configs").symlink_to(ROOT / "configs")
    try:
        code, _, err = finish(owl("train", str(STAGE1), "output_dir=A", "train.max_steps=4", *COMMON, cwd=work))
        if code != 0:
            raise RuntimeError(err[-2000:])
        t0 = time.monotonic()
        proc = owl("train", str(STAGE2), "output_dir=ref", *RUN, cwd=work)
        while proc.poll() is None and not (work / "ref" / "logs").is_dir():  # setup done, the first step begins
            time.sleep(0.005)
        setup_s = time.monotonic() - t0
        code, _, err = finish(proc)
        ref_s = time.monotonic() - t0
        if code != 0:
            raise RuntimeError(err[-2000:])
        ckpt_bytes = sum(f.stat().st_size for f in sorted((work / "ref" / "checkpoints").glob("step-*"))[-1].iterdir())
        print(
            f"reference run: {ref_s:.1f} s ({setup_s:.1f} s of setup), checkpoint {ckpt_bytes / 2**20:.2f} MiB",
            flush=True,
        )
        trials = []
        for i in range(args.trials):
            t = one_trial(work, i, kinds[i % len(kinds)], rng, (setup_s, ref_s), ckpt_bytes)
            trials.append(t)
            where = ", ".join(
                f"{k['at_s']}s/step{k['steps_done']}{'/in-write' if k['in_write'] else ''}" for k in t.kills
            )
            print(
                f"trial {i:2d} {t.kind:9s} kills [{where}] launches {t.launches} "
                f"{'fell back ' if t.fell_back else ''}{t.damage} {t.skipped} "
                f"-> {'IDENTICAL' if t.identical else ('skipped' if t.skipped else 'DIFFERENT')} ({t.seconds} s)",
                flush=True,
            )
        ran = [t for t in trials if not t.skipped]
        kills = sum(len(t.kills) for t in ran)
        in_write = sum(k["in_write"] for t in ran for k in t.kills)
        summary = {
            "trials": len(ran),
            "skipped": len(trials) - len(ran),
            "identical": sum(t.identical for t in ran),
            "kills": kills,
            "kills_inside_a_write": in_write,
            "damaged_and_fell_back": sum(t.fell_back for t in ran),
            "damaged": sum(bool(t.damage) for t in ran),
            "reference_run_s": round(ref_s, 1),
            "reference_setup_s": round(setup_s, 1),
            "checkpoint_mib": round(ckpt_bytes / 2**20, 2),
            "seed": args.seed,
        }
        print(json.dumps(summary))
        if args.json:
            Path(args.json).write_text(
                json.dumps({"summary": summary, "trials": [asdict(t) for t in trials]}, indent=1)
            )
        return 0 if summary["identical"] == len(ran) and summary["damaged_and_fell_back"] == summary["damaged"] else 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
