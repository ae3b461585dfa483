"""Starting and stopping the server: ``owl serve`` (:func:`run`) and in-process (:func:`serve_in_thread`).

The listening socket is bound here, before uvicorn starts, so ``port=0``
picks a free port with no race and the caller learns the real address
(:func:`run` prints it; :class:`RunningServer` has it as ``.url``).
Shutdown is graceful but bounded: open streams get a few seconds, then the
engine stops and every unfinished request ends.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn

from owl.errors import ConfigError
from owl.models.owl import OwlModel
from owl.processing import OwlProcessor
from owl.serve.settings import ServeSettings

GRACEFUL_SHUTDOWN_S = 5


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port=0``: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load(model_dir: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[OwlModel, OwlProcessor]:
    """A model directory (a LoRA run's adapter/ attached unmerged, as ``load_model`` does) and its processor."""
    from owl.chat import resolve_device
    from owl.models import load_model

    dev, dt = resolve_device(device, dtype)
    return load_model(model_dir, dtype=dt).to(dev).eval(), OwlProcessor.from_pretrained(model_dir)


def settings_for(model_dir: str | Path, settings: ServeSettings | None = None) -> ServeSettings:
    """``settings`` with the model's name (its directory's name) and its generation defaults filled in."""
    from owl.generation import load_generation_defaults

    settings = settings or ServeSettings()
    name = settings.model_name if settings.model_name != "owl" else Path(model_dir).resolve().name
    return replace(settings, model_name=name, defaults=load_generation_defaults(model_dir))


def _config(app: object, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        access_log=log_level == "debug",
    )


def run(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    device: str = "auto",
    dtype: str = "auto",
    log_level: str = "warning",
) -> None:
    """Load a model directory and serve it until interrupted (SIGINT/SIGTERM). Prints the URL once listening."""
    from owl.serve.app import create_app

    settings = settings_for(model_dir, settings)
    if not _is_loopback(host) and settings.api_key is None:
        print(f"owl serve: warning: listening on {host} with no API key (set --api-key or OWL_API_KEY)",
              file=sys.stderr)  # fmt: skip
    model, processor = load(model_dir, device, dtype)
    sock = bind(host, port)
    server = uvicorn.Server(_config(create_app(model, processor, settings), log_level))
    print(f"owl serve: {settings.model_name} on {_url(sock)} (OpenAI API at {_url(sock)}/v1)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@dataclass
class RunningServer:
    """A server running in this process: ``url`` (no trailing slash), ``app`` (its FastAPI app)."""

    url: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        """The address an OpenAI client takes as ``base_url``."""
        return self.url + "/v1"

    def stop(self, timeout: float = GRACEFUL_SHUTDOWN_S + 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


@contextmanager
def serve_in_thread(
    model: OwlModel,
    processor: OwlProcessor,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> Iterator[RunningServer]:
    """Serve a loaded model from a background thread for the ``with`` block; ``port=0`` picks a free port.

    ``with serve_in_thread(model, processor) as s: OpenAI(base_url=s.base_url, api_key="-")...``
    """
    from owl.serve.app import create_app

    app = create_app(model, processor, settings)
    sock = bind(host, port)
    server = uvicorn.Server(_config(app, log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="owl-serve", daemon=True)
    thread.start()
    running = RunningServer(_url(sock), app, server, thread)
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread ended before it started; see the log above")
            thread.join(0.01)
        yield running
    finally:
        running.stop()
        sock.close()
        if thread.is_alive():
            logging.getLogger("owl.serve").warning("the server thread did not stop in time")
