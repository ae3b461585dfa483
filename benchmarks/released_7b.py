"""The released-checkpoint path at full size: convert a 7B mPLUG-Owl checkpoint, load it, chat. Memory and time.

No released weights can be downloaded here, so this writes a checkpoint with the exact layout and sizes of
``MAGAer13/mplug-owl-llama-7b`` (CLIP ViT-L/14, 6-layer abstractor with the 2816-wide MLP, LLaMA-7B; two
``pytorch_model-0000N-of-00002.bin`` shards in bf16, old rotary buffers included) filled with random weights, then
measures, each in a fresh process: ``owl convert from-mplug-owl`` (wall time, peak RSS), and loading the converted
model in bf16 plus one batched greedy generation with an image (load time, peak RSS, peak GPU memory, decode
speed). The answers are noise (random weights); the memory and time are what the real model needs.

    python benchmarks/released_7b.py --out DIR          # a GPU machine with ~40 GB of disk
    python benchmarks/released_7b.py --out DIR --small  # the same path at toy size (a CPU check of the script)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD_PRELUDE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
"""

CONVERT = (
    CHILD_PRELUDE
    + r"""
import torch, transformers  # noqa: F401
from owl.convert.mplug_owl import from_mplug_owl
base = status("VmRSS"); t = time.perf_counter()
from_mplug_owl({src!r}, {out!r})
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_rss": status("VmHWM"), "baseline_rss": base}}))
"""
)

CHAT = (
    CHILD_PRELUDE
    + r"""
import torch
from PIL import Image
from owl.chat import resolve_device
from owl.conversation import Message, Sample
from owl.generation import GenerationOptions, generate
from owl.models import load_model
from owl.processing import OwlProcessor
device, dtype = resolve_device("auto", {dtype!r})
base = status("VmRSS"); t = time.perf_counter()
model = load_model({out!r}, dtype=dtype).to(device).eval()
if device.startswith("cuda"):
    torch.cuda.synchronize()
load = time.perf_counter() - t
load_rss = status("VmHWM")
proc = OwlProcessor.from_pretrained({out!r})
img = Image.new("RGB", (640, 480), (200, 120, 40))
samples = [Sample([Message("user", "<image>\nWhat is in the picture?")], [img]) for _ in range({batch})]
opts = GenerationOptions(max_new_tokens={new}, do_sample=False, stop=[])
generate(model, proc, samples[:1], GenerationOptions(max_new_tokens=2, do_sample=False))  # warm-up
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
out = generate(model, proc, samples, opts)
if device.startswith("cuda"):
    torch.cuda.synchronize()
gen = time.perf_counter() - t
toks = sum(c.completion_tokens for c in out)
print(json.dumps({{
    "device": device, "dtype": str(dtype), "load_seconds": load, "rss_after_load": load_rss, "baseline_rss": base,
    "peak_rss": status("VmHWM"), "gpu_peak": torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0,
    "gpu_reserved": torch.cuda.max_memory_reserved() if device.startswith("cuda") else 0,
    "generate_seconds": gen, "new_tokens": toks, "batch": {batch}, "prompt_tokens": out[0].prompt_tokens,
    "parameters": sum(p.numel() for p in model.parameters()),
}}))
"""
)


def reference_7b_config(small: bool) -> tuple[dict, int]:
    from owl.config import preset
    from tests.mplug_owl_reference import reference_config

    cfg = reference_config("llama", 32000)
    if small:
        return cfg, 88
    p = preset("mplug-owl-llama-7b")
    v, a = p.vision, p.abstractor
    cfg["vision_config"] |= {
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
    }
    cfg["visual_abstractor_config"] |= {
        "hidden_size": a.hidden_size,
        "num_hidden_layers": a.num_layers,
        "num_attention_heads": a.num_heads,
        "encoder_hidden_size": v.hidden_size,
    }
    cfg["num_query_tokens"] = a.num_queries
    cfg["text_config"] = dict(p.llm.hf_config) | {"max_position_embeddings": 2048}
    cfg["torch_dtype"] = "bfloat16"
    return cfg, a.intermediate_size


def write_checkpoint(src: Path, small: bool) -> dict:
    """Random weights under the release's names and shapes, two bf16 .bin shards; the LLM made on the GPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.mplug_owl_reference import random_state
    from tests.sentencepiece_tok import train_spm

    cfg, ffn = reference_7b_config(small)
    state = {k: v.to(torch.bfloat16) for k, v in random_state(cfg, seed=0, ffn=ffn, llm=False).items()}
    t = dict(cfg["text_config"])
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.for_model(t.pop("model_type"), **t))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    for name, p in meta.state_dict().items():
        if name.endswith("norm.weight"):
            x = torch.ones(p.shape, device=dev)
        else:
            x = torch.randn(p.shape, device=dev, generator=g) * 0.02
        state["language_model." + name] = x.to(torch.bfloat16).cpu()
    hd = cfg["text_config"]["hidden_size"] // cfg["text_config"]["num_attention_heads"]
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    for i in range(cfg["text_config"]["num_hidden_layers"]):  # as the 2023 checkpoints carry them
        state[f"language_model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    (src / "tokenizer.model").write_bytes(train_spm(src / "_spm").read_bytes())
    names = list(state)
    sizes = [state[k].numel() * state[k].element_size() for k in names]
    cut, total, acc = len(names), sum(sizes), 0
    for i, size in enumerate(sizes):  # two shards of about equal bytes, as the release has
        acc += size
        if acc >= total / 2:
            cut = i + 1
            break
    weight_map = {}
    for i, chunk in enumerate((names[:cut], names[cut:])):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: state[k] for k in chunk}, src / fname)
        weight_map |= {k: fname for k in chunk}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return {"tensors": len(state), "parameters": sum(v.numel() for v in state.values())}


def run_child(code: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="scratch directory (~30 GB at full size)")
    ap.add_argument("--small", action="store_true", help="toy sizes: check the script on a CPU")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on a CPU), bf16, fp32")
    ap.add_argument("--reuse", action="store_true", help="keep an already converted OUT/owl-7b: measure loading only")
    args = ap.parse_args()
    out = Path(args.out)
    src, owl_dir = out / "mplug-owl-llama-7b", out / "owl-7b"
    gib = 2**30
    result: dict = {}
    if not (args.reuse and (owl_dir / "config.json").exists()):
        t = time.perf_counter()
        info = write_checkpoint(src, args.small)
        shards = sorted(src.glob("pytorch_model-*.bin"))
        sizes = [p.stat().st_size for p in shards]
        print(
            f"checkpoint: {info['parameters'] / 1e9:.2f}B parameters, {len(shards)} shards "
            f"{', '.join(f'{s / gib:.2f}' for s in sizes)} GiB (written in {time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        conv = run_child(CONVERT.format(root=str(ROOT), src=str(src), out=str(owl_dir)))
        used = conv["peak_rss"] - conv["baseline_rss"]
        print(
            f"convert: {conv['seconds']:.0f} s, peak RSS {conv['peak_rss'] / gib:.2f} GiB ({used / gib:.2f} GiB above "
            f"the baseline after imports = {used / max(sizes):.2f} x the largest shard)",
            flush=True,
        )
        for f in shards:  # room on the disk for the converted copy is all that is needed from here on
            f.unlink()
        result |= {"checkpoint": info | {"shard_bytes": sizes}, "convert": conv}
    code = CHAT.format(root=str(ROOT), out=str(owl_dir), batch=args.batch, new=args.new_tokens, dtype=args.dtype)
    chat = run_child(code)
    print(
        f"load ({chat['device']}, {chat['dtype']}): {chat['load_seconds']:.0f} s, {chat['parameters'] / 1e9:.2f}B "
        f"parameters; peak RSS {chat['peak_rss'] / gib:.2f} GiB; GPU peak allocated {chat['gpu_peak'] / gib:.2f} "
        f"GiB (reserved {chat['gpu_reserved'] / gib:.2f} GiB)"
    )
    print(
        f"generate: batch {chat['batch']} x {chat['prompt_tokens']} prompt tokens, {chat['new_tokens']} new tokens "
        f"in {chat['generate_seconds']:.2f} s = {chat['new_tokens'] / chat['generate_seconds']:.1f} tok/s"
    )
    result["chat"] = chat
    (out / "released_7b.json").write_text(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "released_7b.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
