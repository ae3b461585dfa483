"""Load test of `owl serve` on loopback: does the server hold, and does it stay the same size, under load?

Starts a real `owl serve` process on 127.0.0.1 with a random tiny model (or --model), then, all bounded in requests
and time and stopping by itself:

1. **rounds** (3 by default): ``--clients`` concurrent clients (64) send ``--requests`` requests (1024) in all
   per round, mixed: half streamed (server-sent events), half plain JSON, a third with one image (a PNG data
   URL), answer lengths drawn from 8-48 tokens, some sampled. Per round: count of 5xx (goal 0), other errors,
   p50/p99 latency, requests/s, generated tokens/s, and the server's peak RSS sampled every 50 ms from /proc
   (bounded: a later round's peak must not grow beyond the first's by more than ``--rss-slack-mib``).
2. **overload**: ``--overload`` requests at once, beyond the server's running + queue capacity: the excess must be
   answered 503 with Retry-After (not a crash, not a 500), and the server must answer normally afterwards.
3. **disconnects**: 16 streaming clients read their first chunk and hang up; their batch slots must be free
   (``running`` and ``queue_length`` 0 in /metrics) within 5 s, and a request after them must succeed.
4. **SIGTERM**: 12 long requests in flight (half streamed), then SIGTERM: each must finish with its whole answer
   within the grace period, new connections must be refused, and the process must exit 0.

    python benchmarks/load.py --json benchmarks/results/load.json

Loopback only; about 2-4 minutes on 2 CPU cores with the tiny model. Run it alone: it measures time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 5  # owl.serve.server.GRACEFUL_SHUTDOWN_S
OWL = [sys.executable, "-m", "owl.cli"]


class RssSampler:
    """Peak resident memory of a process, sampled from /proc every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every, self.peak_kib = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self._read())
            time.sleep(self.every)

    def take_peak(self) -> float:
        """The peak since the last call, in MiB (and start a new window)."""
        peak, self.peak_kib = self.peak_kib, self._read()
        return round(peak / 1024, 1)

    def stop(self) -> None:
        self._stop.set()


def image_url(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_body(rng: random.Random, images: list[str], long: bool = False) -> dict:
    content: list[dict] = [{"type": "text", "text": rng.choice(["Describe it.", "What is this?", "Say hello."])}]
    if rng.random() < 1 / 3:
        content.insert(0, {"type": "image_url", "image_url": {"url": rng.choice(images)}})
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 160 if long else rng.randint(8, 48),
        "stream": rng.random() < 0.5,
    }
    if rng.random() < 0.3:
        body.update(temperature=0.8, seed=rng.randint(0, 10**6))
    else:
        body["temperature"] = 0
    return body


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """Send one chat completion; returns status, latency, tokens and whether the answer arrived whole."""
    start = time.perf_counter()
    out = {"status": 0, "stream": body["stream"], "latency": 0.0, "tokens": 0, "complete": False, "error": ""}
    try:
        if body["stream"]:
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                out["status"] = r.status_code
                chunks = []
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        chunks.append(line[6:])
                out["complete"] = r.status_code == 200 and chunks[-1:] == ["[DONE]"]
                out["tokens"] = sum(1 for c in chunks[1:-1] if '"content"' in c)
        else:
            r = await client.post(url + "/v1/chat/completions", json=body)
            out["status"] = r.status_code
            if r.status_code == 200:
                data = r.json()
                out["tokens"] = data["usage"]["completion_tokens"]
                out["complete"] = data["choices"][0]["finish_reason"] in ("stop", "length")
            else:
                out["error"] = r.json().get("error", {}).get("code", "")
                out["retry_after"] = r.headers.get("retry-after")
    except httpx.HTTPError as e:
        out["error"] = type(e).__name__
    out["latency"] = time.perf_counter() - start
    return out


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


async def a_round(url: str, clients: int, total: int, seed: int, images: list[str]) -> tuple[list[dict], float]:
    rng = random.Random(seed)
    bodies = [request_body(rng, images) for _ in range(total)]
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                results.append(await one_request(client, url, queue.get_nowait()))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return results, time.perf_counter() - start


def summarise(results: list[dict], seconds: float) -> dict:
    ok = [r for r in results if r["status"] == 200 and r["complete"]]
    return {
        "requests": len(results),
        "ok": len(ok),
        "http_5xx": sum(1 for r in results if r["status"] >= 500),
        "other_errors": sum(1 for r in results if r["status"] != 200 and r["status"] < 500),
        "incomplete": sum(1 for r in results if r["status"] == 200 and not r["complete"]),
        "streamed": sum(1 for r in results if r["stream"]),
        "p50_s": pct([r["latency"] for r in ok], 50),
        "p99_s": pct([r["latency"] for r in ok], 99),
        "requests_per_s": round(len(ok) / seconds, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / seconds, 1),
        "seconds": round(seconds, 2),
    }


async def overload(url: str, n: int, images: list[str]) -> dict:
    rng = random.Random(1)
    bodies = [dict(request_body(rng, images, long=True), stream=False) for _ in range(n)]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        results = await asyncio.gather(*(one_request(client, url, b) for b in bodies))
        after = await one_request(client, url, dict(request_body(rng, images), stream=False))
    by_status: dict[str, int] = {}
    for r in results:
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
    busy = [r for r in results if r["status"] == 503]
    return {
        "sent_at_once": n,
        "by_status": by_status,
        "503_with_retry_after": sum(1 for r in busy if r.get("retry_after") and r["error"] == "server_busy"),
        "http_500": sum(1 for r in results if r["status"] == 500 or r["status"] > 503),
        "request_after_ok": after["status"] == 200,
    }


async def metrics(client: httpx.AsyncClient, url: str) -> dict:
    return (await client.get(url + "/metrics")).json()


async def disconnects(url: str, images: list[str]) -> dict:
    rng = random.Random(2)
    async with httpx.AsyncClient(timeout=60) as client:

        async def leave_early() -> None:
            body = dict(request_body(rng, images, long=True), stream=True, max_tokens=400)
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if '"content"' in line:
                        break  # hang up after the first chunk

        await asyncio.gather(*(leave_early() for _ in range(16)))
        start = time.perf_counter()
        while (m := await metrics(client, url))["running"] or m["queue_length"]:
            if time.perf_counter() - start > 5:
                break
            await asyncio.sleep(0.02)
        freed = time.perf_counter() - start
        after = await one_request(client, url, dict(request_body(rng, images), stream=False))
    return {
        "clients": 16,
        "slots_free_after_s": round(freed, 3),
        "freed": not (m["running"] or m["queue_length"]),
        "request_after_ok": after["status"] == 200,
    }


async def sigterm(url: str, proc: subprocess.Popen, images: list[str]) -> dict:
    rng = random.Random(3)
    bodies = [dict(request_body(rng, images), stream=i % 2 == 0, temperature=0, max_tokens=400) for i in range(12)]
    async with httpx.AsyncClient(timeout=60) as client:
        tasks = [asyncio.ensure_future(one_request(client, url, b)) for b in bodies]
        start = time.perf_counter()
        while (await metrics(client, url))["running"] < 6 and time.perf_counter() - start < 10:
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        await asyncio.sleep(0.2)
        try:
            await httpx.AsyncClient(timeout=2).get(url + "/health")
            refused = False
        except httpx.HTTPError:
            refused = True
        results = await asyncio.gather(*tasks)
        finished_s = time.perf_counter() - t0
    code = await asyncio.to_thread(proc.wait, 30)
    return {
        "in_flight": len(bodies),
        "completed_whole": sum(1 for r in results if r["status"] == 200 and r["complete"]),
        "tokens_answered": sum(r["tokens"] for r in results),
        "statuses": sorted({r["status"] for r in results}),
        "all_finished_within_s": round(finished_s, 2),
        "new_connections_refused": refused,
        "exit_code": code,
        "exit_after_s": round(time.perf_counter() - t0, 2),
    }


def start_server(model: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [*OWL, "serve", str(model), "--port", "0", "--max-running", str(args.max_running),
           "--max-queue", str(args.max_queue), "--max-tokens", "512"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        raise SystemExit(f"owl serve did not start: {line!r}; see {log}")
    return proc, line.split(" on ", 1)[1].split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: a random tiny one)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=1024, help="requests per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--overload", type=int, default=240, help="requests sent at once in the overload phase")
    ap.add_argument("--max-running", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--rss-slack-mib", type=float, default=32.0, help="allowed peak-RSS growth over round 1")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="owl-load-"))
    model = Path(args.model) if args.model else work / "tiny"
    if not args.model:
        subprocess.run([*OWL, "new", "--preset", "tiny", "--out", str(model), "--tokenizer", "byte"], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    proc, url = start_server(model, args, work / "serve.log")
    rss = RssSampler(proc.pid)
    images = [image_url(i) for i in range(4)]
    report: dict = {"model": str(model) if args.model else "random tiny (owl new --preset tiny)", "url": url,
                    "settings": {k: getattr(args, k) for k in ("clients", "requests", "rounds", "overload",
                                                               "max_running", "max_queue")}}  # fmt: skip
    try:
        rss.take_peak()
        report["idle_rss_mib"] = round(rss._read() / 1024, 1)
        rounds = []
        for i in range(args.rounds):
            results, seconds = asyncio.run(a_round(url, args.clients, args.requests, 100 + i, images))
            rounds.append({"round": i + 1, **summarise(results, seconds), "peak_rss_mib": rss.take_peak()})
            print(json.dumps(rounds[-1]), flush=True)
        report["rounds"] = rounds
        report["rss_growth_mib"] = round(max(r["peak_rss_mib"] for r in rounds[1:]) - rounds[0]["peak_rss_mib"], 1) \
            if len(rounds) > 1 else 0.0  # fmt: skip
        report["overload"] = asyncio.run(overload(url, args.overload, images))
        report["overload"]["peak_rss_mib"] = rss.take_peak()
        print(json.dumps(report["overload"]), flush=True)
        report["disconnects"] = asyncio.run(disconnects(url, images))
        print(json.dumps(report["disconnects"]), flush=True)
        report["sigterm"] = asyncio.run(sigterm(url, proc, images))
        print(json.dumps(report["sigterm"]), flush=True)
    finally:
        rss.stop()
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    r, term = report, report["sigterm"]
    report["pass"] = {
        "no_errors_in_rounds": all(x["http_5xx"] + x["other_errors"] + x["incomplete"] == 0 for x in r["rounds"]),
        "rss_bounded": r["rss_growth_mib"] <= args.rss_slack_mib,
        "overload_503_not_500": r["overload"]["http_500"] == 0 and r["overload"]["by_status"].get("503", 0) > 0
        and r["overload"]["request_after_ok"],
        "disconnects_free_slots": r["disconnects"]["freed"] and r["disconnects"]["request_after_ok"],
        # uvicorn re-raises the captured SIGTERM once it has shut down cleanly, so -15 is a clean exit too
        "sigterm_drains": term["completed_whole"] == term["in_flight"] and term["exit_code"] in (0, -signal.SIGTERM)
        and term["exit_after_s"] <= GRACE_S + 5,
    }  # fmt: skip
    print(json.dumps(report["pass"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    sys.exit(0 if all(report["pass"].values()) else 1)


if __name__ == "__main__":
    main()
