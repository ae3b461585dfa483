"""Security defaults, each checked: what owl's code may call (read from its syntax tree, so a new call site cannot
slip past) and what a server started with no options does (driven in-process).

- weights: owl's own are read only from safetensors; the reference's ``.bin`` files only with
  ``torch.load(..., weights_only=True)``; nothing calls ``pickle``, ``yaml.load``, ``eval`` or ``exec``; no
  ``trust_remote_code``; no ``shell=True``.
- server: binds 127.0.0.1, compares the API key in constant time, sends no CORS headers, fetches no URL and reads
  no local path unless the operator enables each.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from owl.serve.app import create_app
from owl.serve.settings import ServeSettings
from tests.helpers import random_image

OWL = Path(__file__).resolve().parents[2] / "owl"
SOURCES = sorted(OWL.rglob("*.py"))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of ``name`` (a dotted name like ``torch.load``, or a bare function name) in owl/."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (name, name.rsplit(".", 1)[-1]):
                found.append((path, node))
    return found


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(OWL.parent)}:{node.lineno}"


def test_every_torch_load_is_weights_only() -> None:
    calls = [(p, c) for p, c in _calls("torch.load") if ast.unparse(c.func) == "torch.load"]
    assert calls, "the reference .bin reader should be found"
    for path, call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, _where(path, call)


@pytest.mark.parametrize("name", ["pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "eval", "exec",
                                  "marshal.loads", "os.system"])  # fmt: skip
def test_no_unsafe_deserialisation_or_code_execution(name: str) -> None:
    hits = [_where(p, c) for p, c in _calls(name) if ast.unparse(c.func) == name]
    assert hits == []


def test_no_trust_remote_code_and_no_shell() -> None:
    bad = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg in ("trust_remote_code", "shell"):
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    bad.append(_where(path, node.value))
    assert bad == []


def test_model_weights_are_read_only_through_safetensors() -> None:
    from owl.models import checkpoint

    text = inspect.getsource(checkpoint)
    assert "torch.load" not in text and "from_pretrained(" not in text.replace(
        "PeftModel.from_pretrained(", ""
    ).replace("AutoTokenizer.from_pretrained(", "")


def test_api_key_is_compared_in_constant_time() -> None:
    from owl.serve import app

    tree = ast.parse(inspect.getsource(app))
    check = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "check_key")
    calls = {ast.unparse(n.func) for n in ast.walk(check) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls
    compares = [ast.unparse(n) for n in ast.walk(check) if isinstance(n, ast.Compare)]
    assert not any("api_key" in c and "None" not in c for c in compares), compares  # no == on the secret


def test_defaults_lean_shut() -> None:
    from owl.cli import build_parser
    from owl.serve import server

    s = ServeSettings()
    assert (s.api_key, s.allow_remote_images, s.allow_local_images, s.cors_origins) == (None, False, None, [])
    assert inspect.signature(server.run).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(server.serve_in_thread).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["serve", "some-model"])
    assert args.host == "127.0.0.1" and not args.allow_remote_images and args.allow_local_images is None
    assert not args.cors_origin


@pytest.fixture(scope="module")
def tiny_model():
    from tests.serve.models import make

    return make()


def _client(tiny_model, **settings) -> TestClient:
    model, processor = tiny_model
    return TestClient(create_app(model, processor, ServeSettings(**settings)))


def _chat(url: str) -> dict:
    part = {"type": "image_url", "image_url": {"url": url}}
    return {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}], "max_tokens": 2}


def test_api_key_when_set(tiny_model) -> None:
    with _client(tiny_model, api_key="s3cret") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                        {"Authorization": "Bearer s3cret-and-more"}):  # fmt: skip
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200  # liveness needs no key (it reveals nothing)


def test_no_cors_headers_unless_enabled(tiny_model) -> None:
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with _client(tiny_model) as c:
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=origin).headers
        assert "access-control-allow-origin" not in c.options("/v1/chat/completions", headers=origin).headers
    with _client(tiny_model, cors_origins=["https://app.example"]) as c:
        ok = c.get("/v1/models", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=origin).headers


def test_no_url_fetched_and_no_path_read_unless_enabled(tiny_model, tmp_path, monkeypatch) -> None:
    import httpx

    secret = tmp_path / "secret.png"
    random_image(0).save(secret)
    fetched, opened = [], []
    monkeypatch.setattr(httpx.AsyncClient, "send", lambda *a, **k: fetched.append(a) or None)
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: opened.append(p) or real_read(p))
    urls = ["http://127.0.0.1:1/x.png", "https://example.com/x.png", f"file://{secret}", str(secret),
            "../../etc/passwd", "/etc/passwd", "ftp://example.com/x.png"]  # fmt: skip
    with _client(tiny_model) as c:
        for url in urls:
            r = c.post("/v1/chat/completions", json=_chat(url))
            assert r.status_code == 400, (url, r.text)
            assert r.json()["error"]["code"] in ("image_url_not_allowed", "invalid_image_url"), (url, r.text)
    assert fetched == [] and secret not in opened
    with _client(tiny_model, allow_local_images=str(tmp_path)) as c:  # enabled: inside the root only
        assert c.post("/v1/chat/completions", json=_chat(str(secret))).status_code == 200
        r = c.post("/v1/chat/completions", json=_chat(f"{tmp_path}/../../etc/passwd"))
        assert r.status_code == 403 and r.json()["error"]["code"] == "image_path_denied"
