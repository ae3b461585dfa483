"""Generation: batched == one at a time, sampling reproducibility, stop strings, lengths."""

from __future__ import annotations

import pytest
import torch

from owl.conversation import Message, Sample
from owl.generation import GenerationOptions, generate
from tests.helpers import random_image
from tests.models.test_owl import make as make_model


def make(family: str = "llama", seed: int = 0):
    """A tiny model whose LLM weights are large enough that different prompts give different text."""
    model, proc = make_model(family, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5, generator=g)
    return model, proc


def prompts():
    a, b = random_image(1), random_image(2)
    return [
        Sample([Message("user", "<image>\nWhat is it?")], [a]),
        Sample([Message("user", "A much longer text-only question, to force left padding here?")]),
        Sample([Message("user", "<image>\n<image>\nCompare.")], [a, b]),
        Sample([Message("user", "<image>\nFirst?"), Message("assistant", "A."), Message("user", "Then?")], [b]),
    ]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_batched_greedy_equals_one_at_a_time(family):
    model, proc = make(family, seed=3)
    opts = GenerationOptions(max_new_tokens=10)
    batched = generate(model, proc, prompts(), opts, batch_size=4)
    single = [generate(model, proc, [p], opts)[0] for p in prompts()]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in single]
    assert len({c.text for c in batched}) > 1  # not a degenerate constant output


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    model, proc = make(seed=4)
    p = prompts()[:2]
    opts = GenerationOptions(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    a, b = generate(model, proc, p, opts), generate(model, proc, p, opts)
    assert [x.text for x in a] == [x.text for x in b]
    opts.seed = 8
    assert [x.text for x in generate(model, proc, p, opts)] != [x.text for x in a]


def test_max_new_tokens_and_finish_reason():
    model, proc = make(seed=3)
    out = generate(model, proc, prompts()[:1], GenerationOptions(max_new_tokens=5))[0]
    assert out.completion_tokens <= 5 and out.finish_reason in ("length", "stop")
    if out.finish_reason == "length":
        assert out.completion_tokens == 5
    assert out.prompt_tokens == len(proc.encode(prompts()[0], for_generation=True).input_ids)


def test_stop_strings_cut_the_text():
    model, proc = make(seed=3)
    full = generate(model, proc, prompts()[:1], GenerationOptions(max_new_tokens=12))[0].text
    assert len(full) > 3
    stop = full[2:4]
    out = generate(model, proc, prompts()[:1], GenerationOptions(max_new_tokens=12, stop=[stop]))[0]
    assert out.text == full[: full.find(stop)] and out.finish_reason == "stop"


def test_eos_stops_generation():
    model, proc = make(seed=3)
    with torch.no_grad():  # make EOS the most likely token everywhere
        model.causal_lm.lm_head.bias = torch.nn.Parameter(torch.zeros(model.causal_lm.lm_head.out_features))
        model.causal_lm.lm_head.bias[proc.tokenizer.eos_token_id] = 1e4
    out = generate(model, proc, prompts()[:2], GenerationOptions(max_new_tokens=8))
    assert all(c.text == "" and c.finish_reason == "stop" and c.completion_tokens == 0 for c in out)


@pytest.mark.parametrize(
    "bad", [dict(max_new_tokens=0), dict(do_sample=True, temperature=0), dict(top_p=0), dict(top_k=-1), dict(stop=[""])]
)
def test_option_validation(bad):
    with pytest.raises(ValueError):
        GenerationOptions(**bad)


def test_prompt_must_end_with_user_turn():
    from owl.conversation import SampleError

    model, proc = make()
    with pytest.raises(SampleError, match="must end with a user turn"):
        generate(model, proc, [Sample([Message("user", "q"), Message("assistant", "a")])])
