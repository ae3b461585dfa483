"""`owl demo --profile quick` end to end through the real command, then chat and world eval on its result."""

from __future__ import annotations

import json

from tests.helpers import run_cli


def test_quick_demo_then_chat_and_eval(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--profile", "quick", "--out", out, "train.progress=false", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| colour |" in report and "| text |" in report and "before tuning" in report
    for png in ("accuracy.png", "loss.png", "examples.png"):
        assert (out / png).stat().st_size > 5000, png
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["overall"]["n"] == 48 and summary["before"]["text"]["n"] == 4
    assert "owl chat" in r.stdout
    chat_cmd = r.stdout.split("owl chat", 1)[1].split()
    model, image = chat_cmd[0], chat_cmd[2]

    r = run_cli(
        "chat", model, "--image", image, "--message", "What colour is the shape?", "--max-new-tokens", "5", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-2000:]

    r = run_cli("world", "eval", model, "--world", out / "world", "--abilities", "colour,text", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    scores = json.loads(r.stdout)
    assert set(scores) == {"colour", "text", "overall"} and scores["colour"]["n"] == 4
