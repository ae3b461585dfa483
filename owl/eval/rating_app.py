"""The local blind-rating page: a FastAPI app over one :class:`~owl.eval.rating.RatingSession`.

Blindness is enforced on the server side: the browser only ever receives opaque item ids, the question, the
earlier turns of the dialogue and the answer text, never a system name or model_id, so neither the page source
nor the network tab can unblind the rater. The page is self-contained (no CDN, no external fonts) under a strict
CSP: its one inline script and one inline style are allowed by their SHA-256 hashes, not by 'unsafe-inline', so
nothing injected into the page (an answer text is untrusted input, though the page only ever sets textContent)
could run. The server answers only to Host 127.0.0.1/localhost, so another web site cannot reach it through
DNS rebinding.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from owl.errors import DataError
from owl.eval.rating import SCALE, RatingSession

PAGE = Path(__file__).parent / "static" / "rate.html"


def csp_for(html: str) -> str:
    """The Content-Security-Policy for ``html``: its inline <script>/<style> blocks allowed by hash only."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        digests = [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks]
        return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

    return (
        f"default-src 'none'; img-src 'self'; style-src {hashes('style')}; script-src {hashes('script')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


_IMAGE = re.compile(r"^[A-Za-z0-9_.-]+\.(jpg|jpeg|png)$")


class Rate(BaseModel):
    """One button press: the opaque item id and the letter."""

    id: str
    rating: str


def create_app(session: RatingSession) -> FastAPI:
    """The app: ``/`` page, ``/api/state``, ``/api/rate``, ``/api/undo``, ``/image/NAME``."""
    html = PAGE.read_text(encoding="utf-8")  # served from memory, so the hashes match what is sent
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])
    headers = {
        "Content-Security-Policy": csp_for(html),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    def reply(state: dict) -> JSONResponse:
        return JSONResponse({**state, "scale": SCALE, "rater": session.rater}, headers=headers)

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    @app.get("/favicon.ico")
    def favicon() -> Response:  # browsers ask for it; an empty answer keeps their console free of 404s
        return Response(status_code=204)

    @app.get("/api/state")
    def state() -> JSONResponse:
        return reply(session.state())

    @app.post("/api/rate")
    def rate(body: Rate) -> JSONResponse:
        try:
            return reply(session.rate(body.id, body.rating))
        except DataError as e:
            raise HTTPException(400, str(e)) from None

    @app.post("/api/undo")
    def undo() -> JSONResponse:
        return reply(session.undo())

    @app.get("/image/{name}")
    def image(name: str) -> FileResponse:
        path = session.cases / name
        if not _IMAGE.match(name) or not path.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path, headers=headers)

    return app


@dataclass
class RunningRater:
    """A rating server running in a background thread (tests, ``owl eval rate``)."""

    url: str
    server: object
    thread: threading.Thread


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise DataError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port") from None
    sock.listen(64)
    return sock


@contextmanager
def serve_rating(session: RatingSession, host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningRater]:
    """Serve the page for the ``with`` block; the socket is bound first so ``port=0`` gives the real address."""
    import uvicorn

    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.02)
        yield RunningRater(f"http://{host}:{sock.getsockname()[1]}", server, thread)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
