"""A real ``owl serve`` subprocess on a tiny model, started once for the module that asks for it, always stopped."""

from __future__ import annotations

import base64
import ctypes
import io
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from owl.models import save_pretrained
from tests.serve.models import make

API_KEY = "test-key-123"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    url: str
    model_dir: Path
    name: str
    key: str
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, timeout=60, **kw)

    def metrics(self) -> dict:
        import httpx

        return httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {self.key}"}, timeout=10).json()


def _die_with_parent() -> None:  # the server must not outlive a killed test run
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory) -> Path:
    """A tiny LLaMA-LLM model whose greedy answers differ by prompt (tests/serve/models.py)."""
    model, proc = make("llama", seed=3)
    path = tmp_path_factory.mktemp("serve") / "tiny-owl"
    save_pretrained(model, path, tokenizer=proc.tokenizer)
    return path


@pytest.fixture(scope="module")
def server(served_model_dir):
    env = os.environ | {"OWL_API_KEY": API_KEY, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "owl.cli", "serve", str(served_model_dir), "--port", "0", "--max-running", "16"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_die_with_parent
    )
    url = None
    try:
        err: list[str] = []
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
        timer = threading.Timer(90, proc.kill)  # a server that never says where it listens fails the fixture
        timer.start()
        line = proc.stdout.readline()
        timer.cancel()
        assert " on http://" in line, f"owl serve did not start: {line!r} {''.join(err)[-2000:]}"
        url = line.split(" on ")[1].split()[0]
        yield Served(url, served_model_dir, served_model_dir.name, API_KEY, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode is not None
    assert url is None or not port_open(url), "the server's port is still open after it stopped"


def png_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
