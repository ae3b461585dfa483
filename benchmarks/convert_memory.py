"""Peak memory of ``owl convert from-mplug-owl`` on a sharded checkpoint, against its largest shard.

A 7B release is ~14 GB of fp16/bf16 in a few shards; converting must not need the whole model in RAM. This
writes a reference-layout checkpoint with a LLaMA scaled up until each shard is a few hundred MB (same names and
structure as the release, random bf16 weights), converts it in a fresh process, and reports that process's peak
RSS above its own baseline after imports, next to the largest input shard and the largest output shard.

    .venv/bin/python benchmarks/convert_memory.py [--layout bin-sharded|safetensors-sharded] [--hidden 1536]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch, transformers  # noqa: F401  (imports counted in the baseline)
from owl.convert.mplug_owl import from_mplug_owl
def status(key):  # VmHWM, not ru_maxrss: the latter carries the parent's peak across fork + exec
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
t = time.perf_counter()
from_mplug_owl({src!r}, {out!r})
wall = time.perf_counter() - t
peak = status("VmHWM")
print(json.dumps({{"baseline_rss": base, "peak_rss": peak, "seconds": wall}}))
"""


def build(src: Path, layout: str, hidden: int, layers: int, vocab: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.mplug_owl_reference import random_state, reference_config, write_reference_dir
    from tests.sentencepiece_tok import train_spm

    cfg = reference_config("llama", vocab)
    cfg["text_config"] |= {
        "hidden_size": hidden,
        "intermediate_size": int(hidden * 2.6875),
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
    }
    cfg["torch_dtype"] = "bfloat16"
    state = {k: v.to(torch.bfloat16) for k, v in random_state(cfg, seed=0).items()}
    tok = train_spm(src / "_tok")
    write_reference_dir(src, cfg, state, layout, {"tokenizer.model": tok.read_bytes()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", default="bin-sharded", choices=["bin-sharded", "safetensors-sharded"])
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "runs" if (ROOT / "runs").is_dir() else None) as tmp:
        src, out = Path(tmp) / "ref", Path(tmp) / "owl"
        t = time.perf_counter()
        build(src, args.layout, args.hidden, args.layers, args.vocab)
        built = time.perf_counter() - t
        shards = sorted(p for p in src.iterdir() if p.suffix in (".bin", ".safetensors"))
        code = CHILD.format(root=str(ROOT), src=str(src), out=str(out))
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        outs = sorted(p for p in out.iterdir() if p.suffix == ".safetensors")
        largest_in = max(p.stat().st_size for p in shards)
        largest_out = max(p.stat().st_size for p in outs)
        total = sum(p.stat().st_size for p in shards)
        used = m["peak_rss"] - m["baseline_rss"]
        mb = 2**20
        print(f"layout {args.layout}: {len(shards)} shards, {total / mb:.0f} MiB in all (built in {built:.1f} s)")
        print(f"largest input shard {largest_in / mb:.0f} MiB, largest output shard {largest_out / mb:.0f} MiB")
        print(
            f"conversion: {m['seconds']:.1f} s; peak RSS {m['peak_rss'] / mb:.0f} MiB, baseline after imports "
            f"{m['baseline_rss'] / mb:.0f} MiB -> {used / mb:.0f} MiB for the conversion"
        )
        bound = 1.5 * largest_in + largest_out
        print(
            f"bound 1.5 x largest input + largest output = {bound / mb:.0f} MiB: "
            f"{'within' if used <= bound else 'OVER'} ({used / largest_in:.2f} x the largest input shard; "
            f"{used / total:.2f} x the whole checkpoint)"
        )


if __name__ == "__main__":
    main()
