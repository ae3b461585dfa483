"""`owl bench peers`: the three families build from configs, train what each stage says (and nothing else), and
the real command writes JSON and markdown with ratios; bad values are one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from owl.bench import peers
from tests.helpers import run_cli

# Seconds per model on one thread: every family at micro size, the same shapes as the real run otherwise.
MICRO = peers.Setup(
    image_size=28,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=4,
    vision_mlp=64,
    owl_queries=4,
    abstractor_layers=1,
    abstractor_mlp=64,
    blip2_queries=4,
    qformer_layers=2,
    qformer_mlp=64,
    pooled_side=1,
    text_len=8,
)
MICRO_LLM = peers._llama(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=512)


def _grads(entry: peers.Entry) -> dict[str, tuple[int, int]]:
    """Per group: (parameters with a nonzero gradient, parameters that require grad)."""
    return {
        g: (
            sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in params),
            sum(p.requires_grad for _, p in params),
        )
        for g, params in entry.groups.items()
    }


@pytest.mark.parametrize("stage", [1, 2])
def test_each_family_trains_what_its_stage_says(stage, tmp_path):
    entries = peers.build_entries(MICRO_LLM, MICRO, stage, batch=2, out=str(tmp_path))
    assert [e.label for e in entries] == [
        "owl (plain loop)",
        "owl (owl trainer)",
        "llava-all (plain loop)",
        "llava-64 (plain loop)",
        "blip2 (plain loop)",
    ]
    # Each family's visual tokens as its class expects them, after the same text.
    assert [e.image_tokens for e in entries] == [5, 5, 4, 1, 4]
    assert [e.seq_len - e.image_tokens for e in entries] == [MICRO.text_len] * 5
    for e in entries:
        loss = e.forward()
        assert math.isfinite(loss.item()), e.label
        loss.backward()
        got = _grads(e)
        for name, p in (kv for params in e.groups.values() for kv in params):
            if not p.requires_grad:  # frozen: autograd never touched it
                assert p.grad is None, (e.label, name)
        assert got["connector"][0] > 0, (e.label, got)
        if stage == 1:
            assert got["vision"][0] > 0 and got["llm"][1] == 0, (e.label, got)
        else:
            assert got["vision"][1] == 0, (e.label, got)
            lora = [(n, p) for n, p in e.groups["llm"] if p.requires_grad]
            assert lora and all("lora_" in n for n, _ in lora), (e.label, lora[:2])
            # LoRA's B starts at zero: B gets a gradient at once, A only once B has moved.
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora), e.label
        e.model.zero_grad(set_to_none=True)

    for e in entries:  # a few optimizer steps: finite losses, the trainable parts move, the frozen ones do not
        before = {n: p.detach().clone() for params in e.groups.values() for n, p in params}
        losses = [e.step() for _ in range(3)]
        assert all(math.isfinite(x) for x in losses), (e.label, losses)
        params = {n: p for group in e.groups.values() for n, p in group}
        moved = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
        frozen = {n for n, p in params.items() if not p.requires_grad}
        assert moved and not (moved & frozen), (e.label, sorted(moved & frozen)[:3])
        assert any(n in moved for n, _ in e.groups["connector"]), e.label


def test_timing_summary_and_markdown():
    entries = peers.build_entries(MICRO_LLM, MICRO, 1, batch=1, modes=("model-only",), peers=("llava-64",))
    timed = peers.time_entries(entries, rounds=2)
    rows = peers.summarise(entries, timed, batch=1, peak={"fp32": 1.0})
    assert [r["model"] for r in rows] == ["owl", "llava-64"]
    for r in rows:
        assert len(r["step_s_all"]) == 2 and r["flops_per_step"] > 0 and 0 < r["mfu"] < 1
        assert r["ratio_vs_owl"]["model-only"] == pytest.approx(r["step_s"] / rows[0]["step_s"])
    # owl's abstractor costs FLOPs that a pooled projector does not
    assert rows[0]["flops_per_step"] > rows[1]["flops_per_step"]


def test_pooled_projector_makes_side_squared_tokens():
    proj = peers.PooledProjector(torch.nn.Identity(), side=2)
    x = torch.arange(16.0).view(1, 16, 1)  # a 4 x 4 grid, one channel
    assert proj(x).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_cli_writes_json_and_markdown_with_ratios(tmp_path):
    r = run_cli(
        "bench", "peers", "--llm", "tiny", "--stages", "2", "--batch", "1", "--rounds", "1",
        "--image-size", "28", "--out", tmp_path, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "peers.json").read_text())
    (cell,) = d["cells"]
    assert (cell["llm"], cell["stage"], cell["batch"], cell["rounds"]) == ("tiny", 2, 1, 1)
    models = [(row["model"], row["loop"]) for row in cell["rows"]]
    assert models == [("owl", "plain"), ("owl", "owl-trainer"), ("llava-all", "plain"), ("llava-64", "plain")] + [
        ("blip2", "plain")
    ]
    for row in cell["rows"]:
        assert set(row["ratio_vs_owl"]) == {"model-only", "trainer"} and row["step_s"] > 0
    assert cell["rows"][0]["ratio_vs_owl"]["model-only"] == 1.0 and d["peak"]["fp32"]["tflops"] > 0
    md = (tmp_path / "peers.md").read_text()
    assert "### tiny, stage 2" in md and "ratio vs owl trainer" in md and "| llava-64 | plain |" in md
    assert "round 1/1" in r.stdout and "written to" in r.stdout


@pytest.mark.parametrize(
    "args, start",
    [
        (["--llm", "gpt5"], "owl: error: --llm 'gpt5'"),
        (["--stages", "3"], "owl: error: --stages '3'"),
        (["--image-size", "100"], "owl: error: --image-size 100"),
    ],
)
def test_bad_values_are_one_line_errors(args, start, tmp_path):
    r = run_cli("bench", "peers", *args, "--out", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.startswith(start), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
