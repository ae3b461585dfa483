"""The blind rating page in a real browser: headless Chromium (Debian's package) via Playwright.

Served in-process over the real OwlEval questions and the six published answer files; the page is driven as a
rater would (keys and clicks), reloaded (it must continue at the first unrated answer), undone, and every
response the browser received is checked for system names. The screenshot goes to
runs/screenshots/owl-eval-rate.png. Skips only when Chromium or the OwlEval folder is missing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from owl.eval.rating import DISPLAY, RatingSession, default_answer_files, load_answers, load_questions, read_ratings
from owl.eval.rating_app import serve_rating
from tests.eval.data import owleval_dir

ROOT = Path(__file__).resolve().parents[2]
DATA = owleval_dir()
SCREENSHOT = ROOT / "runs" / "screenshots" / "owl-eval-rate.png"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)

needs_data = pytest.mark.skipif(not (DATA / "questions.jsonl").is_file(), reason="OwlEval data not found")


def _session(tmp_path: Path, rater: str = "tester", seed: int = 0) -> RatingSession:
    return RatingSession(
        answers=load_answers(default_answer_files(DATA)),
        questions=load_questions(DATA),
        rater=rater,
        out=tmp_path / "ratings.jsonl",
        cases=DATA / "cases",
        seed=seed,
    )


def _secrets() -> list[str]:
    return list(DISPLAY) + list(DISPLAY.values()) + [p.stem for p in default_answer_files(DATA)]


@needs_data
def test_order_is_per_rater_and_api_is_blind(tmp_path):
    a, b = _session(tmp_path, "ann"), _session(tmp_path / "b", "bob")
    assert a.items != b.items and sorted(a.items) == sorted(b.items)
    again = _session(tmp_path / "a2", "ann")
    assert a.items == again.items  # same rater, same order
    assert not set(a.ids.values()) & set(again.ids.values())  # ids are random, not a hash of the system name
    assert a.items != _session(tmp_path / "a3", "ann", seed=1).items  # --seed reshuffles
    assert [q for q, _ in a.items] == sorted(q for q, _ in a.items)  # dialogue order kept
    with serve_rating(a) as s:
        first = httpx.get(s.url + "/api/state").json()
        csp = httpx.get(s.url + "/").headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in csp and "script-src 'sha256-" in csp and "default-src 'none'" in csp
        assert httpx.get(s.url + "/api/state", headers={"Host": "evil.example"}).status_code == 400
        r = httpx.post(s.url + "/api/rate", json={"id": first["item"]["id"], "rating": "E"})
        assert r.status_code == 400
        r = httpx.post(s.url + "/api/rate", json={"id": first["item"]["id"], "rating": "A"})
        assert r.json()["done"] == 1
        assert httpx.get(s.url + "/image/../questions.jsonl").status_code == 404
    text = json.dumps(first)
    assert not [x for x in _secrets() if x in text]
    (record,) = read_ratings([a.out])
    assert record["rating"] == "A" and record["rater"] == "ann" and record["timestamp"].endswith("Z")
    assert (record["question_id"], record["system"]) == a.items[0] and record["image"] == "1.jpg"
    with pytest.raises(Exception, match="judge:"):
        _session(tmp_path, "judge:x")


@needs_data
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")
def test_rate_reload_undo_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    session = _session(tmp_path)
    bodies: list[str] = []
    with serve_rating(session) as s, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.set_default_timeout(30_000)
            errors: list[str] = []
            foreign: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(s.url) else None)

            def keep(resp) -> None:  # every body the page received, for the blindness check
                try:
                    if "image/" not in resp.headers.get("content-type", ""):
                        bodies.append(resp.text())
                except Exception:  # redirects and aborted loads have no body
                    pass

            page.on("response", keep)
            page.goto(s.url + "/")
            page.wait_for_selector("#progress:has-text('0 / 492')")
            ids = [page.evaluate("document.body.dataset.item")]
            page.keyboard.press("a")
            page.wait_for_selector("#progress:has-text('1 / 492')")
            ids.append(page.evaluate("document.body.dataset.item"))
            page.keyboard.press("3")  # 3 = C
            page.wait_for_selector("#progress:has-text('2 / 492')")
            page.click("button[data-r=B]")
            page.wait_for_selector("#progress:has-text('3 / 492')")
            after_three = page.evaluate("document.body.dataset.item")
            assert len(set(ids + [after_three])) == 3

            page.reload()  # resumes at the first unrated answer
            page.wait_for_selector("#progress:has-text('3 / 492')")
            assert page.evaluate("document.body.dataset.item") == after_three

            page.click("#undo")  # the B is cancelled; that answer comes back
            page.wait_for_selector("#progress:has-text('2 / 492')")
            assert page.evaluate("document.body.dataset.item") != after_three
            page.keyboard.press("d")
            page.wait_for_selector("#progress:has-text('3 / 492')")
            assert page.locator("#scale").inner_text().count("Correct and satisfying") == 1
            for n in range(4, 25):  # on to question 5, the second turn on 4.jpg: the dialogue so far is shown
                page.keyboard.press("2")
                page.wait_for_selector(f"#progress:has-text('{n} / 492')")
            assert page.locator("#dialogue").inner_text() == "Q1: " + session.questions[4]["question"]
            assert page.locator("#question").inner_text() == session.questions[5]["question"]
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            assert not errors and not foreign
        finally:
            browser.close()

    raw = [json.loads(x) for x in session.out.read_text().splitlines()]
    assert [r.get("rating", "undo") for r in raw] == ["A", "C", "B", "undo", "D"] + ["B"] * 21
    assert [r["rating"] for r in read_ratings([session.out])] == ["A", "C", "D"] + ["B"] * 21
    assert sum('"item"' in b for b in bodies) >= 6 and not [x for x in _secrets() for b in bodies if x in b]
    assert SCREENSHOT.stat().st_size > 10_000


@needs_data
def test_dialogue_so_far_and_resume(tmp_path):
    """Question 5 is the second turn on 4.jpg: its page shows question 4 first; a new session resumes there."""
    session = _session(tmp_path)
    while session.state()["item"]["question"] != session.questions[5]["question"]:
        session.rate(session.state()["item"]["id"], "B")
    state = session.state()
    assert state["done"] == 24 and state["item"]["dialogue"] == [session.questions[4]["question"]]
    assert state["item"]["image"] == "/image/4.jpg" and state["item"]["answer_no"] == 1
    resumed = _session(tmp_path).state()  # a restarted server: same file, same order, new ids
    assert resumed["done"] == 24 and resumed["item"]["answer"] == state["item"]["answer"]
    assert resumed["item"]["id"] != state["item"]["id"]
    with pytest.raises(Exception, match="reload the page"):
        session.rate("0" * 16, "A")
