"""The chat page in a real browser against a real owl server: headless Chromium (Debian's package) via Playwright.

A tiny random model is served in-process on a free port with an API key and a small image cap; the page is driven
as a user would: attach an image, ask, watch the streamed answer finish, ask a follow-up, stop a long answer, hit
the server's image cap. Checked from the outside: what the page sent (every request is recorded), what the server
counted (/metrics), what the page shows, and that the browser logged no errors and asked nothing of any other
origin. The screenshot it saves (runs/screenshots/owl-serve-page.png) is the one the README shows; the random
model's answers are gibberish.

Skips only when Chromium is not installed (``apt-get install -y chromium``; .ci/run does it). No browser is
downloaded: Playwright drives the system's binary through ``executable_path``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from owl.config import preset
from owl.models import build_model, load_model, save_pretrained
from owl.processing import OwlProcessor
from owl.tokenizer import byte_tokenizer
from tests.helpers import random_image

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "runs" / "screenshots" / "owl-serve-page.png"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)
API_KEY = "page-test-key"
IMAGE_CAP = 60_000  # bytes: the small test image passes, the large one is refused with 413

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny model directory served in this process (API key, image cap); always stopped at the end."""
    from owl.serve.server import serve_in_thread, settings_for
    from owl.serve.settings import ServeSettings

    model_dir = tmp_path_factory.mktemp("page") / "tiny-owl"
    torch.manual_seed(0)
    model, config, _ = build_model(preset("tiny"))
    tokenizer = byte_tokenizer()
    with torch.no_grad():  # EOS's logit exactly 0, below the others' maximum: greedy answers run to max_tokens
        model.causal_lm.get_output_embeddings().weight[tokenizer.eos_token_id].zero_()
    save_pretrained(model, model_dir, tokenizer=tokenizer)
    settings = settings_for(model_dir, ServeSettings(api_key=API_KEY, max_image_bytes=IMAGE_CAP))
    with serve_in_thread(load_model(model_dir).eval(), OwlProcessor.from_pretrained(model_dir), settings) as s:
        yield s


@pytest.fixture
def browser_page(server):
    """A fresh page (desktop size) with the API key in sessionStorage, recording requests, console and errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.set_default_timeout(120_000)
            log: dict[str, list] = {"requests": [], "console": [], "errors": []}
            page.on("request", lambda r: log["requests"].append(r))
            page.on("console", lambda m: log["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: log["errors"].append(str(e)))
            # As if the user had typed the key earlier in this tab: the page must read it from sessionStorage.
            page.add_init_script(f"sessionStorage.setItem('owl-api-key', {json.dumps(API_KEY)})")
            page.goto(server.url + "/")
            page.wait_for_selector("#model:has-text('model: tiny-owl')")
            yield page, log
        finally:
            browser.close()


def _metrics(server) -> dict:
    return httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).json()


def _chat_bodies(log: dict) -> list[dict]:
    return [json.loads(r.post_data) for r in log["requests"] if r.url.endswith("/v1/chat/completions")]


def _settings(page, max_tokens: int) -> None:
    page.click("summary")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", "0")


def test_multi_turn_chat_with_an_image_streams_and_keeps_the_history(server, browser_page, tmp_path):
    page, log = browser_page
    image = tmp_path / "photo.png"
    random_image(3, (160, 120)).save(image)
    assert image.stat().st_size < IMAGE_CAP
    _settings(page, 24)

    page.set_input_files("#file", str(image))
    page.wait_for_selector("#pending img")
    page.fill("#input", "What is in this picture?")
    page.click("#send")
    first = page.locator(".msg.assistant[data-done]").nth(0)
    first.wait_for()
    answer = first.locator(".text").text_content()
    assert answer and first.get_attribute("data-done") == "length"  # 24 tokens: EOS is never greedy here
    assert page.locator(".msg.user img").count() == 1 and page.locator("#pending img").count() == 0

    page.fill("#input", "And what colour is it?")
    page.keyboard.press("Enter")
    second = page.locator(".msg.assistant[data-done]").nth(1)
    second.wait_for()
    assert second.locator(".text").text_content()

    ask, follow = _chat_bodies(log)
    for body in (ask, follow):
        assert body["stream"] is True and body["max_tokens"] == 24 and body["temperature"] == 0
        assert body["model"] == "tiny-owl"
    (turn,) = ask["messages"]
    url = turn["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and turn["content"][1] == {
        "type": "text",
        "text": "What is in this picture?",
    }
    # The follow-up carries the whole conversation: the first turn with its image, the streamed answer, the question.
    question = {"role": "user", "content": "And what colour is it?"}
    assert follow["messages"] == [turn, {"role": "assistant", "content": answer}, question]
    headers = [r.headers for r in log["requests"] if r.url.endswith("/v1/chat/completions")]
    assert all(h.get("authorization") == f"Bearer {API_KEY}" for h in headers)

    m = _metrics(server)
    assert m["requests_served"] >= 2 and m["running"] == 0
    # Everything came from the server's own origin (data: URLs are the page's own thumbnails), and nothing failed.
    assert all(r.url.startswith(server.url + "/") or r.url.startswith("data:") for r in log["requests"]), [
        r.url for r in log["requests"]
    ]
    assert not log["errors"] and not [c for c in log["console"] if c[0] == "error"], log
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))


def test_stop_frees_the_slot_and_server_errors_are_shown(server, browser_page, tmp_path):
    page, log = browser_page
    _settings(page, 2000)
    before = _metrics(server)["requests_cancelled"]

    page.fill("#input", "Tell me a very long story.")
    page.click("#send")
    page.wait_for_selector(".msg.assistant .text:not(:empty)")  # streaming has begun (no eval: the CSP forbids it)
    page.click("#stop")
    bubble = page.locator(".msg.assistant[data-done='aborted']")
    bubble.wait_for()
    assert "(stopped)" in bubble.text_content() and page.locator("#stop").is_disabled()
    for _ in range(200):  # the server notices the closed stream and frees the slot
        m = _metrics(server)
        if m["running"] == 0 and m["requests_cancelled"] > before:
            break
        page.wait_for_timeout(50)
    assert m["running"] == 0 and m["requests_cancelled"] == before + 1, m

    big = tmp_path / "big.png"
    random_image(4, (400, 400)).save(big)
    assert big.stat().st_size > IMAGE_CAP
    page.set_input_files("#file", str(big))
    page.fill("#input", "What about this one?")
    page.click("#send")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert f"over the server's cap of {IMAGE_CAP} bytes" in error.text_content() and "413" in error.text_content()
    # The refused turn is given back to be fixed: its text in the box, its image pending, not in the conversation.
    assert page.input_value("#input") == "What about this one?" and page.locator("#pending img").count() == 1
    assert page.locator(".msg.user").count() == 1
    # The only browser error is the refused request's own status line.
    assert [c for c in log["console"] if c[0] == "error"] == [
        ("error", "Failed to load resource: the server responded with a status of 413 (Request Entity Too Large)")
    ]
    assert not log["errors"]
