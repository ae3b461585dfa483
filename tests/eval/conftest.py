"""Fixtures for owl.eval: a tiny random model directory whose answers differ between prompts."""

from __future__ import annotations

import argparse

import pytest
import torch


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory):
    """The tiny preset (LLaMA, byte tokenizer) with LLM weights scaled up (different prompts, different answers)
    and room for OwlEval's 8-turn dialogue (processor.max_length 4096)."""
    from owl.config import preset
    from owl.models import build_model, save_pretrained
    from owl.tokenizer import byte_tokenizer

    config = preset("tiny")
    config.processor.max_length = 4096
    torch.manual_seed(3)
    model, config, _ = build_model(config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5, generator=g)
    path = tmp_path_factory.mktemp("eval-model") / "tiny-owl"
    save_pretrained(model, path, tokenizer=byte_tokenizer())
    return path


def eval_main(argv: list[str]) -> int:
    """``owl eval ...`` through the real parser: owl.cli's when it has the eval group, else one built here with
    :func:`owl.eval.cli.add_eval_parser` and owl.cli's error handling."""
    import owl.cli
    from owl.eval.cli import add_eval_parser

    parser = owl.cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "eval" in sub.choices:
        return owl.cli.main(["eval", *map(str, argv)])
    own = argparse.ArgumentParser(prog="owl")
    add_eval_parser(own.add_subparsers(dest="command", required=True))
    original = owl.cli.build_parser
    owl.cli.build_parser = lambda: own
    try:
        return owl.cli.main(["eval", *map(str, argv)])
    finally:
        owl.cli.build_parser = original
