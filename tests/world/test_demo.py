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


def test_stage_prefixed_overrides_reach_one_stage_only(tmp_path):
    from owl.world.demo import load_profile

    over = ["stage1.optim.lr=2e-4", "stage2.train.max_steps=7", "train.log_every=3", "world.n_eval=24"]
    spec, s1, s2 = load_profile("full", tmp_path, 0, over)
    assert s1.optim.lr == 2e-4 and s2.optim.lr != 2e-4
    assert s2.train.max_steps == 7 and s1.train.max_steps != 7
    assert s1.train.log_every == s2.train.log_every == 3 and spec.n_eval == 24


def test_full_and_long_profiles_load_and_differ_only_in_stage1_length(tmp_path):
    """The shipped recipes parse (no model is built): stage 1 reads the one-object and the 1-4-object captions,
    stage 2 keeps the captions next to the instructions, and the long profile is the full one with more steps,
    half the stage-1 lr, the 8x8 feature grid (EfficientNet block 10) and the abstractor kept frozen in stage 2."""
    from dataclasses import asdict

    from owl.world.demo import load_profile

    full = load_profile("full", tmp_path / "f", 0, None)
    long = load_profile("long", tmp_path / "l", 0, None)
    spec, s1, s2 = full
    assert spec.n_captions_single > 0 and spec == long[0]
    assert [s.name for s in s1.data.sources] == ["captions", "captions_single"]
    assert s1.data.sources[1].path == str(tmp_path / "f" / "world" / "captions_single.jsonl")
    assert {s.name for s in s2.data.sources} == {"multimodal", "text", "captions"}
    assert s1.schedule.name == "constant" and s2.init_from == str(tmp_path / "f" / "stage1")
    assert long[1].train.max_steps > s1.train.max_steps and long[2].train.max_steps > s2.train.max_steps
    assert (long[1].train.time_budget_min, s1.train.time_budget_min, s2.train.time_budget_min) == (38, 5, 4.5)
    assert long[1].optim.lr == s1.optim.lr / 2 and long[1].optim.lr_groups["vision"] == s1.optim.lr_groups["vision"] / 2
    assert (long[2].trainable.abstractor, long[2].trainable.queries) == ("frozen", "frozen")  # stage 1 left it reading
    grids = [p.model.overrides["vision"]["feature_block"] for p in (s1, long[1])]
    assert grids == [None, 10]  # the long profile reads EfficientNet's 8x8 block-10 grid, the full one its 4x4 head
    for a, b in ((s1, long[1]), (s2, long[2])):
        da, db = asdict(a), asdict(b)
        for d in (da, db):
            d.pop("output_dir"), d.pop("init_from"), d["data"].pop("sources"), d["train"].pop("max_steps")
            d["train"].pop("time_budget_min")
            d["optim"].pop("lr"), d["optim"].pop("lr_groups")
            d["trainable"].pop("abstractor"), d["trainable"].pop("queries")
            d["model"]["overrides"].get("vision", {}).pop("feature_block", None)
        assert da == db
