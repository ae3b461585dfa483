"""One prepared GPU run: the paper's 7B shape through owl's real training step, and batched generation.

What a GPU session needs to measure, in one go (< 8 minutes on one H100/H200-class GPU; expected ~2-3):

1. peak: bf16 and fp32 GEMM throughput on the GPU (``owl.bench.peak.gemm_tflops``, n=8192), MFU's denominator;
2. stage 1 (``configs/mplug-owl-7b/stage1.yaml``): CLIP ViT-L/14 + abstractor train, LLaMA-7B-shaped LLM frozen,
   bf16 autocast, per-GPU batch 16, one micro-batch per step;
3. stage 2 (``configs/mplug-owl-7b/stage2.yaml``): vision frozen, abstractor full, LoRA r 8 / alpha 32 on
   q_proj, v_proj (lr 2e-5), bf16 autocast, gradient checkpointing, per-GPU batch 8 at 1024 tokens;
4. generation: batched greedy decoding (``owl.generation.generate``) with the 7B shape in bf16.

Both stages go through ``owl.bench.train.bench_config`` (the trainer's ``setup`` and ``train_step``; step time,
tokens/s, model FLOPs, MFU) on synthetic data written to a temporary folder: random 224 px images and byte-token
text of a fixed length (the byte tokenizer: one token per byte, so lengths are exact; the weights are random, so
only the shapes matter). The recipes' paths to pretrained CLIP/LLaMA are replaced by the preset's random init,
and that init runs on the GPU: ``owl.train.setup.build_model`` is wrapped in ``torch.device("cuda")`` for these
runs, because a 7B random init on the CPU (``normal_`` is single-threaded there) takes minutes per stage. The
rest of ``setup`` (trainable layout, LoRA, strategy, data, optimizer, accelerate) is the trainer's own.

    bash benchmarks/gpu.sh               # writes $OUT/gpu.json (+ gpu.md), else runs/bench/gpu/
    bash benchmarks/gpu.sh --dry-run     # the plan: configs, shapes, parameter counts (meta device), FLOPs; no GPU

``--preset tiny --allow-cpu`` runs the same code on the tiny preset on a CPU (the tests do, in seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("stage1", "stage2", "generate")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU, no weights)")
    p.add_argument(
        "--out", default=os.environ.get("OUT") or "runs/bench/gpu", help="default: $OUT, else runs/bench/gpu"
    )
    p.add_argument("--preset", default="mplug-owl-llama-7b", help="model shape (default: the paper's 7B)")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per stage")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--stage1-batch", type=int, default=16, help="per-GPU batch of stage 1 (the paper's 16)")
    p.add_argument("--stage1-caption", type=int, default=64, help="caption length in tokens (stage 1)")
    p.add_argument("--stage2-batch", type=int, default=8, help="per-GPU batch of stage 2 (the paper's 8)")
    p.add_argument("--stage2-tokens", type=int, default=1024, help="tokens per stage-2 sample (data.max_length)")
    p.add_argument("--gen-batch", type=int, default=16, help="prompts per generate call")
    p.add_argument("--gen-tokens", type=int, default=128, help="max new tokens per prompt")
    p.add_argument("--peak-size", type=int, default=8192, help="GEMM size of the measured peak")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (tests, with --preset tiny)")
    args = p.parse_args(argv)
    args.only = [x for x in args.only.split(",") if x]
    bad = [x for x in args.only if x not in PHASES]
    if bad or args.steps < 1 or args.warmup < 0:
        p.error(f"--only {bad} must be in {PHASES}; --steps >= 1, --warmup >= 0")
    return args


# ----------------------------------------------------------------------------------------- the recipes


def _recipe_overrides(stage: str, args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    """The shipped recipe's overrides for a benchmark: random init of the preset, synthetic data, a short run."""
    common = [
        f"output_dir={out / stage}",
        "init_from=null",
        f"model.preset={args.preset}",
        "model.vision_from=null",
        "model.llm_from=null",
        "model.tokenizer=byte",
        "model.overrides={processor: {system_prompt: ''}}",  # lengths are set by the synthetic samples alone
        "train.grad_accum=1",  # the paper accumulates (8 x 32 in stage 2); a step here is one micro-batch
        f"train.max_steps={args.warmup + args.steps}",
        "train.precision=auto",  # bf16 autocast on a GPU
        "train.progress=false",
        "train.tensorboard=false",
        "train.image_gain_every=0",
        "train.epochs=null",
        "checkpoint.every=0",
        "checkpoint.resume=none",
        "schedule.warmup_steps=1",
    ]
    if stage == "stage1":
        return common + [
            f"data.sources=[{{name: captions, format: captions, path: {data / 'captions.jsonl'}}}]",
            f"train.batch_size={args.stage1_batch}",
        ]
    return common + [
        f"data.sources=[{{name: multimodal, format: mplug, path: {data / 'instruct.jsonl'}, weight: 1}}, "
        f"{{name: text, format: mplug, path: {data / 'text.jsonl'}, weight: 1}}]",
        f"data.max_length={args.stage2_tokens}",
        f"train.batch_size={args.stage2_batch}",
    ]


def load_config(stage: str, args: argparse.Namespace, data: Path, out: Path) -> Any:
    """``configs/mplug-owl-7b/<stage>.yaml`` with the benchmark's overrides, as a TrainConfig."""
    from owl.train.config import load_train_config

    return load_train_config(
        ROOT / "configs" / "mplug-owl-7b" / f"{stage}.yaml", _recipe_overrides(stage, args, data, out)
    )


def _text(n: int, seed: int) -> str:
    """``n`` bytes (= byte tokens) of words."""
    words = ("image", "shape", "colour", "left", "right", "small", "large", "the", "a", "of", "and", "is", "in")
    out, i = [], seed
    while sum(len(w) + 1 for w in out) < n:
        out.append(words[(i * 7 + 3) % len(words)])
        i += 1
    return " ".join(out)[:n]


def write_data(folder: Path, args: argparse.Namespace, image_size: int, n: int = 64) -> None:
    """Synthetic captions (stage 1) and image + text-only instructions (stage 2), of fixed lengths."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = (rng.random((image_size, image_size, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    long = args.stage2_tokens + 64  # longer than max_length: truncation makes every sample exactly max_length
    with open(folder / "captions.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"image": f"img{i % 8}.png", "caption": _text(args.stage1_caption, i)}) + "\n")
    with open(folder / "instruct.jsonl", "w") as f:
        for i in range(n):
            text = f"Human: <image>\nHuman: Describe the image in detail.\nAI: {_text(long, i)}"
            f.write(json.dumps({"image": [f"img{i % 8}.png"], "text": text}) + "\n")
    with open(folder / "text.jsonl", "w") as f:
        for i in range(n):
            question = _text(min(200, args.stage2_tokens // 4), i)  # short enough to leave room for the answer
            f.write(json.dumps({"text": f"Human: {question}\nAI: {_text(long, i + 1)}"}) + "\n")


@contextlib.contextmanager
def models_built_on(device: str):
    """``owl.train.setup.build_model`` with its random init on ``device`` (seconds on a GPU, minutes on a CPU)."""
    import torch

    import owl.train.setup as train_setup

    original = train_setup.build_model

    def build(*a, **kw):
        with torch.device(device):
            return original(*a, **kw)

    train_setup.build_model = build
    try:
        yield
    finally:
        train_setup.build_model = original


def _modes(obj: Any) -> str:
    """``vision frozen, abstractor full, ...`` for a Trainable or LoraSpec dataclass."""
    import dataclasses

    return ", ".join(f"{k} {','.join(v) if isinstance(v, list) else v}" for k, v in dataclasses.asdict(obj).items())


# ------------------------------------------------------------------------------------------- the plan


def _meta_model(preset_name: str, cfg: Any) -> Any:
    """The model of ``preset_name`` with ``cfg``'s trainable layout, on the meta device: shapes, no weights."""
    import torch

    from owl.config import preset
    from owl.models import build_model
    from owl.train.trainable import apply_trainable

    with torch.device("meta"):
        model, _, _ = build_model(preset(preset_name))
        apply_trainable(model, cfg.trainable, cfg.lora)
    return model


def _planned_batch(stage: str, args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """A batch of the planned shape (targets: the caption / answer after the prompt), for the FLOPs count."""
    import torch

    v = config.num_visual_tokens
    if stage == "stage1":
        b, prompt, t = args.stage1_batch, 1 + 8 + v + 5, 1 + 8 + v + 5 + args.stage1_caption + 1
    else:
        b, prompt, t = args.stage2_batch, 1 + 8 + v + 40, args.stage2_tokens
    labels = torch.full((b, t), -100)
    labels[:, prompt:] = 1
    n_images = b if stage == "stage1" else b // 2
    size = config.vision.image_size
    return {
        "input_ids": torch.empty(b, t, device="meta"),
        "labels": labels,
        "pixel_values": torch.empty(n_images, 3, size, size, device="meta"),
    }


def plan(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """What the run does, with parameter counts and expected FLOPs per step, computed without any weights."""
    from owl.bench.flops import step_flops
    from owl.config import preset
    from owl.models import count_parameters
    from owl.train.trainable import module_of

    config = preset(args.preset)
    llm = config.llm.hf_config
    out: dict[str, Any] = {
        "preset": args.preset,
        "shape": {
            "vision": {
                "backbone": config.vision.backbone,
                "image_size": config.vision.image_size,
                "patch_size": config.vision.patch_size,
                "hidden_size": config.vision.hidden_size,
                "num_layers": config.vision.num_layers,
            },
            "abstractor": {
                "hidden_size": config.abstractor.hidden_size,
                "num_layers": config.abstractor.num_layers,
                "num_queries": config.abstractor.num_queries,
                "visual_tokens": config.num_visual_tokens,
            },
            "llm": {
                k: llm.get(k)
                for k in (
                    "model_type",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "vocab_size",
                )
            },
        },
        "phases": {},
    }
    for stage in ("stage1", "stage2"):
        cfg = load_config(stage, args, tmp / "data", tmp)
        model = _meta_model(args.preset, cfg)
        counts = count_parameters(model, group=module_of)
        batch = _planned_batch(stage, args, model.config)
        out["phases"][stage] = {
            "recipe": f"configs/mplug-owl-7b/{stage}.yaml",
            "overrides": _recipe_overrides(stage, args, tmp / "data", tmp),
            "trainable": _modes(cfg.trainable),
            "lora": _modes(cfg.lora) if cfg.uses_lora else None,
            "batch": {"batch_size": cfg.train.batch_size, "tokens": int(batch["input_ids"].shape[1])},
            "parameters": counts,
            "flops_per_step": step_flops(model, batch),
            "lr": cfg.optim.lr,
            "gradient_checkpointing": cfg.train.gradient_checkpointing,
        }
    out["phases"]["generate"] = {"batch": args.gen_batch, "max_new_tokens": args.gen_tokens, "dtype": "bf16"}
    return out


def print_plan(p: dict[str, Any], args: argparse.Namespace) -> None:
    s = p["shape"]
    print(
        f"gpu bench plan: preset {p['preset']}, phases {','.join(args.only)}, {args.warmup} warm-up + "
        f"{args.steps} timed steps per stage"
    )
    print(
        f"  vision: {s['vision']['backbone']} {s['vision']['image_size']} px / patch {s['vision']['patch_size']}, "
        f"width {s['vision']['hidden_size']}, {s['vision']['num_layers']} layers"
    )
    a = s["abstractor"]
    print(
        f"  abstractor: width {a['hidden_size']}, {a['num_layers']} layers, {a['num_queries']} queries -> "
        f"{a['visual_tokens']} visual tokens per image"
    )
    l = s["llm"]  # noqa: E741
    print(
        f"  llm: {l['model_type']} hidden {l['hidden_size']}, {l['num_hidden_layers']} layers, "
        f"{l['num_attention_heads']} heads, intermediate {l['intermediate_size']}, vocab {l['vocab_size']}"
    )
    for stage in ("stage1", "stage2"):
        ph = p["phases"][stage]
        print(
            f"{stage}: {ph['recipe']} (trainable: {ph['trainable']}; lr {ph['lr']:g}"
            f"{'; lora: ' + ph['lora'] if ph['lora'] else ''}; gradient checkpointing "
            f"{ph['gradient_checkpointing']})"
        )
        print(f"  batch {ph['batch']['batch_size']} x {ph['batch']['tokens']} tokens; parameters (trainable / total):")
        for module, c in ph["parameters"].items():
            print(f"    {module:<11}{c['trainable']:>16,}{c['total']:>16,}")
        f = ph["flops_per_step"]
        print(
            "  model FLOPs per step: "
            + ", ".join(f"{k} {f[k]['total'] / 1e12:.3g} T" for k in ("vision", "abstractor", "llm"))
            + f"; total {f['total']['total'] / 1e12:.4g} TFLOP (forward {f['total']['forward'] / 1e12:.4g})"
        )
        print("  command: owl.bench.train.bench_config(load_train_config(recipe, overrides)), overrides:")
        for o in ph["overrides"]:
            print(f"    {o}")
    g = p["phases"]["generate"]
    print(
        f"generate: owl.generation.generate on the preset in {g['dtype']} on the GPU, {g['batch']} prompts with an "
        f"image, greedy, max_new_tokens {g['max_new_tokens']} (one warm-up call, then one timed)"
    )
    print(f"peak: owl.bench.peak.gemm_tflops({args.peak_size}, bf16 and fp32, 1 s, cuda)")
    print(f"writes {Path(args.out) / 'gpu.json'} and gpu.md")


# -------------------------------------------------------------------------------------------- the run


def _collate_on(device: str):
    from owl.processing import OwlProcessor

    def collate(self, items, padding_side="right"):
        batch = OwlProcessor.collate(self, items, padding_side)
        return {k: v.to(device) if v is not None else None for k, v in batch.items()}

    return collate


def bench_generate(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Batched greedy generation throughput: new tokens per second over ``gen_batch`` prompts with an image."""
    import torch
    from PIL import Image

    from owl.config import preset
    from owl.conversation import Message, Sample
    from owl.generation import GenerationOptions, generate
    from owl.models import build_model
    from owl.processing import OwlProcessor
    from owl.tokenizer import byte_tokenizer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device itself: seconds, not a CPU build
        model, config, _ = build_model(preset(args.preset))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = model.to(dtype).eval()
    build_s = time.perf_counter() - t0
    proc = OwlProcessor.from_config(config, byte_tokenizer())
    # owl.generation collates on the CPU and does not move the batch to the model's device (it has only run on
    # CPUs so far): here the processor's batches go to the device.
    proc.__class__ = type("OnDeviceProcessor", (OwlProcessor,), {"collate": _collate_on(device)})
    image = Image.new("RGB", (config.vision.image_size,) * 2, "red")
    prompts = [
        Sample([Message("user", f"<image>\nDescribe the image in detail, please ({i}).")], [image])
        for i in range(args.gen_batch)
    ]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    generate(model, proc, prompts, GenerationOptions(max_new_tokens=4), batch_size=args.gen_batch)  # warm-up
    sync()
    t = time.perf_counter()
    done = generate(model, proc, prompts, GenerationOptions(max_new_tokens=args.gen_tokens), batch_size=args.gen_batch)
    sync()
    dt = time.perf_counter() - t
    new = sum(c.completion_tokens for c in done)
    result = {
        "batch": args.gen_batch,
        "dtype": str(dtype).replace("torch.", ""),
        "max_new_tokens": args.gen_tokens,
        "prompt_tokens": sum(c.prompt_tokens for c in done) / len(done),
        "new_tokens": new,
        "seconds": dt,
        "new_tokens_per_s": new / dt,
        "s_per_decode_step": dt / max(max(c.completion_tokens for c in done), 1),
        "build_s": build_s,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def _save(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"GPU bench on {result['machine'].get('gpu', result['machine']['cpu'])}, preset {result['preset']}", ""]
    lines += [f"peak {k}: {v['tflops']:.4g} TFLOP/s" for k, v in result["peak"].items()]
    lines += ["", "| stage | batch x tokens | s/step | samples/s | tokens/s | TFLOP/s | MFU | GPU MiB |"]
    lines += ["|---|---|---:|---:|---:|---:|---:|---:|"]
    for stage in ("stage1", "stage2"):
        r = result.get(stage)
        if r:
            lines.append(
                f"| {stage} | {r['batch_size']} x {r['tokens_per_step']['padded'] / r['batch_size']:.0f} "
                f"| {r['step_s']['median']:.3f} | {r['samples_per_s']:.1f} | {r['tokens_per_s']['real']:,.0f} "
                f"| {r['tflops']:.4g} | {r['mfu']:.1%} | {r['gpu_peak_mib'] or 0:,.0f} |"
            )
    g = result.get("generate")
    if g:
        lines += [
            "",
            f"generate: {g['batch']} prompts x {g['max_new_tokens']} new tokens ({g['dtype']}): "
            f"{g['new_tokens_per_s']:,.0f} new tokens/s, {g['s_per_decode_step'] * 1e3:.1f} ms per decode step",
        ]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    from owl.bench.peak import gemm_tflops, machine
    from owl.bench.train import bench_config
    from owl.config import preset

    out = Path(args.out)
    result: dict[str, Any] = {"machine": machine(), "preset": args.preset, "args": vars(args), "peak": {}}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        result["peak"][name] = gemm_tflops(args.peak_size, dtype, 1.0, device) | {"n": args.peak_size}
        print(f"peak {name}: {result['peak'][name]['tflops']:.4g} TFLOP/s", flush=True)
    # bench_config looks the peak up by the run's device: "cuda" or "cuda:0", as accelerate names it.
    peaks = {f"{k}@{d}": v for k, v in result["peak"].items() for d in (device, f"{device}:0")}
    with tempfile.TemporaryDirectory(prefix="owl-gpu-bench-") as tmp:
        data = Path(tmp) / "data"
        write_data(data, args, preset(args.preset).vision.image_size)
        for stage in ("stage1", "stage2"):
            if stage not in args.only:
                continue
            print(f"{stage}: building the model and the run (random init, as owl train does) ...", flush=True)
            t0 = time.perf_counter()
            cfg = load_config(stage, args, data, Path(tmp))
            with models_built_on(device):
                r = bench_config(cfg, args.steps, args.warmup, peaks, args.peak_size, lambda s: print(s, flush=True))
            result[stage] = r | {"wall_s": time.perf_counter() - t0}
            print(f"{stage}: {r['step_s']['median']:.3f} s/step, {r['tflops']:.4g} TFLOP/s, MFU {r['mfu']:.1%}")
            _save(out, result)
    if "generate" in args.only:
        print("generate: building the model on the device ...", flush=True)
        result["generate"] = g = bench_generate(args, device)
        print(f"generate: {g['new_tokens_per_s']:,.0f} new tokens/s ({g['new_tokens']} in {g['seconds']:.2f} s)")
    _save(out, result)
    print(f"written to {out / 'gpu.json'}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    if args.dry_run:
        print_plan(plan(args, Path("$TMP")), args)  # $TMP: the run's scratch folder, made when it runs
        return 0
    if torch.cuda.is_available():
        device = "cuda"
    elif args.allow_cpu:
        device = "cpu"
    else:
        print(
            "gpu_bench: error: no CUDA device (torch.cuda.is_available() is False); --dry-run shows the plan",
            file=sys.stderr,
        )
        return 2
    run(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
