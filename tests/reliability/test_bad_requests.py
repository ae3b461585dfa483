"""Bad requests to `owl serve`, one table row each, against one in-process app with tight limits: every row gets
its exact 4xx status and error ``code`` in OpenAI's error shape, none a 5xx, none a hang, and the server answers
normally after the whole table. A property test then throws arbitrary JSON at it.
"""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from owl.serve.app import create_app
from owl.serve.openai_api import MAX_STOPS
from owl.serve.settings import ServeSettings
from tests.helpers import chat_user as user
from tests.helpers import image_part as image
from tests.helpers import png_claiming, random_image
from tests.helpers import text_part as text
from tests.serve.models import make

KIB = 1024
LIMITS = {"model_name": "tiny", "max_tokens": 64, "max_body_bytes": 256 * KIB, "max_images": 2,
          "max_image_bytes": 24 * KIB, "max_image_pixels": 1_000_000}  # fmt: skip


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


GOOD_IMAGE = data_url(_png(random_image(0)))
NOISE = _png(Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)))  # ~12 KiB, incompressible


HI = {"messages": [{"role": "user", "content": "Hi"}]}

# (id, body: a JSON value, or bytes sent raw, status, error code)
CASES: list[tuple[str, object, int, str]] = [
    ("serve-body-empty", b"", 400, "invalid_json"),
    ("serve-body-truncated", b'{"messages": [{"role": "us', 400, "invalid_json"),
    ("serve-body-trailing-garbage", b'{"messages": []} trailing', 400, "invalid_json"),
    ("serve-body-not-utf8", b'\xff\xfe{"messages": 1}', 400, "invalid_json"),
    ("serve-body-single-quotes", b"{'messages': []}", 400, "invalid_json"),
    ("serve-body-deeply-nested", b"[" * 100_000, 400, "invalid_json"),
    ("serve-body-array", [HI], 400, "invalid_type"),
    ("serve-body-string", "Hi", 400, "invalid_type"),
    ("serve-body-number", 42, 400, "invalid_type"),
    ("serve-body-null", None, 400, "invalid_type"),
    ("serve-body-nan-literal", b'{"messages": NaN}', 400, "invalid_type"),
    ("serve-messages-missing", {"model": "tiny"}, 400, "invalid_type"),
    ("serve-messages-empty", {"messages": []}, 400, "invalid_value"),
    ("serve-messages-object", {"messages": {"role": "user", "content": "Hi"}}, 400, "invalid_type"),
    ("serve-message-string", {"messages": ["Hi"]}, 400, "invalid_type"),
    ("serve-role-missing", {"messages": [{"content": "Hi"}]}, 400, "invalid_value"),
    ("serve-role-unknown", {"messages": [{"role": "robot", "content": "Hi"}]}, 400, "invalid_value"),
    ("serve-role-number", {"messages": [{"role": 1, "content": "Hi"}]}, 400, "invalid_value"),
    ("serve-last-message-assistant", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}, 400, "invalid_value"),
    ("serve-content-number", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_type"),
    ("serve-content-null", {"messages": [{"role": "user", "content": None}]}, 400, "invalid_type"),
    ("serve-content-object", {"messages": [{"role": "user", "content": {"text": "Hi"}}]}, 400, "invalid_type"),
    ("serve-part-string", user("Hi"), 400, "invalid_type"),
    ("serve-part-unknown-type", user({"type": "input_audio", "input_audio": {}}), 400, "invalid_value"),
    ("serve-part-no-type", user({"text": "Hi"}), 400, "invalid_value"),
    ("serve-text-part-number", user(text(5)), 400, "invalid_type"),
    ("serve-text-part-missing-text", user({"type": "text"}), 400, "invalid_type"),
    ("serve-image-part-no-url", user({"type": "image_url"}), 400, "invalid_type"),
    ("serve-image-part-url-number", user(image(7)), 400, "invalid_type"),
    ("serve-image-in-system-message", {"messages": [{"role": "system", "content": [image(GOOD_IMAGE)]}, {"role": "user", "content": "Hi"}]}, 400, "invalid_content"),
    ("serve-image-in-assistant-message", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [image(GOOD_IMAGE)]}, {"role": "user", "content": "Hi"}]}, 400, "invalid_content"),
    ("serve-image-token-in-text", user(text("look: <image>")), 400, "invalid_value"),
    ("serve-too-many-images", user(image(GOOD_IMAGE), image(GOOD_IMAGE), image(GOOD_IMAGE), text("Hi")), 400, "too_many_images"),
    ("serve-image-invalid-base64", user(image("data:image/png;base64,!!not*base64!!"), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-base64-bad-padding", user(image("data:image/png;base64,iVBORw0KGgo="[:-3]), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-data-url-no-comma", user(image("data:image/png;base64"), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-data-url-not-base64", user(image("data:image/png,rawbytes"), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-data-url-text-mime", user(image(data_url(b"hello", "text/plain")), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-data-url-html-mime", user(image(data_url(b"<script>", "text/html")), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-not-an-image", user(image(data_url(b"just some text")), text("Hi")), 400, "invalid_image"),
    ("serve-image-empty-data", user(image("data:image/png;base64,"), text("Hi")), 400, "invalid_image"),
    ("serve-image-truncated-png", user(image(data_url(NOISE[: len(NOISE) // 2])), text("Hi")), 400, "invalid_image"),
    ("serve-image-svg", user(image(data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")), text("Hi")), 400, "invalid_image"),
    ("serve-image-over-byte-cap", user(image(data_url(NOISE * 3)), text("Hi")), 413, "image_too_large"),
    ("serve-image-over-pixel-cap", user(image(data_url(png_claiming(2000, 2000))), text("Hi")), 400, "image_too_large"),
    ("serve-image-decompression-bomb", user(image(data_url(png_claiming(30000, 30000))), text("Hi")), 400, "image_too_large"),
    ("serve-image-http-url", user(image("http://127.0.0.1:9/cat.png"), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-https-url", user(image("https://example.com/cat.png"), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-http-upper-case", user(image("HTTP://example.com/cat.png"), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-file-url", user(image("file:///etc/passwd"), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-absolute-path", user(image("/etc/passwd"), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-traversal", user(image("../../../../etc/passwd"), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-windows-path", user(image("C:\\Windows\\win.ini"), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-empty-url", user(image(""), text("Hi")), 400, "image_url_not_allowed"),
    ("serve-image-ftp-url", user(image("ftp://example.com/cat.png"), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-javascript-url", user(image("javascript:alert(1)"), text("Hi")), 400, "invalid_image_url"),
    ("serve-image-gopher-url", user(image("gopher://127.0.0.1:6379/_FLUSHALL"), text("Hi")), 400, "invalid_image_url"),
    ("serve-max-tokens-zero", {**HI, "max_tokens": 0}, 400, "invalid_value"),
    ("serve-max-tokens-negative", {**HI, "max_tokens": -5}, 400, "invalid_value"),
    ("serve-max-tokens-fraction", {**HI, "max_tokens": 1.5}, 400, "invalid_type"),
    ("serve-max-tokens-string", {**HI, "max_tokens": "10"}, 400, "invalid_type"),
    ("serve-max-tokens-bool", {**HI, "max_tokens": True}, 400, "invalid_type"),
    ("serve-max-tokens-over-cap", {**HI, "max_tokens": 65}, 400, "max_tokens_too_large"),
    ("serve-max-tokens-absurd", {**HI, "max_tokens": 10**12}, 400, "invalid_value"),
    ("serve-max-completion-tokens-over-cap", {**HI, "max_completion_tokens": 1000}, 400, "max_tokens_too_large"),
    ("serve-temperature-negative", {**HI, "temperature": -1}, 400, "invalid_value"),
    ("serve-temperature-absurd", {**HI, "temperature": 1e9}, 400, "invalid_value"),
    ("serve-temperature-infinite", b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": Infinity}', 400, "invalid_value"),
    ("serve-temperature-nan", b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', 400, "invalid_value"),
    ("serve-temperature-string", {**HI, "temperature": "hot"}, 400, "invalid_type"),
    ("serve-top-p-zero", {**HI, "top_p": 0}, 400, "invalid_value"),
    ("serve-top-p-over-one", {**HI, "top_p": 1.5}, 400, "invalid_value"),
    ("serve-top-k-negative", {**HI, "top_k": -1}, 400, "invalid_value"),
    ("serve-n-two", {**HI, "n": 2}, 400, "invalid_value"),
    ("serve-seed-string", {**HI, "seed": "lucky"}, 400, "invalid_type"),
    ("serve-seed-over-64-bit", {**HI, "seed": 2**70}, 400, "invalid_value"),
    ("serve-stop-too-many", {**HI, "stop": ["a"] * (MAX_STOPS + 1)}, 400, "invalid_value"),
    ("serve-stop-empty-string", {**HI, "stop": [""]}, 400, "invalid_value"),
    ("serve-stop-number", {**HI, "stop": 3}, 400, "invalid_type"),
    ("serve-stream-string", {**HI, "stream": "yes"}, 400, "invalid_type"),
    ("serve-stream-options-without-stream", {**HI, "stream_options": {"include_usage": True}}, 400, "invalid_value"),
    ("serve-logprobs", {**HI, "logprobs": True}, 400, "unsupported_parameter"),
    ("serve-tools", {**HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "unsupported_parameter"),
    ("serve-response-format-json", {**HI, "response_format": {"type": "json_object"}}, 400, "invalid_value"),
    ("serve-model-unknown", {**HI, "model": "gpt-4o"}, 404, "model_not_found"),
    ("serve-model-number", {**HI, "model": 4}, 400, "invalid_type"),
    ("serve-prompt-over-context", {"messages": [{"role": "user", "content": "word " * 3000}]}, 400, "context_length_exceeded"),
]  # fmt: skip


@pytest.fixture(scope="module")
def client():
    model, processor = make("llama", seed=2)
    processor.config.max_length = 2048  # the context a prompt must fit
    with TestClient(create_app(model, processor, ServeSettings(**LIMITS)), raise_server_exceptions=False) as c:
        yield c


def _post(client: TestClient, body: object, **kw) -> object:
    if isinstance(body, bytes):
        return client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}, **kw)
    return client.post(
        "/v1/chat/completions", content=json.dumps(body), headers={"Content-Type": "application/json"}, **kw
    )


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text[:500]
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and isinstance(e["message"], str) and e["message"]
    assert isinstance(e["type"], str) and e["type"].endswith("_error")
    return e


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_its_4xx_in_openai_shape(client: TestClient, body: object, status: int, code: str) -> None:
    e = _error(_post(client, body), status)
    assert e["code"] == code, e


HTTP_CASES = [
    ("serve-get-on-chat", "GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ("serve-put-on-chat", "PUT", "/v1/chat/completions", 405, "method_not_allowed"),
    ("serve-unknown-path", "GET", "/v1/embeddings", 404, "not_found"),
    ("serve-path-traversal-in-url", "GET", "/static/../../etc/passwd", 404, "not_found"),
    ("serve-unknown-model-route", "GET", "/v1/models/gpt-4o", 404, "model_not_found"),
]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES]
)
def test_wrong_route_or_method(client: TestClient, method: str, path: str, status: int, code: str) -> None:
    assert _error(client.request(method, path), status)["code"] == code


def test_oversized_bodies_are_refused_before_they_are_read(client: TestClient) -> None:
    """serve-body-over-cap (declared and streamed): 413 whether or not Content-Length tells the truth."""
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (300 * KIB) + b'"}]}'
    assert _error(_post(client, big), 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(40):
            yield b" " * (8 * KIB)

    r = client.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert _error(r, 413)["code"] == "request_too_large"
    r = client.post("/v1/chat/completions", content=big, headers={"Content-Type": "application/json",
                                                                   "Content-Length": str(300 * KIB * 10)})  # fmt: skip
    assert r.status_code in (400, 413)


def test_after_the_table_the_server_still_answers(client: TestClient) -> None:
    r = _post(client, {**user(image(GOOD_IMAGE), text("What is it?")), "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert client.get("/health").status_code == 200
    m = client.get("/metrics").json()
    assert m["alive"] and m["running"] == 0 and m["queue_length"] == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["messages", "model", "max_tokens", "temperature", "top_p", "top_k", "stop", "stream",
                        "seed", "n", "stream_options", "response_format"])  # fmt: skip
BODIES = st.one_of(JSON, st.dictionaries(KEYS, JSON, max_size=5), st.builds(
    lambda content, extra: {"messages": [{"role": "user", "content": content}], **extra},
    st.one_of(st.text(max_size=20), st.lists(st.one_of(st.builds(text, JSON), st.builds(image, JSON), JSON), max_size=3)),
    st.dictionaries(KEYS, JSON, max_size=3)))  # fmt: skip


@settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(BODIES)  # fmt: skip
def test_any_json_body_gets_an_answer_or_a_4xx_never_a_5xx(client: TestClient, body: object) -> None:
    if isinstance(body, dict):
        body = {**body, "max_tokens": 2} if "max_tokens" not in body else body
        body.pop("stream", None) if body.get("stream") is not False else None
    r = _post(client, body)
    assert r.status_code in (200, 400, 404, 413), r.text[:300]
    if r.status_code != 200:
        _error(r, r.status_code)
