"""Generation settings travel with the model: generation_config.json < explicit values, owl's defaults without it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GenerationConfig

from owl.cli import main
from owl.conversation import Message, Sample
from owl.errors import CheckpointError, InputError
from owl.generation import BUILTIN_DEFAULTS, GenerationOptions, _hf_config, generate, load_generation_defaults
from owl.models import load_model, save_pretrained
from owl.models.checkpoint import GENERATION_CONFIG_NAME, load_generation_config
from owl.processing import OwlProcessor
from tests.test_generation import make, prompts

EXTRA = 7  # new tokens the test model's max_length leaves after the first prompt


def _prompt_len(proc: OwlProcessor, sample: Sample) -> int:
    return len(proc.encode(sample, for_generation=True).input_ids)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model whose generation_config.json samples with top_k=1 (= greedy) up to max_length in total."""
    model, proc = make(seed=3)
    max_length = _prompt_len(proc, prompts()[0]) + EXTRA
    gc = GenerationConfig(
        max_length=max_length, do_sample=True, top_k=1, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    path = tmp_path_factory.mktemp("gen") / "m"
    save_pretrained(model, path, tokenizer=proc.tokenizer, generation_config=gc)
    return path


@pytest.fixture(scope="module")
def no_eos_model(model_dir):
    """The saved model, loaded, with EOS made impossible so every answer runs to its length limit."""
    model = load_model(model_dir).eval()
    proc = OwlProcessor.from_pretrained(model_dir)
    head = model.causal_lm.lm_head
    head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    with torch.no_grad():
        head.bias[proc.tokenizer.eos_token_id] = -1e4
    return model, proc


def test_save_and_load_generation_config(model_dir, tmp_path):
    gc = load_generation_config(model_dir)
    assert gc.do_sample is True and gc.top_k == 1 and gc.max_length > EXTRA
    model, proc = make(seed=1)
    save_pretrained(model, tmp_path / "d", generation_config={"max_new_tokens": 9, "do_sample": False})
    assert json.loads((tmp_path / "d" / GENERATION_CONFIG_NAME).read_text())["max_new_tokens"] == 9
    save_pretrained(model, tmp_path / "none")
    assert (
        not (tmp_path / "none" / GENERATION_CONFIG_NAME).exists() and load_generation_config(tmp_path / "none") is None
    )


def test_model_defaults_fill_unset_fields(model_dir):
    opts = GenerationOptions.for_model(model_dir)
    assert opts.do_sample is True and opts.top_k == 1 and opts.max_new_tokens is None
    assert opts.max_length == load_generation_config(model_dir).max_length
    assert opts.temperature == 1.0 and opts.top_p == 1.0 and opts.eos_token_id == [2]  # the rest: owl's defaults
    assert "sampling" in opts.describe() and "in total" in opts.describe()


def test_max_length_counts_each_prompt_and_top_k_1_sampling_equals_greedy(model_dir, no_eos_model):
    model, proc = no_eos_model
    samples = prompts()[:2]  # 194 and 231 prompt tokens: a batch with left padding
    lengths = [_prompt_len(proc, s) for s in samples]
    assert lengths[1] > lengths[0]
    opts = GenerationOptions.for_model(model_dir, max_length=max(lengths) + 4)
    out = generate(model, proc, samples, opts)
    assert [c.completion_tokens for c in out] == [opts.max_length - n for n in lengths]
    assert all(c.finish_reason == "length" for c in out)
    for sample, n, c in zip(samples, lengths, out):
        greedy = generate(model, proc, [sample], GenerationOptions(max_new_tokens=opts.max_length - n))[0]
        assert c.text == greedy.text
    default = generate(model, proc, samples[:1], GenerationOptions.for_model(model_dir))[0]
    assert default.completion_tokens == EXTRA


def test_explicit_values_win(model_dir, no_eos_model):
    model, proc = no_eos_model
    opts = GenerationOptions.for_model(model_dir, max_new_tokens=3, do_sample=False)
    assert (opts.max_new_tokens, opts.max_length, opts.do_sample) == (3, None, False)
    assert generate(model, proc, prompts()[:1], opts)[0].completion_tokens == 3
    sampled = GenerationOptions.for_model(model_dir, top_k=0, temperature=2.0, seed=1, max_new_tokens=12)
    assert sampled.do_sample and sampled.top_k == 0 and sampled.temperature == 2.0  # sampling from the file
    assert _hf_config(sampled, 12, [2], 0).top_k == 0  # passed as 0: transformers would fill an unset one with 50
    greedy = generate(model, proc, prompts()[:1], GenerationOptions(max_new_tokens=12))[0].text
    assert generate(model, proc, prompts()[:1], sampled)[0].text != greedy


def test_layering_rules():
    model = GenerationOptions(max_length=512, do_sample=True, top_k=3)
    assert GenerationOptions(max_new_tokens=5).resolve(model).max_length is None  # the user's limit replaces it
    assert GenerationOptions(max_length=40).resolve(GenerationOptions(max_new_tokens=5)).max_new_tokens is None
    both = GenerationOptions(max_new_tokens=5, max_length=40).resolve()
    assert (both.max_new_tokens, both.max_length) == (5, None)  # same layer: max_new_tokens wins, as transformers
    assert GenerationOptions().resolve() == BUILTIN_DEFAULTS
    assert GenerationOptions(stop=[]).resolve(GenerationOptions(stop=["x"])).stop == []  # explicit "none" is set
    released = GenerationOptions.from_generation_config(
        GenerationConfig(
            max_length=512, do_sample=True, top_k=3, pad_token_id=0, unk_token_id=0, bos_token_id=1, eos_token_id=2
        )
    ).resolve()
    assert (released.max_length, released.do_sample, released.top_k, released.temperature) == (512, True, 3, 1.0)
    # A file that turns sampling on without top_k was tuned with transformers' default top_k.
    assert GenerationOptions.from_generation_config(GenerationConfig(do_sample=True, top_p=0.9)).top_k == 50
    with pytest.raises(InputError, match=r"temperature=0 must be > 0 when sampling"):
        GenerationOptions(temperature=0).resolve(model)
    with pytest.raises(InputError, match="max_length=1"):
        GenerationOptions(max_length=1)


def test_without_a_file_owl_defaults_apply(tmp_path):
    model, proc = make(seed=2)
    save_pretrained(model, tmp_path / "m", tokenizer=proc.tokenizer)
    assert load_generation_defaults(tmp_path / "m") == GenerationOptions()
    opts = GenerationOptions.for_model(tmp_path / "m")
    assert opts == BUILTIN_DEFAULTS and (opts.do_sample, opts.max_new_tokens) == (False, 256)


def test_max_length_shorter_than_the_prompt_is_a_clear_error(no_eos_model):
    model, proc = no_eos_model
    with pytest.raises(InputError, match=r"the prompt has 194 tokens .* max_length=50 .* set max_new_tokens"):
        generate(model, proc, prompts()[:1], GenerationOptions(max_length=50))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"top_p": 2.0}', "top_p=2.0 must be in (0, 1]"),
        ('{"max_new_tokens": "many"}', "not a valid generation config"),
    ],
)
def test_malformed_file_is_one_clear_error(model_dir, tmp_path, capsys, text, expected):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / GENERATION_CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=GENERATION_CONFIG_NAME):
        load_generation_defaults(bad)
    assert main(["chat", str(bad), "--message", "hi"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("owl: error:") and expected in lines[0], lines


def test_chat_cli_uses_the_model_defaults_and_flags_override(model_dir, capsys):
    model, proc = load_model(model_dir).eval(), OwlProcessor.from_pretrained(model_dir)
    sample = Sample([Message("user", "hi")])
    budget = load_generation_config(model_dir).max_length - _prompt_len(proc, sample)
    greedy = generate(model, proc, [sample], GenerationOptions(max_new_tokens=budget))[0].text.strip()

    assert main(["chat", str(model_dir), "--message", "hi"]) == 0
    out = capsys.readouterr()
    assert out.out == greedy + "\n" and out.err == ""  # nothing new printed unless asked

    assert main(["chat", str(model_dir), "--message", "hi", "--show-settings"]) == 0
    assert "sampling (temperature 1, top_k 1, top_p 1)" in capsys.readouterr().err

    assert (
        main(["chat", str(model_dir), "--message", "hi", "--greedy", "--max-new-tokens", "3", "--show-settings"]) == 0
    )
    assert "greedy, up to 3 new tokens" in capsys.readouterr().err

    flags = ["--message", "hi", "--top-k", "0", "--temperature", "2", "--seed", "4", "--max-new-tokens", "12"]
    answers = []
    for _ in range(2):
        assert main(["chat", str(model_dir), *flags]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]  # --seed makes sampling reproducible

    assert main(["chat", str(model_dir), "--message", "hi", "--sample", "--temperature", "0"]) == 2
    assert "temperature=0.0 must be > 0 when sampling" in capsys.readouterr().err
