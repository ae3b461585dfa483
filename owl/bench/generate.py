"""`owl bench generate`: time to first token, decode speed, batching gain and served throughput, as paid.

Every figure goes through the code a user runs: :func:`owl.generation.generate` for the in-process rows, and a
real ``owl serve`` process spoken to over HTTP for the served rows, on one model directory (``--model``) or, by
default, a random model built in a temporary directory. Greedy decoding throughout, so that the batched texts can
be checked against one-at-a-time texts and every run decodes the same tokens.

* Per batch size (1, 4, 8, 16 prompts in one batch): time to first token is the wall time of ``generate`` with
  ``max_new_tokens=1`` (vision, abstractor, prefill and one token: when every prompt of the batch has its first
  token); decode tokens/s is the extra tokens over the extra time of the full-length call.
* Batched against a loop of batch-1 calls on the same prompts: the greedy texts must be identical (the command
  fails when they are not, after writing the report) and the throughput ratio is reported against the target
  (batch 8 >= 5x the loop).
* Served: ``owl serve`` in a subprocess (its own process, so the client threads do not share its interpreter),
  1, 8 and 32 concurrent clients (threads, httpx) each streaming requests with an image back to back; throughput
  is completion tokens (each stream's usage chunk) over the wall time of the whole load, and the time to first
  token is the client's wait for the first text. Target: 32 clients >= 4x one client.

A random model would hit its end-of-sequence token at random places, which makes the decode length (and so every
rate) an accident of the weights: the default model's EOS row of the output projection is zeroed, so greedy
decoding never picks it and every answer runs to ``max_new_tokens``. A ``--model`` directory is used as it is;
its rates count the tokens it really produced. Times are medians of ``repeats`` rounds after a warm-up round, the
calls of a comparison alternating within each round.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from owl.bench.peak import machine
from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.errors import ConfigError, OwlError
from owl.generation import Completion, GenerationOptions, generate

# Random default models: the tiny preset as it is, or with a wider, deeper LLM so a decode step is real work.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {
        "llm": {
            "hf_config": {
                "hidden_size": 256,
                "intermediate_size": 704,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
            }
        }
    },
    # ~85M LLM parameters: big enough that a decode step reads weights rather than paying per-step overhead, so
    # the batch shares what dominates a real model's step (the 3.4M "small" is all overhead on a CPU).
    "medium": {
        "llm": {
            "hf_config": {
                "hidden_size": 768,
                "intermediate_size": 2048,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "num_key_value_heads": 12,
            }
        },
    },
}
TARGET_BATCH8_SPEEDUP = 5.0  # batch 8 against a loop of batch-1 calls
TARGET_SERVER_SCALING = 4.0  # 32 concurrent clients against one
QUESTIONS = (
    "What is in the picture?",
    "Describe the image in one sentence.",
    "Which colours do you see, and where are they?",
    "Is there any text in this image? If so, read it out.",
    "How many objects are there?",
    "What might have happened just before this picture was taken?",
    "Write a short caption for this image, suitable for a newspaper.",
    "What is the dominant shape?",
)


class BenchMismatch(OwlError):
    """Batched greedy texts differ from one-at-a-time texts: the report is written, the command fails."""


# ------------------------------------------------------------------------------------------ model, prompts


def make_model_dir(path: str | Path, size: str = "small", seed: int = 0) -> Path:
    """A random model directory of ``size`` (:data:`SIZES`) with the byte tokenizer; its EOS is never greedy."""
    from owl.config import OwlConfig, preset
    from owl.configtools import deep_merge
    from owl.models import build_model, save_pretrained
    from owl.tokenizer import byte_tokenizer

    if size not in SIZES:
        raise ConfigError(f"--size {size!r} is unknown; use {', '.join(SIZES)}")
    torch.manual_seed(seed)
    config = OwlConfig.from_dict(deep_merge(preset("tiny").to_dict(), SIZES[size]))
    model, _, _ = build_model(config)
    tokenizer = byte_tokenizer()
    with torch.no_grad():  # logit exactly 0 for EOS: below the maximum of the others, so greedy runs to the limit
        model.causal_lm.get_output_embeddings().weight[tokenizer.eos_token_id].zero_()
    save_pretrained(model, path, tokenizer=tokenizer)
    return Path(path)


def bench_images(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` deterministic noise images of a few different sizes (the processor resizes them all)."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (80, 80), (48, 96)]
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in (sizes[i % 3] for i in range(n))]


def bench_prompts(n: int, seed: int = 0) -> list[Sample]:
    """``n`` single-image questions of different lengths (so a batch is left-padded as in real use)."""
    images = bench_images(n, seed)
    return [
        Sample([Message("user", f"{IMAGE_TOKEN}\n{QUESTIONS[i % len(QUESTIONS)]}" + " Please." * (i // 8))], [im])
        for i, im in enumerate(images)
    ]


def data_url(image: Image.Image) -> str:
    """An image as the ``data:`` URL an OpenAI client sends."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------------------------ in process


def _rounds(calls: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall seconds of each call over ``repeats`` rounds, after one untimed warm-up round, and each call's
    last result. The calls alternate within a round, so a busy spell on a shared machine hits all of them alike
    rather than one figure of a pair (a first-token time above its full-length time)."""
    results = {k: fn() for k, fn in calls.items()}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            t = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, results


def _tokens(completions: list[Completion]) -> int:
    return sum(c.completion_tokens for c in completions)


def bench_batches(
    model: torch.nn.Module,
    processor: Any,
    prompts: list[Sample],
    batches: list[int],
    new_tokens: int,
    repeats: int,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One row per batch size: the first ``b`` prompts in one batch, time to first token and decode rate."""
    rows = []
    for b in batches:
        batch = prompts[:b]
        sec, out = _rounds(
            {
                "first": partial(generate, model, processor, batch, GenerationOptions(max_new_tokens=1), b),
                "full": partial(generate, model, processor, batch, GenerationOptions(max_new_tokens=new_tokens), b),
            },
            repeats,
        )
        first, full, tokens = sec["first"], sec["full"], _tokens(out["full"])
        decode = (tokens - b) / (full - first) if full > first and tokens > b else float("nan")
        rows.append(
            {
                "batch": b,
                "ttft_s": first,
                "total_s": full,
                "completion_tokens": tokens,
                "prompt_tokens": sum(c.prompt_tokens for c in out["full"]),
                "decode_tokens_per_s": decode,
                "tokens_per_s": tokens / full,
            }
        )
        say(
            f"  batch {b:>2}: first token {first * 1e3:7.1f} ms, decode {decode:8.1f} tokens/s, "
            f"{tokens} tokens in {full:.3f} s ({tokens / full:.1f} tokens/s)"
        )
    return rows


def bench_loop_vs_batched(
    model: torch.nn.Module,
    processor: Any,
    prompts: list[Sample],
    batches: list[int],
    new_tokens: int,
    repeats: int,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The same prompts one at a time and in batches: throughput ratio, and whether the greedy texts agree.

    Each prompt of the loop is timed on its own, so the loop's figure for batch ``b`` is over the same first ``b``
    prompts as the batched call (later prompts are longer)."""
    options = GenerationOptions(max_new_tokens=new_tokens)
    n = max(batches)
    calls = {f"loop{i}": partial(generate, model, processor, [p], options, 1) for i, p in enumerate(prompts[:n])}
    calls |= {f"batch{b}": partial(generate, model, processor, prompts[:b], options, b) for b in batches if b > 1}
    sec, out = _rounds(calls, repeats)
    loop_s = [sec[f"loop{i}"] for i in range(n)]
    loop_out = [out[f"loop{i}"][0] for i in range(n)]
    loop_rate = _tokens(loop_out) / sum(loop_s)
    say(f"  batch-1 loop over {n} prompts: {sum(loop_s):.3f} s, {loop_rate:.1f} tokens/s")
    rows = []
    for b in batches:
        if b == 1:
            continue
        batched = out[f"batch{b}"]
        mismatched = [i for i, (x, y) in enumerate(zip(batched, loop_out[:b])) if x.text != y.text]
        rate = _tokens(batched) / sec[f"batch{b}"]
        base = _tokens(loop_out[:b]) / sum(loop_s[:b])
        rows.append(
            {
                "batch": b,
                "batched_s": sec[f"batch{b}"],
                "loop_s": sum(loop_s[:b]),
                "tokens_per_s": rate,
                "loop_tokens_per_s": base,
                "speedup": rate / base,
                "identical": not mismatched,
                "mismatched": mismatched,
            }
        )
        say(f"  batch {b:>2}: {rate:.1f} tokens/s = {rate / base:.2f}x the loop; texts identical: {not mismatched}")
    return {"loop_s": sum(loop_s), "loop_tokens_per_s": loop_rate, "prompts": n, "rows": rows}


# ------------------------------------------------------------------------------------------ served


def server_available() -> bool:
    """Whether this checkout has ``owl serve`` (the served rows need it)."""
    import importlib.util

    return importlib.util.find_spec("owl.serve.server") is not None


@contextmanager
def serve_process(model_dir: str | Path, extra: list[str] | None = None, timeout: float = 300) -> Iterator[str]:
    """``owl serve MODEL_DIR --port 0`` in a subprocess; yields the base URL it printed and always stops it."""
    import httpx

    cmd = [sys.executable, "-m", "owl.cli", "serve", str(model_dir), "--port", "0", *(extra or [])]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        try:
            deadline, url = time.monotonic() + timeout, None
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"owl serve exited with {proc.returncode}:\n{output()[-2000:]}")
                if url is None and (m := re.search(r" on (http://\S+) ", output())):
                    url = m.group(1)
                if url is not None:
                    try:
                        if httpx.get(url + "/health", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"owl serve was not ready within {timeout:.0f} s:\n{output()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _request(image: str, question: str, max_tokens: int) -> dict[str, Any]:
    """The body of one streamed chat request, in OpenAI's format (an image part and a text part)."""
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": question}]
    return {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _stream(http: Any, body: dict[str, Any]) -> tuple[float, int]:
    """Send one streamed request; (seconds to the first text, completion tokens from the usage chunk)."""
    t = time.perf_counter()
    first: float | None = None
    tokens: int | None = None
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"].get("message", "stream error"))
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - t
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return (float("nan") if first is None else first), tokens


def client_load(
    url: str,
    clients: int,
    requests_per_client: int,
    images: list[str],
    max_tokens: int,
    api_key: str | None = None,
) -> dict[str, Any]:
    """``clients`` threads each streaming ``requests_per_client`` chat requests back to back; tokens over wall time."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    firsts: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
            start.wait()
            for r in range(requests_per_client):
                i = k * requests_per_client + r
                body = _request(images[i % len(images)], QUESTIONS[i % len(QUESTIONS)], max_tokens)
                t = time.perf_counter()
                try:
                    first, n = _stream(http, body)
                except Exception as e:  # a failed request is reported, not fatal to the load
                    with lock:
                        errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
                    firsts.append(first)
                    tokens.append(n)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    nan = float("nan")
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "completion_tokens": sum(tokens),
        "tokens_per_s": sum(tokens) / wall,
        "latency_s": {"median": statistics.median(latencies) if latencies else nan, "max": max(latencies, default=nan)},
        "ttft_s": {"median": statistics.median(firsts) if firsts else nan, "max": max(firsts, default=nan)},
    }


def bench_server(
    model_dir: str | Path,
    clients: list[int],
    requests_per_client: int,
    new_tokens: int,
    prompts: int,
    serve_args: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The same kind of requests through a real ``owl serve`` at each concurrency; scaling against one client."""
    images = [data_url(im) for im in bench_images(prompts)]
    rows = []
    with serve_process(model_dir, serve_args) as url:
        client_load(url, 1, 1, images, new_tokens)  # warm-up: first-request costs are not throughput
        for c in clients:
            row = client_load(url, c, requests_per_client, images, new_tokens)
            rows.append(row)
            say(
                f"  {c:>2} clients: {row['requests']} requests, {row['completion_tokens']} tokens in "
                f"{row['wall_s']:.2f} s = {row['tokens_per_s']:.1f} tokens/s, median first token "
                f"{row['ttft_s']['median'] * 1e3:.0f} ms, median latency {row['latency_s']['median']:.2f} s"
                + (f", {len(row['errors'])} errors" if row["errors"] else "")
            )
    base = rows[0]["tokens_per_s"] if rows and rows[0]["clients"] == 1 else None
    for r in rows:
        r["scaling"] = r["tokens_per_s"] / base if base else None
    return {"rows": rows, "serve_args": serve_args or [], "requests_per_client": requests_per_client}


# ------------------------------------------------------------------------------------------ the command


def counts(text: str, flag: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (``""`` -> ``[]``); anything else is a one-line :class:`ConfigError`."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give comma-separated whole numbers, e.g. 1,8,32") from None


def run_bench_generate(
    model: str | Path | None = None,
    out: str | Path = "runs/bench",
    size: str = "small",
    batches: list[int] | None = None,
    new_tokens: int = 64,
    repeats: int = 3,
    clients: list[int] | None = None,
    requests_per_client: int = 2,
    serve_args: list[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every part, write ``generate.json`` and ``generate.md`` under ``out``, and return the result.

    ``model``: a model directory, or ``None`` for a random model of ``size`` in a temporary directory.
    ``clients``: the served concurrency levels (``[]`` skips the served rows; they are also skipped, with a note,
    when this checkout has no ``owl serve``). Raises :class:`BenchMismatch` after writing the report when batched
    greedy texts differ from one-at-a-time ones.
    """
    from owl.chat import resolve_device
    from owl.models import load_model
    from owl.processing import OwlProcessor

    batches = sorted(set(batches or [1, 4, 8, 16]))
    clients = [1, 8, 32] if clients is None else sorted(set(clients))
    if batches[0] < 1 or new_tokens < 2 or repeats < 1 or requests_per_client < 1 or (clients and clients[0] < 1):
        raise ConfigError(
            f"batch sizes {batches} and clients {clients} must be >= 1, --new-tokens {new_tokens} >= 2 (a first "
            f"token and a decoded one), --repeats {repeats} and --requests {requests_per_client} >= 1"
        )
    if size not in SIZES:
        raise ConfigError(f"--size {size!r} is unknown; use {', '.join(SIZES)}")
    dev, dt = resolve_device(device, dtype)
    with tempfile.TemporaryDirectory(prefix="owl-bench-generate-") as tmp:
        model_dir = Path(model) if model is not None else make_model_dir(Path(tmp) / "model", size)
        say(f"model: {model if model is not None else f'random {size} model (EOS never greedy)'} on {dev}")
        net = load_model(model_dir, dtype=dt).to(dev).eval()
        processor = OwlProcessor.from_pretrained(model_dir)
        params = sum(p.numel() for p in net.parameters())
        prompts = bench_prompts(max(batches))
        say("time to first token and decode rate per batch size:")
        rows = bench_batches(net, processor, prompts, batches, new_tokens, repeats, say)
        say("batched against a loop of batch-1 calls (greedy texts must be identical):")
        loop = bench_loop_vs_batched(net, processor, prompts, batches, new_tokens, repeats, say)
        del net
        served: dict[str, Any]
        if not clients:
            served = {"skipped": "no client counts asked for"}
        elif not server_available():
            served = {"skipped": "owl serve is not in this checkout"}
        else:
            say("served: owl serve in a subprocess, concurrent clients:")
            extra = [*(serve_args or []), "--device", device, "--dtype", dtype]
            served = bench_server(model_dir, clients, requests_per_client, new_tokens, max(batches), extra, say)
        if "skipped" in served:
            say(f"served rows skipped: {served['skipped']}")
    result = {
        "machine": machine(),
        "device": dev,
        "dtype": str(dt).removeprefix("torch."),
        "model": str(model) if model is not None else f"random {size} (owl.bench.generate.SIZES)",
        "parameters": params,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "batches": rows,
        "loop_vs_batched": loop,
        "served": served,
        "targets": _targets(loop, served),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "generate.md").write_text(markdown(result))
    bad = [r for r in loop["rows"] if not r["identical"]]
    if bad:
        raise BenchMismatch(
            "batched greedy texts differ from the batch-1 loop's at batch "
            + ", ".join(f"{r['batch']} (prompts {r['mismatched']})" for r in bad)
            + f"; see {out / 'generate.md'}"
        )
    return result


def _targets(loop: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """The two targets, measured value against goal (``None`` where that part did not run)."""
    b8 = next((r["speedup"] for r in loop["rows"] if r["batch"] == 8), None)
    rows = {r["clients"]: r for r in served.get("rows", [])}
    c32 = rows[32]["scaling"] if 32 in rows and 1 in rows else None
    return {
        "batch8_vs_loop": {"value": b8, "goal": TARGET_BATCH8_SPEEDUP, "met": None if b8 is None else b8 >= 5.0},
        "clients32_vs_1": {"value": c32, "goal": TARGET_SERVER_SCALING, "met": None if c32 is None else c32 >= 4.0},
    }


def _where(result: dict[str, Any]) -> str:
    m = result["machine"]
    if result["device"].startswith("cuda") and m.get("gpu"):
        return f"{m['gpu']} ({result['dtype']}; host {m['cpu']})"
    return f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads, {result['dtype']})"


def markdown(result: dict[str, Any]) -> str:
    """The report: machine, model, one table per part, the targets."""
    lines = [
        f"Generation on {_where(result)}, torch {result['machine']['torch']}; model: {result['model']} "
        f"({result['parameters'] / 1e6:.1f}M parameters); greedy, {result['new_tokens']} new tokens per answer, "
        f"one image per prompt; median of {result['repeats']} runs.",
        "",
        "| batch | time to first token | decode tokens/s | tokens/s overall | prompt tokens |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in result["batches"]:
        lines.append(
            f"| {r['batch']} | {r['ttft_s'] * 1e3:,.1f} ms | {r['decode_tokens_per_s']:,.1f} "
            f"| {r['tokens_per_s']:,.1f} | {r['prompt_tokens']:,} |"
        )
    loop = result["loop_vs_batched"]
    lines += [
        "",
        f"Batched against a loop of batch-1 `generate` calls on the same prompts (the whole loop: "
        f"{loop['loop_tokens_per_s']:,.1f} tokens/s over {loop['prompts']} prompts):",
        "",
        "| batch | batched tokens/s | loop tokens/s (same prompts) | speedup | greedy texts identical |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in loop["rows"]:
        same = "yes" if r["identical"] else f"**no** (prompts {r['mismatched']})"
        lines.append(
            f"| {r['batch']} | {r['tokens_per_s']:,.1f} | {r['loop_tokens_per_s']:,.1f} | {r['speedup']:.2f}x "
            f"| {same} |"
        )
    served = result["served"]
    lines += [""]
    if "skipped" in served:
        lines.append(f"Served: skipped ({served['skipped']}).")
    else:
        args = " ".join(served["serve_args"])
        lines += [
            f"Served through `owl serve` ({args}) in its own process; each client sends "
            f"{served['requests_per_client']} streamed requests back to back:",
            "",
            "| clients | requests | completion tokens | wall | tokens/s | vs 1 client | median time to first token "
            "| median latency | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in served["rows"]:
            scale = f"{r['scaling']:.2f}x" if r.get("scaling") else "-"
            lines.append(
                f"| {r['clients']} | {r['requests']} | {r['completion_tokens']:,} | {r['wall_s']:.2f} s "
                f"| {r['tokens_per_s']:,.1f} | {scale} | {r['ttft_s']['median'] * 1e3:,.0f} ms "
                f"| {r['latency_s']['median']:.2f} s | {len(r['errors'])} |"
            )
    t = result["targets"]

    def verdict(x: dict[str, Any]) -> str:
        if x["value"] is None:
            return "not measured"
        return f"{x['value']:.2f}x (goal >= {x['goal']:g}x: {'met' if x['met'] else '**missed**'})"

    lines += [
        "",
        f"Targets: batch 8 against the batch-1 loop {verdict(t['batch8_vs_loop'])}; 32 concurrent clients "
        f"against one {verdict(t['clients32_vs_1'])}.",
    ]
    return "\n".join(lines) + "\n"
