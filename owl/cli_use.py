"""The ``owl`` commands that use a trained model: chat, generate, serve, convert, merge-lora, export.

Split from :mod:`owl.cli` (which keeps ``main``, the error handling and the building and training commands) so
each file has one job; ``owl.cli.build_parser`` calls :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from owl.errors import ConfigError


def cmd_convert(args: argparse.Namespace) -> None:
    from owl.convert.mplug_owl import from_mplug_owl, to_mplug_owl

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    if args.direction == "from-mplug-owl":
        config = from_mplug_owl(args.src, out)
        llm = config.llm.hf_config["model_type"]
        print(f"wrote {out} (mPLUG-Owl with {llm}; try: owl chat {out} --image IMG --message 'Describe the image.')")
    else:
        to_mplug_owl(args.src, out)
        print(f"wrote {out} (mPLUG-Owl layout: loads with the reference's MplugOwlForConditionalGeneration)")


def generation_options(args: argparse.Namespace):  # noqa: ANN201
    """The generation flags (``add_generation_flags``) as options; unset ones stay unset (the model's file fills)."""
    from owl.generation import GenerationOptions

    do_sample = args.do_sample
    if do_sample is None and args.temperature is not None:
        do_sample = args.temperature > 0  # as before: --temperature 0 is greedy, a positive one samples
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        do_sample=do_sample,
        temperature=args.temperature if do_sample else None,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


def cmd_chat(args: argparse.Namespace) -> None:
    from owl.chat import chat

    chat(
        args.model,
        images=args.image or [],
        message=args.message,
        options=generation_options(args),
        show_settings=args.show_settings,
        device=args.device,
        dtype=args.dtype,
        stream=not args.no_stream,
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from owl.batch import generate_file

    generate_file(
        args.model,
        args.input,
        args.output,
        batch_size=args.batch_size,
        image_root=args.image_root,
        options=generation_options(args),
        limit=args.limit,
        retry_errors=args.retry_errors,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
        show_settings=args.show_settings,
    )


def cmd_merge_lora(args: argparse.Namespace) -> None:
    from owl.export import merge_lora

    print(f"wrote {merge_lora(args.model, args.out, force=args.force)} (LoRA merged into the weights)")


def cmd_export(args: argparse.Namespace) -> None:
    from owl.export import export_llm, export_vision_abstractor

    export = export_llm if args.part == "llm" else export_vision_abstractor
    names = export(args.model, args.out, force=args.force)
    note = ""
    if args.part == "llm" and "tokenizer_config.json" not in names:
        note = " (the model directory has no tokenizer, so neither has the export)"
    print(f"wrote {args.out}: {', '.join(names)}{note}")


def cmd_serve(args: argparse.Namespace) -> None:
    from owl.serve.server import run
    from owl.serve.settings import ServeSettings

    settings = ServeSettings(
        api_key=args.api_key or os.environ.get("OWL_API_KEY") or None,
        max_running=args.max_running,
        max_queue=args.max_queue,
        max_tokens=args.max_tokens,
        max_body_bytes=args.max_body_bytes,
        max_images=args.max_images,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        allow_remote_images=args.allow_remote_images,
        allow_local_images=args.allow_local_images,
        cors_origins=args.cors_origin or [],
    )
    run(args.model, args.host, args.port, settings, device=args.device, dtype=args.dtype, log_level=args.log_level)


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    """Generation settings, device and dtype: the same flags for ``owl chat`` and ``owl generate``."""
    p.add_argument(
        "--max-new-tokens", type=int, help="answer length limit (default: the model's generation_config.json, else 256)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="do_sample", action="store_const", const=False, help="greedy decoding")
    mode.add_argument("--sample", dest="do_sample", action="store_const", const=True, help="sample")
    p.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy, > 0 samples unless --greedy")
    p.add_argument("--top-k", type=int, help="when sampling: only among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, help="when sampling: nucleus threshold in (0, 1]")
    p.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    p.add_argument("--show-settings", action="store_true", help="print the generation settings in use to stderr")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16, fp16")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the commands that use a model: chat, generate, merge-lora, export, convert, serve."""
    c = sub.add_parser("chat", help="multi-turn chat with a model (images with /image PATH)")
    c.add_argument("model", help="model directory (or a training run's output directory)")
    c.add_argument("--image", action="append", help="image for the first message (repeatable)")
    c.add_argument("--message", help="ask one question, print the answer and exit")
    c.add_argument("--no-stream", action="store_true", help="print each answer when it is complete, not as it grows")
    add_generation_flags(c)
    c.set_defaults(func=cmd_chat, do_sample=None)

    g = sub.add_parser(
        "generate",
        help="answer every prompt of a JSONL file in batches, resumably (file in, file out)",
        description="One model load, batches grouped by prompt length. Input records: an id (else the line number), "
        "images, and a prompt/question/text, an instruction, or a conversation (LLaVA, ShareGPT, OpenAI messages, "
        "mPLUG Human:/AI: text); a trailing assistant answer becomes 'reference'. Output: one JSON line per record "
        "(id, answer, finish_reason, prompt_tokens, completion_tokens; or id, error, error_code). Ids already in "
        "OUTPUT are skipped, so a stopped run continues where it was.",
    )
    g.add_argument("model", help="model directory (or a training run's output directory)")
    g.add_argument("--input", required=True, help="JSON lines (or a JSON list) of prompts")
    g.add_argument("--output", required=True, help="JSON lines of answers; appended to, ids in it are skipped")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    g.add_argument("--image-root", help="what relative image paths resolve against (default: the input's folder)")
    g.add_argument("--limit", type=int, help="answer at most this many new records, then stop")
    g.add_argument("--retry-errors", action="store_true", help="redo the records OUTPUT has error lines for")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_flags(g)
    g.set_defaults(func=cmd_generate, do_sample=None)

    ml = sub.add_parser("merge-lora", help="fold a model's LoRA adapter into its weights: a plain model directory")
    ml.add_argument("model", help="model directory with an adapter/ (or a training run's output directory)")
    ml.add_argument("out", help="output model directory")
    ml.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ml.set_defaults(func=cmd_merge_lora)

    ex = sub.add_parser(
        "export",
        help="export a part for other tools: the LLM as a transformers directory, or the visual front end",
        description="--part llm: a plain transformers directory (AutoModelForCausalLM / AutoTokenizer, LoRA merged). "
        "--part vision-abstractor: vision tower + abstractor safetensors, a config JSON and a README on serving "
        "the visual tokens with another LLM runtime.",
    )
    ex.add_argument("model", help="model directory (or a training run's output directory)")
    ex.add_argument("out", help="output directory")
    ex.add_argument("--part", required=True, choices=["llm", "vision-abstractor"])  # owl.export.PARTS
    ex.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ex.set_defaults(func=cmd_export)

    cv = sub.add_parser("convert", help="released mPLUG-Owl checkpoints to owl model directories and back")
    cv.add_argument(
        "direction",
        choices=["from-mplug-owl", "to-mplug-owl"],
        help="from-mplug-owl: a released checkpoint directory (e.g. a local copy of MAGAer13/mplug-owl-llama-7b) "
        "-> an owl model directory; to-mplug-owl: an owl model directory (CLIP vision, LoRA merged) -> the "
        "reference's layout",
    )
    cv.add_argument("src", help="source directory")
    cv.add_argument("out", help="output directory (written atomically)")
    cv.add_argument("--force", action="store_true", help="replace OUT if it exists")
    cv.set_defaults(func=cmd_convert)

    from owl.serve.settings import ServeSettings as S  # the flags' defaults are the settings' own

    sv = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server (continuous batching) for a model",
        description="POST /v1/chat/completions (streaming too), GET /v1/models, /health, /metrics. Images arrive as "
        "data: URLs unless --allow-remote-images / --allow-local-images. API key: --api-key or OWL_API_KEY.",
    )
    sv.add_argument("model", help="model directory (or a training run's output directory; a LoRA adapter is served)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start)")
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: env OWL_API_KEY, else none)")
    sv.add_argument("--max-running", type=int, default=S.max_running, help="sequences decoded together at most")
    sv.add_argument("--max-queue", type=int, default=S.max_queue, help="waiting requests at most (then 503)")
    sv.add_argument("--max-tokens", type=int, default=S.max_tokens, help="largest max_tokens a request may ask for")
    sv.add_argument("--max-body-bytes", type=int, default=S.max_body_bytes, help="request body size cap (413)")
    sv.add_argument("--max-images", type=int, default=S.max_images, help="images per request at most")
    sv.add_argument("--max-image-bytes", type=int, default=S.max_image_bytes, help="encoded size cap per image")
    sv.add_argument("--max-image-pixels", type=int, help="pixel cap per image (default: the model's processor's)")
    sv.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (timeout, size cap)")
    sv.add_argument("--allow-local-images", metavar="DIR", help="read file:// or path image URLs inside DIR only")
    sv.add_argument("--cors-origin", action="append", help="allow browser requests from this origin (repeatable)")
    sv.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    sv.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16, fp16")
    sv.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sv.set_defaults(func=cmd_serve)
