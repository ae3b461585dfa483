"""SIGTERM to a real `owl serve` process with requests in flight: it stops taking connections, finishes every
in-flight answer whole (streamed and not) within the grace period, then exits. A deploy that restarts the server
must not cut answers off halfway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from owl.models import save_pretrained
from owl.serve.server import GRACEFUL_SHUTDOWN_S
from tests.serve.models import make

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 200


def _answer(url: str, stream: bool, out: list) -> None:
    """Appends (status, text, finish_reason) of one greedy answer; a stream cut off before [DONE] has finish None."""
    body = {
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": TOKENS,
        "stream": stream,
        "temperature": 0,
    }
    with httpx.Client(timeout=60) as c:
        if not stream:
            r = c.post(url + "/v1/chat/completions", json=body)
            choice = r.json()["choices"][0] if r.status_code == 200 else {"message": {"content": r.text}}
            out.append((r.status_code, choice["message"]["content"], choice.get("finish_reason")))
            return
        with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        chunks = [json.loads(x)["choices"][0] for x in lines if x != "[DONE]"]
        finish = chunks[-1]["finish_reason"] if lines[-1:] == ["[DONE]"] else None
        out.append((r.status_code, "".join(c["delta"].get("content", "") for c in chunks), finish))


def test_sigterm_finishes_in_flight_answers_then_exits(tmp_path: Path) -> None:
    model, processor = make("llama", seed=3)
    save_pretrained(model, tmp_path / "m", tokenizer=processor.tokenizer)
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "owl.cli", "serve", str(tmp_path / "m"), "--port", "0", "--max-running", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        alone: list = []
        _answer(url, False, alone)  # the whole greedy answer, for comparison
        whole, results = alone[0], []
        threads = [threading.Thread(target=_answer, args=(url, i % 2 == 0, results)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(url + "/metrics").json()["running"] < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        time.sleep(0.3)
        refused = False
        try:
            httpx.get(url + "/health", timeout=2)
        except httpx.HTTPError:
            refused = True
        for t in threads:
            t.join(GRACEFUL_SHUTDOWN_S + 30)
        code = proc.wait(GRACEFUL_SHUTDOWN_S + 10)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert refused, "the server still took a new connection after SIGTERM"
    assert whole[0] == 200 and len(whole[1]) > TOKENS // 2, f"too short an answer to be in flight at SIGTERM: {whole}"
    assert results == [whole] * 6, results
    assert code in (0, -signal.SIGTERM) and took < GRACEFUL_SHUTDOWN_S + 5
