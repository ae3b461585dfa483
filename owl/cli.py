"""The ``owl`` command. Thin: parses arguments and calls the library.

Errors a user can fix (an ``OwlError``: bad config key, missing file, unknown
preset) print as one line ``owl: error: ...`` with exit status 2; set
``OWL_DEBUG=1`` to see their traceback. Anything else is a bug (or the machine
running out of memory) and keeps its full traceback, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from owl.config import PRESETS, OwlConfig, preset
from owl.configtools import deep_merge, parse_overrides
from owl.errors import ConfigError, ConfigNotFound, OwlError


def resolve_config(name_or_dir: str, overrides: list[str] | None = None) -> tuple[OwlConfig, Path | None]:
    """A preset name, a model directory or a config file -> (config, model dir or None)."""
    path = Path(name_or_dir)
    model_dir = None
    if path.is_dir():
        from owl.models.checkpoint import CONFIG_NAME, check_model_dir

        model_dir = check_model_dir(path)
        config = OwlConfig.load(model_dir / CONFIG_NAME)
    elif path.suffix in (".json", ".yaml", ".yml") and path.exists():
        config = OwlConfig.load(path)
    elif name_or_dir in PRESETS:
        config = preset(name_or_dir)
    elif path.suffix or os.sep in name_or_dir:
        raise ConfigNotFound(
            f"{name_or_dir} not found (give a model directory, a config file or a preset: {', '.join(PRESETS)})"
        )
    else:
        config = preset(name_or_dir)  # raises with the list of presets
    if overrides:
        config = OwlConfig.from_dict(deep_merge(config.to_dict(), parse_overrides(overrides)))
    return config, model_dir


# ----------------------------------------------------------------------------- commands


def cmd_new(args: argparse.Namespace) -> None:
    import torch

    from owl.models import build_model, save_pretrained
    from owl.models.builders import align_special_tokens

    config, _ = resolve_config(args.preset, args.set)
    torch.manual_seed(args.seed)
    model, config, tokenizer = build_model(config, vision_from=args.vision_from, llm_from=args.llm_from)
    if args.tokenizer == "byte":
        from owl.tokenizer import byte_tokenizer

        tokenizer = byte_tokenizer()
    elif args.tokenizer:
        from transformers import AutoTokenizer

        if not Path(args.tokenizer).is_dir():
            raise ConfigNotFound(f"--tokenizer {args.tokenizer}: no such directory (a tokenizer directory or 'byte')")
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer is not None:  # pad/bos/eos agreed between tokenizer and LLM, recorded in the saved config
        align_special_tokens(model, tokenizer)
    save_pretrained(model, args.out, tokenizer=tokenizer)
    note = "" if tokenizer is not None else " (no tokenizer: pass --llm-from or --tokenizer to include one)"
    print(f"wrote {args.out}{note}")


def info_dict(name_or_dir: str) -> dict:
    """Parameter counts per module without allocating weights (meta device)."""
    import torch

    from owl.models import build_model, count_parameters

    config, model_dir = resolve_config(name_or_dir)
    with torch.device("meta"):
        model, config, _ = build_model(config)
    counts = count_parameters(model)
    return {
        "source": str(model_dir) if model_dir else name_or_dir,
        "parameters": {k: v["total"] for k, v in counts.items()},
        "trainable": {k: v["trainable"] for k, v in counts.items()},
        "visual_tokens_per_image": config.num_visual_tokens,
        "vision": {
            "backbone": config.vision.backbone,
            "image_size": config.vision.image_size,
            "tokens": model.vision.num_tokens,
            "width": model.vision.hidden_size,
        },
        "llm": {"model_type": config.llm.hf_config["model_type"], "hidden_size": config.llm.hidden_size},
        "template": config.processor.template,
    }


def cmd_info(args: argparse.Namespace) -> None:
    d = info_dict(args.model)
    if args.json:
        print(json.dumps(d, indent=2))
        return
    print(
        f"{d['source']}: {d['vision']['backbone']} vision ({d['vision']['image_size']} px, "
        f"{d['vision']['tokens']} tokens) -> abstractor -> {d['llm']['model_type']} LLM"
    )
    print(f"visual tokens per image: {d['visual_tokens_per_image']}")
    print(f"{'module':<12}{'parameters':>16}{'trainable':>16}")
    for k, v in d["parameters"].items():
        print(f"{k:<12}{v:>16,}{d['trainable'][k]:>16,}")


def cmd_train(args: argparse.Namespace) -> None:
    from owl.train.config import load_train_config
    from owl.train.loop import train

    train(load_train_config(args.config, args.overrides))


def cmd_demo(args: argparse.Namespace) -> None:
    from owl.world.demo import run_demo

    run_demo(
        args.profile,
        args.out or f"runs/demo{'' if args.profile == 'full' else '-' + args.profile}",
        args.seed,
        args.overrides,
    )


def cmd_world_build(args: argparse.Namespace) -> None:
    import dataclasses

    from owl.world.config import WorldSpec
    from owl.world.recipes import build_from_spec, load_world_spec

    spec = load_world_spec(args.spec) if args.spec else WorldSpec()
    flags = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(WorldSpec) if getattr(args, f.name, None) is not None
    }
    manifest = build_from_spec(args.out, dataclasses.replace(spec, **flags))
    print(f"wrote Owl-World to {args.out}: " + ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items()))


def cmd_world_eval(args: argparse.Namespace) -> None:
    from owl.models import load_model
    from owl.processing import OwlProcessor
    from owl.world.evaluate import evaluate_world
    from owl.world.report import table

    model, proc = load_model(args.model).eval(), OwlProcessor.from_pretrained(args.model)
    abilities = args.abilities.split(",") if args.abilities else None
    res = evaluate_world(model, proc, args.world, abilities=abilities, out=args.out, batch_size=args.batch_size)
    print(json.dumps(res["summary"], indent=1) if args.json else table(res["summary"]))


def cmd_world_ablation(args: argparse.Namespace) -> None:
    from owl.world.ablation import run_ablation

    seeds = tuple(int(x) for x in args.seeds.split(","))
    report = run_ablation(args.out, seeds, args.profile, args.overrides)
    print(Path(report).read_text())


def cmd_bench_peak(args: argparse.Namespace) -> None:
    from owl.bench.peak import markdown, run_peak

    if args.size < 16 or args.seconds <= 0:
        raise ConfigError(f"--size {args.size} must be >= 16 and --seconds {args.seconds} > 0")
    print(markdown(run_peak(args.out, args.size, args.seconds)), end="")
    print(f"written to {Path(args.out) / 'peak.json'}")


def cmd_bench_peers(args: argparse.Namespace) -> None:
    from owl.bench.peers import main as run_peers

    run_peers(args.llm, args.stages, args.modes, args.batch, args.rounds, args.image_size, args.out)


def _bench_world_recipe(profile: str, stage: str, overrides: list[str]):  # noqa: ANN202
    """A shipped Owl-World recipe on its world, built once into the cache (owl.bench may not import owl.world)."""
    from owl.world.recipes import load_recipe, load_world_spec, prepare_world, recipe_file, split_overrides

    world_overrides, rest = split_overrides(overrides)
    spec = load_world_spec(recipe_file(profile, "world.yaml"), world_overrides)
    root = Path(os.environ.get("OWL_CACHE", Path.home() / ".cache" / "owl")) / "bench-world" / profile
    return load_recipe(profile, stage, prepare_world(root, spec, progress=False), rest)


def cmd_bench_train(args: argparse.Namespace) -> None:
    from owl.bench.train import markdown, run_bench_train

    result = run_bench_train(
        args.recipe, args.out, args.steps, args.warmup, args.overrides, _bench_world_recipe, args.peak_size
    )
    print(markdown(result), end="")
    print(f"written to {Path(args.out) / 'train.json'}")


def cmd_bench_generate(args: argparse.Namespace) -> None:
    from owl.bench.generate import counts, markdown, run_bench_generate

    result = run_bench_generate(
        args.model, args.out, args.size, counts(args.batches, "--batches"), args.new_tokens, args.repeats,
        counts(args.clients, "--clients"), args.requests, args.serve_arg, args.device, args.dtype,
    )  # fmt: skip
    print(markdown(result), end="")
    print(f"written to {Path(args.out) / 'generate.json'}")


# ----------------------------------------------------------------------------- parser


def _world_defaults():  # noqa: ANN202
    from owl.world.config import WorldSpec

    return WorldSpec()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="owl", description="mPLUG-Owl-style multimodal LLMs: build, train, chat, eval.")
    sub = p.add_subparsers(dest="command", required=True)

    n = sub.add_parser("new", help="write a randomly initialised model directory")
    n.add_argument("--preset", required=True, help=f"a preset ({', '.join(PRESETS)}) or a config file")
    n.add_argument("--out", required=True, help="output model directory")
    n.add_argument("--vision-from", help="local HF CLIP/SigLIP directory (or EfficientNet .pth) for the vision tower")
    n.add_argument("--llm-from", help="local HF causal-LM directory or .gguf file for the LLM (and its tokenizer)")
    n.add_argument(
        "--tokenizer",
        help="a local tokenizer directory, or 'byte' for owl's byte tokenizer (default: the LLM's, with --llm-from)",
    )
    n.add_argument("--seed", type=int, default=0)
    n.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. abstractor.num_queries=32"
    )
    n.set_defaults(func=cmd_new)

    i = sub.add_parser("info", help="parameter counts per module (no weights allocated)")
    i.add_argument("model", help="a model directory, config file or preset name")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser(
        "train",
        help="run one training stage from a YAML recipe (resumes automatically)",
        description="Train one stage. Overrides use dotted keys: output_dir=runs/a optim.lr=3e-4 "
        "init_from=runs/stage1. Distributed: torchrun --nproc_per_node N -m owl.cli train ... "
        "or accelerate launch --config_file configs/accelerate/ddp.yaml -m owl.cli train ...",
    )
    t.add_argument("config", help="a training recipe, e.g. configs/tiny/stage1.yaml")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="the whole paradigm on Owl-World, end to end, with a report")
    d.add_argument(
        "--profile",
        default="full",
        choices=["full", "long", "quick"],  # owl.world.recipes.PROFILES
        help="full: SmolLM2-135M + pretrained CNN (10-15 min on 2 cores: steps fitted to the CPU); long: "
        "stage 1 for 38 min of training (750-2000 steps by CPU) at half the lr on an 8x8 feature grid, then 180 "
        "stage-2 steps (45-55 min), the model that begins to see; quick: tiny random LLM (<1 min)",
    )
    d.add_argument("--out", help="output directory (default runs/demo or runs/demo-quick)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides for both stages' recipes; stage1.KEY=VALUE or stage2.KEY=VALUE for one stage; "
        "world.KEY=VALUE for the world spec (e.g. world.n_eval=720 stage1.optim.lr=5e-4)",
    )
    d.set_defaults(func=cmd_demo)

    w = sub.add_parser("world", help="Owl-World: build data, evaluate a model").add_subparsers(
        dest="world_cmd", required=True
    )
    wb = w.add_parser("build", help="generate an Owl-World dataset")
    wb.add_argument("--out", required=True)
    wb.add_argument("--spec", help="a world spec YAML (e.g. configs/world/full/world.yaml); flags override it")
    for name in ("seed", "image_size", "n_captions", "n_captions_single", "n_instructions", "n_text", "n_eval"):
        wb.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            dest=name,
            help=f"default: the spec's, else {getattr(_world_defaults(), name)}",
        )
    wb.set_defaults(func=cmd_world_build)
    we = w.add_parser("eval", help="score a model on an Owl-World eval split")
    we.add_argument("model", help="model directory (or a training run's output directory)")
    we.add_argument("--world", required=True, help="Owl-World directory (with eval.jsonl)")
    we.add_argument("--out", help="write predictions.jsonl and scores.json here")
    we.add_argument("--abilities", help="comma-separated subset, e.g. colour,shape")
    we.add_argument("--batch-size", type=int, default=32)
    we.add_argument("--json", action="store_true")
    we.set_defaults(func=cmd_world_eval)

    wa = w.add_parser(
        "ablation",
        help="the paper's ablation in miniature (stage 1 only / stage 2 only / both / "
        "both without text-only data), several seeds; long",
    )
    wa.add_argument("--out", default="runs/ablation")
    wa.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    wa.add_argument("--profile", default="full", choices=["full", "long", "quick"])
    wa.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="world.KEY=V: the world spec; stage1.KEY=V / stage2.KEY=V: one stage's recipe; the rest: both",
    )
    wa.set_defaults(func=cmd_world_ablation)

    b = sub.add_parser("bench", help="measured figures: this machine's peak, training step, peers").add_subparsers(
        dest="bench_cmd", required=True
    )
    bp = b.add_parser("peak", help="measured GEMM throughput per precision (the denominator of MFU)")
    bp.add_argument("--out", default="runs/bench", help="writes peak.json and peak.md here")
    bp.add_argument("--size", type=int, default=2048, help="square matrix size n (2 n^3 FLOPs per GEMM)")
    bp.add_argument("--seconds", type=float, default=2.0, help="time spent per precision")
    bp.set_defaults(func=cmd_bench_peak)
    bq = b.add_parser("peers", help="owl's training step against LLaVA and BLIP-2 (same LLM, batch; random weights)")
    bq.add_argument("--llm", default="smollm2,tiny", help="comma-separated: smollm2 (135M shape), tiny (~17M)")
    bq.add_argument("--stages", default="1,2", help="1: vision + connector train; 2: connector + LoRA on the LLM")
    bq.add_argument("--modes", default="model-only,trainer", help="model-only: one plain loop; trainer: owl's own")
    bq.add_argument("--batch", type=int, help="samples per step (default: 2 for smollm2, 4 for tiny)")
    bq.add_argument("--rounds", type=int, help="timed round-robin rounds (default: 3 for smollm2, 5 for tiny)")
    bq.add_argument("--image-size", type=int, default=224, help="image side in pixels (a multiple of 14)")
    bq.add_argument("--out", default="runs/bench", help="writes peers.json and peers.md here")
    bq.set_defaults(func=cmd_bench_peers)
    bt = b.add_parser(
        "train",
        help="step time, tokens/s and MFU of training recipes through the real training step",
        description="Default recipes: world:full/stage1 world:full/stage2 configs/tiny/stage1.yaml "
        "configs/tiny/stage2.yaml (run from a checkout's root). A stage-2 recipe starts from a 1-step stage-1 run.",
    )
    bt.add_argument(
        "--recipe", action="append", help="a recipe YAML or world:<profile>/<stage> (repeatable; default: see above)"
    )
    bt.add_argument("--steps", type=int, default=5, help="timed optimizer steps per recipe")
    bt.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    bt.add_argument("--out", default="runs/bench", help="writes train.json and train.md here")
    bt.add_argument("--peak-size", type=int, default=2048, help="GEMM size n of the measured peak (MFU's denominator)")
    bt.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every recipe (world.KEY: world)")
    bt.set_defaults(func=cmd_bench_train)
    bg = b.add_parser(
        "generate",
        help="time to first token, decode tokens/s, batching gain and served throughput (greedy)",
        description="Through owl.generation.generate at each batch size, against a loop of batch-1 calls (greedy "
        "texts must match), and through a real `owl serve` with concurrent clients. Default model: a random one "
        "built in a temporary directory (--size).",
    )
    bg.add_argument("--model", help="model directory (default: a random --size model, its EOS never greedy)")
    bg.add_argument("--size", default="small", help="random model: tiny, small (3.4M LLM), medium (~85M)")
    bg.add_argument("--batches", default="1,4,8,16", help="comma-separated batch sizes")
    bg.add_argument("--new-tokens", type=int, default=64, help="new tokens per answer")
    bg.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median), after one warm-up")
    bg.add_argument("--clients", default="1,8,32", help="comma-separated concurrent clients of owl serve ('' skips)")
    bg.add_argument("--requests", type=int, default=2, help="requests each client sends back to back")
    bg.add_argument(
        "--serve-arg",
        action="append",
        help="an extra argument for `owl serve`, e.g. --serve-arg=--max-batch=8 (repeatable)",
    )
    bg.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    bg.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16, fp16")
    bg.add_argument("--out", default="runs/bench", help="writes generate.json and generate.md here")
    bg.set_defaults(func=cmd_bench_generate)

    from owl import cli_use

    cli_use.add_parsers(sub)
    from owl.eval.cli import add_eval_parser
    from owl.eval.rating_cli import add_parsers as add_rating_parsers

    add_rating_parsers(add_eval_parser(sub))  # owl eval owleval|vqa|mme|mmbench|world|rate|report|judge
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices are not for users
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("owl: interrupted", file=sys.stderr)
        return 130
    except OwlError as e:
        if os.environ.get("OWL_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"owl: error: {msg}", file=sys.stderr)
        return 2
    except Exception:  # a bug, not the user's doing: the whole traceback, exit 1
        import traceback

        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
