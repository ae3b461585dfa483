"""Limits and refusals, each with its 4xx/503 answer in OpenAI's error shape; slots freed by clients that leave.

In-process servers (``serve_in_thread``) with tight settings on one tiny model whose answers never end early
(EOS forbidden), so a long request stays running while the test acts.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from owl.serve.server import serve_in_thread
from owl.serve.settings import ServeSettings
from tests.helpers import random_image
from tests.serve.conftest import png_data_url, port_open
from tests.serve.models import forbid_eos, make


@pytest.fixture(scope="module")
def model():
    m, proc = make("llama", seed=1, scale=0)
    forbid_eos(m, proc)
    return m, proc


@contextmanager
def serving(model, **kw):
    settings = ServeSettings(**({"model_name": "tiny", "max_tokens": 64} | kw))
    with serve_in_thread(*model, settings) as s:
        yield s
    assert not port_open(s.url)


def chat(url, body=None, content=None, **kw):
    body = body if body is not None else {"messages": [{"role": "user", "content": content or "Hi"}], **kw}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def error(r, status):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def png_claiming(width, height) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_request_shape_refusals(model):
    with serving(model) as s:
        r = httpx.post(s.url + "/v1/chat/completions", content=b"{not json", timeout=10)
        assert error(r, 400)["code"] == "invalid_json"
        assert error(chat(s.url, body=[1, 2]), 400)["param"] == "body"
        assert error(chat(s.url, body={"messages": "hi"}), 400)["param"] == "messages"
        assert error(chat(s.url, body={"messages": []}), 400)["param"] == "messages"
        assert error(chat(s.url, max_tokens="ten"), 400)["param"] == "max_tokens"
        assert error(chat(s.url, temperature="hot"), 400)["param"] == "temperature"
        assert error(chat(s.url, temperature=3), 400)["param"] == "temperature"
        assert error(chat(s.url, stop=[""]), 400)["param"] == "stop"
        assert error(chat(s.url, n=2), 400)["param"] == "n"
        assert error(chat(s.url, stream="yes"), 400)["param"] == "stream"
        bad_role = {"messages": [{"role": "tool", "content": "x"}]}
        assert error(chat(s.url, body=bad_role), 400)["param"] == "messages[0]"
        last = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        assert "last message" in error(chat(s.url, body=last), 400)["message"]
        marker = error(chat(s.url, content="look: <image>"), 400)
        assert "<image>" in marker["message"]
        assert error(chat(s.url, model="gpt-4"), 404)["code"] == "model_not_found"
        assert error(httpx.get(s.url + "/nope"), 404)["type"] == "not_found_error"
        assert error(httpx.get(s.url + "/v1/chat/completions"), 405)
        assert chat(s.url, max_tokens=2, model="tiny").status_code == 200


def test_size_limits(model):
    with serving(model, max_body_bytes=100_000, max_images=2, max_image_bytes=20_000, max_tokens=8) as s:
        r = chat(s.url, content="x" * 150_000)
        assert error(r, 413)["code"] == "request_too_large"
    with serving(model, max_body_bytes=1000) as s:  # a chunked body (no Content-Length) is counted as it comes
        r = httpx.post(s.url + "/v1/chat/completions", content=(b"x" * 100 for _ in range(50)), timeout=10)
        assert error(r, 413)["code"] == "request_too_large"


def test_image_and_token_limits(model):
    with serving(model, max_images=2, max_image_bytes=20_000, max_image_pixels=10_000, max_tokens=8) as s:
        small = png_data_url(random_image(1))
        three = [image_part(small)] * 3 + [{"type": "text", "text": "?"}]
        assert error(chat(s.url, content=three), 400)["code"] == "too_many_images"
        big = "data:image/png;base64," + base64.b64encode(bytes(30_000)).decode()
        assert error(chat(s.url, content=[image_part(big)]), 413)["code"] == "image_too_large"
        wide = png_data_url(Image.new("RGB", (200, 100)))  # 20,000 pixels, a few hundred bytes
        e = error(chat(s.url, content=[image_part(wide)]), 400)
        assert e["code"] == "image_too_large" and "200x100" in e["message"]
        for side in (10_000, 100_000):  # over the server's cap; over PIL's own bomb limit too
            bomb = "data:image/png;base64," + base64.b64encode(png_claiming(side, side)).decode()
            assert error(chat(s.url, content=[image_part(bomb)]), 400)["code"] == "image_too_large"
        assert error(chat(s.url, content=[image_part("data:image/png;base64,@@@")]), 400)["code"] == (
            "invalid_image_url"
        )
        junk = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
        assert error(chat(s.url, content=[image_part(junk)]), 400)["code"] == "invalid_image"
        assert error(chat(s.url, content="x" * 600), 400)["code"] == "context_length_exceeded"  # max_length 512
        assert error(chat(s.url, max_tokens=9), 400)["code"] == "max_tokens_too_large"
        assert error(chat(s.url, max_completion_tokens=9), 400)["param"] == "max_completion_tokens"
        ok = chat(s.url, content=[image_part(small), {"type": "text", "text": "?"}])
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 8  # the cap is the default


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(2)
        body = bytes(50_000) if self.path == "/big.png" else self.server.png
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def image_host():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    buf = io.BytesIO()
    random_image(3).save(buf, format="PNG")
    httpd.png = buf.getvalue()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_and_local_images_only_when_allowed(model, image_host, tmp_path):
    inside = tmp_path / "allowed"
    inside.mkdir()
    random_image(4).save(inside / "a.png")
    random_image(4).save(tmp_path / "secret.png")
    with serving(model, max_tokens=2) as s:
        for url in (image_host + "/a.png", f"file://{inside / 'a.png'}", str(inside / "a.png")):
            assert error(chat(s.url, content=[image_part(url)]), 400)["code"] == "image_url_not_allowed"
        assert error(chat(s.url, content=[image_part("ftp://x/y.png")]), 400)["code"] == "invalid_image_url"
    with serving(
        model, max_tokens=2, allow_remote_images=True, remote_image_timeout_s=0.5, max_image_bytes=20_000,
        allow_local_images=inside,
    ) as s:  # fmt: skip
        assert chat(s.url, content=[image_part(image_host + "/a.png")]).status_code == 200
        assert error(chat(s.url, content=[image_part(image_host + "/big.png")]), 413)["code"] == "image_too_large"
        assert error(chat(s.url, content=[image_part(image_host + "/slow.png")]), 400)["code"] == "image_fetch_failed"
        assert chat(s.url, content=[image_part(f"file://{inside / 'a.png'}")]).status_code == 200
        assert chat(s.url, content=[image_part("a.png")]).status_code == 200  # relative to the allowed directory
        for url in (f"file://{tmp_path / 'secret.png'}", str(inside / ".." / "secret.png")):
            assert error(chat(s.url, content=[image_part(url)]), 403)["code"] == "image_path_denied"


def _stream(url, max_tokens):
    """Open a streamed request and read its first event; the caller closes it."""
    client = httpx.Client(timeout=30)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens, "stream": True}
    cm = client.stream("POST", url + "/v1/chat/completions", json=body)
    r = cm.__enter__()
    assert r.status_code == 200
    lines = r.iter_lines()
    assert next(line for line in lines if line.startswith("data:"))
    return client, cm, lines


def _wait_for(s, check, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = httpx.get(s.url + "/metrics").json()
        if check(m):
            return m
        time.sleep(0.02)
    raise AssertionError(f"metrics never matched: {m}")


def test_a_full_queue_answers_503_and_a_client_that_leaves_frees_its_slot(model):
    with serving(model, max_running=1, max_queue=1, max_tokens=5000, retry_after_s=2) as s:
        client, cm, _ = _stream(s.url, 5000)  # running for seconds
        waiting: list = []
        t = threading.Thread(target=lambda: waiting.append(chat(s.url, max_tokens=3)))
        t.start()
        _wait_for(s, lambda m: m["queue_length"] == 1)
        r = chat(s.url, max_tokens=3)
        assert error(r, 503)["code"] == "server_busy" and r.headers["retry-after"] == "2"
        cm.__exit__(None, None, None)  # the streaming client goes away...
        client.close()
        t.join(30)  # ...and the waiting request gets its slot and its answer
        assert waiting[0].status_code == 200
        m = _wait_for(s, lambda m: m["running"] == 0)
        assert m["requests_cancelled"] == 1 and m["requests_served"] == 1 and m["http_503"] == 1


def test_a_non_streaming_client_that_times_out_frees_its_slot(model):
    with serving(model, max_running=1, max_tokens=5000) as s:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                s.url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5000},
                timeout=httpx.Timeout(10, read=0.5),
            )
        m = _wait_for(s, lambda m: m["requests_cancelled"] == 1 and m["running"] == 0)
        assert m["requests_served"] == 0
        assert chat(s.url, max_tokens=2).status_code == 200


def test_a_stalled_streaming_client_does_not_block_the_others(model):
    with serving(model, max_running=4, max_tokens=3000) as s:
        host, port = s.url.removeprefix("http://").rsplit(":", 1)
        stalled = socket.create_connection((host, int(port)))
        body = b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3000, "stream": true}'
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        stalled.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # never reads
        _wait_for(s, lambda m: m["running"] == 1)
        for _ in range(3):
            assert chat(s.url, max_tokens=20).status_code == 200
        assert _wait_for(s, lambda m: m["max_sequences_in_step"] >= 2)
        stalled.close()
        _wait_for(s, lambda m: m["running"] == 0 and m["requests_cancelled"] == 1)


def test_web_page_csp_and_cors(model, tmp_path, monkeypatch):
    import owl.serve.app as app_module

    monkeypatch.setattr(app_module, "STATIC_DIR", tmp_path)
    with serving(model) as s:
        assert error(httpx.get(s.url + "/"), 404)["code"] == "not_found"
        (tmp_path / "index.html").write_text("<!doctype html><title>owl</title>")
        r = httpx.get(s.url + "/")
        assert r.status_code == 200 and "<title>owl</title>" in r.text
        assert r.headers["content-security-policy"] == app_module.CSP and "default-src 'self'" in app_module.CSP
        pre = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
        assert "access-control-allow-origin" not in httpx.options(s.url + "/v1/chat/completions", headers=pre).headers
    with serving(model, cors_origins=["https://example.org"]) as s:
        r = httpx.options(s.url + "/v1/chat/completions", headers=pre)
        assert r.headers["access-control-allow-origin"] == "https://example.org"
