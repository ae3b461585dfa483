"""The `owl` command end to end: new, info, and one-line errors."""

from __future__ import annotations

import json
import re

from tests.helpers import run_cli


def test_info_7b_preset_reports_reference_sizes_without_allocating():
    r = run_cli("info", "mplug-owl-llama-7b", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    p = d["parameters"]
    assert 7.10e9 < p["total"] < 7.14e9
    assert round(p["vision"] / 1e6) == 303 and round(p["abstractor"] / 1e5) == 815 and round(p["llm"] / 1e7) == 674
    assert d["visual_tokens_per_image"] == 65 and d["vision"]["tokens"] == 257


def test_new_then_info(tmp_path):
    out = tmp_path / "d"
    r = run_cli("new", "--preset", "tiny", "--out", out, "--set", "abstractor.num_queries=8")
    assert r.returncode == 0, r.stderr
    r = run_cli("info", out, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["visual_tokens_per_image"] == 9 and d["parameters"]["total"] > 0
    r = run_cli("info", out)
    assert "abstractor" in r.stdout and "visual tokens per image: 9" in r.stdout


def test_new_from_local_hf_parts(tmp_path):
    import torch
    from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from owl.config import VisionConfig
    from owl.models.vision import ClipVisionTower
    from owl.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    CLIPVisionModel(
        ClipVisionTower.hf_config(
            VisionConfig(image_size=28, hidden_size=24, num_layers=1, num_heads=2, intermediate_size=48, patch_size=14)
        )
    ).save_pretrained(tmp_path / "clip")
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=259,
            hidden_size=40,
            intermediate_size=80,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tmp_path / "llm")
    byte_tokenizer().save_pretrained(tmp_path / "llm")
    r = run_cli(
        "new",
        "--preset",
        "tiny",
        "--out",
        tmp_path / "m",
        "--vision-from",
        tmp_path / "clip",
        "--llm-from",
        tmp_path / "llm",
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(run_cli("info", tmp_path / "m", "--json").stdout)
    assert d["vision"]["width"] == 24 and d["llm"]["hidden_size"] == 40
    assert (tmp_path / "m" / "tokenizer.json").exists()


def test_errors_are_one_readable_line_from_the_real_command():
    r = run_cli("info", "no-such-preset")
    assert r.returncode == 2
    assert r.stderr.strip() == ("owl: error: unknown preset 'no-such-preset'; known presets: mplug-owl-llama-7b, tiny")


def test_errors_are_one_readable_line(tmp_path, capsys):
    from owl.cli import main

    cases = [
        (["info", tmp_path / "missing-dir/"], "not found"),
        (["info", tmp_path], "not an owl model directory"),
        (
            ["new", "--preset", "tiny", "--out", tmp_path / "x", "--set", "abstractor.num_querie=3"],
            "did you mean abstractor.num_queries",
        ),
        (["new", "--preset", "tiny", "--out", tmp_path / "x", "--llm-from", tmp_path / "nope"], "LLM not found"),
        (
            ["new", "--preset", "tiny", "--out", tmp_path / "x", "--set", "abstractor"],
            "must look like section.key=value",
        ),
    ]
    for args, expected in cases:
        assert main([str(a) for a in args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("owl: error:") and expected in lines[0], (args, lines)


def test_recipe_mistakes_are_one_line_and_leave_nothing_behind(tmp_path):
    """A YAML syntax error names file:line:column; a missing data file fails before any model is built."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: out\ndata:\n  sources: [ {name: a\n")
    r = run_cli("train", bad, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith(f"owl: error: {bad}:4:1: YAML syntax error")
    assert len(r.stderr.strip().splitlines()) == 1
    recipe = tmp_path / "missing.yaml"
    recipe.write_text(
        "output_dir: out\nmodel: {preset: tiny, tokenizer: byte}\n"
        "data: {sources: [{name: caps, format: captions, path: nope/captions.jsonl}]}\ntrain: {max_steps: 1}\n"
    )
    r = run_cli("train", recipe, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "no file matches path 'nope/captions.jsonl'" in lines[0]
    assert not (tmp_path / "out").exists()
    r = run_cli("world", "build", "--out", tmp_path / "w", "--spec", tmp_path / "no-spec.yaml")
    assert r.returncode == 2 and r.stderr.strip() == f"owl: error: config file not found: {tmp_path / 'no-spec.yaml'}"


def test_a_bug_keeps_its_traceback_and_exits_1(monkeypatch, capsys):
    import owl.cli

    def broken(_args):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(owl.cli, "cmd_info", broken)
    assert owl.cli.main(["info", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: an internal bug" in err


def test_world_build_from_a_spec_with_flag_overrides(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("seed: 3\nimage_size: 48\nn_captions: 5\nn_instructions: 4\nn_text: 2\nn_eval: 4\n")
    r = run_cli("world", "build", "--out", tmp_path / "w", "--spec", spec, "--n-captions", "7")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((tmp_path / "w" / "captions.jsonl").read_text().splitlines()) == 7
    stamp = json.loads((tmp_path / "w" / "owl_world_spec.json").read_text())
    assert stamp["seed"] == 3 and stamp["n_captions"] == 7 and stamp["image_size"] == 48


def test_world_build_single_object_captions_flag_and_bad_value(tmp_path):
    """--n-captions-single through the real CLI writes the curriculum's one-object captions; a negative count is one
    readable line, exit 2, not a traceback."""
    small = ["--image-size", "48", "--n-captions", "2", "--n-instructions", "2", "--n-text", "1", "--n-eval", "2"]
    r = run_cli("world", "build", "--out", tmp_path / "w", *small, "--n-captions-single", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "captions_single 3" in r.stdout
    assert len((tmp_path / "w" / "captions_single.jsonl").read_text().splitlines()) == 3
    bad = run_cli("world", "build", "--out", tmp_path / "bad", *small, "--n-captions-single", "-1")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "n_captions_single=-1" in lines[0], bad.stderr
    assert not (tmp_path / "bad").exists()


def test_world_build_spec_options_and_bad_values_through_the_cli(tmp_path):
    """balance_answers and caption_position_first from a spec file reach the built world (stamped, and every caption
    names its objects place first at share 1); a bad value of either is one readable line, exit 2, nothing written."""
    base = "seed: 1\nimage_size: 48\nn_captions: 4\nn_instructions: 12\nn_text: 1\nn_eval: 2\n"
    spec = tmp_path / "spec.yaml"
    spec.write_text(base + "balance_answers: 1.5\ncaption_position_first: 1.0\n")
    r = run_cli("world", "build", "--out", tmp_path / "w", "--spec", spec)
    assert r.returncode == 0, r.stderr[-2000:]
    stamp = json.loads((tmp_path / "w" / "owl_world_spec.json").read_text())
    assert stamp["balance_answers"] == 1.5 and stamp["caption_position_first"] == 1.0
    for line in (tmp_path / "w" / "captions.jsonl").read_text().splitlines():
        text = json.loads(line)["caption"]
        assert re.search(r"(^|: )(at the|on the|in the) [a-z ]+ a (small|large) ", text, re.I), text
    for key, value in (("balance_answers", "0.5"), ("caption_position_first", "2")):
        spec.write_text(base + f"{key}: {value}\n")
        bad = run_cli("world", "build", "--out", tmp_path / key, "--spec", spec)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and f"{key}={value}" in lines[0], bad.stderr
        assert not (tmp_path / key).exists()


def test_every_command_and_subcommand_help_renders():
    """argparse formats help lazily: a stray % in a help string only fails when someone asks for --help."""
    import argparse

    from owl.cli import build_parser

    def walk(parser: argparse.ArgumentParser) -> int:
        parser.format_help()
        n = 1
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    n += walk(child)
        return n

    assert walk(build_parser()) > 25
