"""`owl merge-lora` and `owl export`: merged == unmerged logits, a transformers-only LLM, the visual front end."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import GenerationConfig

from owl.cli import main
from owl.conversation import Message, Sample
from owl.models import load_model, save_pretrained
from owl.models.checkpoint import GENERATION_CONFIG_NAME
from owl.processing import OwlProcessor
from owl.train.config import LoraSpec, Trainable
from owl.train.trainable import apply_trainable
from tests.helpers import random_image
from tests.models.test_lora_merge import _make, _randomise_lora_b

TOL = 1e-5
GEN = GenerationConfig(max_length=300, do_sample=True, top_k=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _batch_samples() -> list[Sample]:
    """One sample with an image and one text-only."""
    return [
        Sample([Message("user", "<image>\nWhat is it?"), Message("assistant", "A square.")], [random_image(11)]),
        Sample([Message("user", "Say something longer, please."), Message("assistant", "Something.")]),
    ]


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def _cli(capsys, *args) -> tuple[int, list[str]]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, (captured.err if rc else captured.out).strip().splitlines()


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A tiny model directory with an unmerged LLM adapter (random lora_B, so it matters) and a generation config."""
    model, proc = _make(seed=3)
    apply_trainable(model, Trainable(llm="lora"), LoraSpec(r=4, alpha=8, dropout=0.0))
    assert _randomise_lora_b(model.llm, seed=1) > 0
    path = tmp_path_factory.mktemp("lora") / "m"
    save_pretrained(model, path, tokenizer=proc.tokenizer, generation_config=GEN)
    assert (path / "adapter").is_dir()
    return path


def test_merge_lora_gives_the_same_logits_through_the_cli(lora_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    rc, lines = _cli(capsys, "merge-lora", lora_dir, out)
    assert rc == 0 and lines == [f"wrote {out} (LoRA merged into the weights)"]
    assert not (out / "adapter").exists()
    assert json.loads((out / "config.json").read_text()) == json.loads((lora_dir / "config.json").read_text())
    for name in (GENERATION_CONFIG_NAME, "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (lora_dir / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # nothing half-written left behind

    proc = OwlProcessor.from_pretrained(out)
    batch = proc(_batch_samples())
    assert batch["pixel_values"].shape[0] == 1 and batch["image_counts"].tolist() == [1, 0]
    unmerged = _logits(load_model(lora_dir), batch)
    merged_model = load_model(out)
    assert not any("lora_" in n for n, _ in merged_model.named_parameters())
    assert (_logits(merged_model, batch) - unmerged).abs().max().item() <= TOL
    base = _logits(load_model(lora_dir, load_adapter=False), batch)
    assert (base - unmerged).abs().max().item() > 1e-3  # the adapter matters: the comparison is not vacuous


def test_merge_lora_errors_are_one_line(lora_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    assert _cli(capsys, "merge-lora", lora_dir, out)[0] == 0
    rc, lines = _cli(capsys, "merge-lora", out, tmp_path / "again")  # the merged model has no adapter
    assert rc == 2 and len(lines) == 1 and "has no LoRA adapter (adapter/)" in lines[0], lines
    rc, lines = _cli(capsys, "merge-lora", lora_dir, out)
    assert rc == 2 and lines == [f"owl: error: {out} already exists; pass --force to replace it"]
    assert _cli(capsys, "merge-lora", lora_dir, out, "--force")[0] == 0
    rc, lines = _cli(capsys, "merge-lora", lora_dir, lora_dir.parent, "--force")
    assert rc == 2 and len(lines) == 1 and "choose another one" in lines[0]
    assert (lora_dir / "adapter").is_dir()  # the source is untouched
    rc, lines = _cli(capsys, "merge-lora", tmp_path / "nope", tmp_path / "x")
    assert rc == 2 and len(lines) == 1 and "model directory not found" in lines[0]


def test_export_llm_loads_with_transformers_alone(lora_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "llm"
    rc, lines = _cli(capsys, "export", lora_dir, out, "--part", "llm")
    assert rc == 0 and lines[0].startswith(f"wrote {out}: ") and "tokenizer" in lines[0]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert json.loads((out / GENERATION_CONFIG_NAME).read_text()) == json.loads(
        (lora_dir / GENERATION_CONFIG_NAME).read_text()
    )

    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert hf.generation_config.top_k == 3 and hf.generation_config.max_length == 300
    owl_model = load_model(lora_dir)  # with its adapter: the export must have merged it
    proc = OwlProcessor.from_pretrained(lora_dir)
    text = _batch_samples()[1]
    batch = proc([text])
    assert tok("hello world")["input_ids"] == proc.tokenizer("hello world")["input_ids"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        hf_logits = hf(**inputs).logits
    owl_logits = _logits(owl_model, inputs)
    assert hf_logits.shape == owl_logits.shape and (hf_logits - owl_logits).abs().max().item() <= TOL
    assert (hf_logits - _logits(load_model(lora_dir, load_adapter=False), inputs)).abs().max().item() > 1e-3


def test_export_llm_without_generation_config_gets_owl_length(tmp_path, capsys):
    model, proc = _make(seed=5)
    save_pretrained(model, tmp_path / "m", tokenizer=proc.tokenizer)
    assert _cli(capsys, "export", tmp_path / "m", tmp_path / "llm", "--part", "llm")[0] == 0
    gc = json.loads((tmp_path / "llm" / GENERATION_CONFIG_NAME).read_text())
    assert gc["max_new_tokens"] == 256 and gc["eos_token_id"] == 2


def test_export_vision_abstractor_reproduces_encode_images(lora_dir, tmp_path, capsys, monkeypatch):
    from owl.export import VISUAL_CONFIG, VISUAL_WEIGHTS, load_vision_abstractor

    out = tmp_path / "visual"
    rc, _ = _cli(capsys, "export", lora_dir, out, "--part", "vision-abstractor")
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", VISUAL_CONFIG, VISUAL_WEIGHTS])
    model = load_model(lora_dir).eval()
    meta = json.loads((out / VISUAL_CONFIG).read_text())
    cfg = model.config
    assert meta["num_visual_tokens"] == cfg.num_visual_tokens and meta["llm_hidden_size"] == cfg.llm.hidden_size
    assert meta["image"]["size"] == cfg.vision.image_size and meta["image"]["mean"] == list(cfg.vision.image_mean)
    assert meta["vision"]["num_layers"] == cfg.vision.num_layers and meta["abstractor"]["num_queries"] == 4

    from safetensors.torch import load_file

    keys = load_file(str(out / VISUAL_WEIGHTS)).keys()
    assert keys and all(k.startswith(("vision.", "abstractor.")) for k in keys)
    n = cfg.vision.image_size
    pixels = torch.randn(3, 3, n, n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.encode_images(pixels)
        vision, abstractor, _ = load_vision_abstractor(out)
        assert expected.shape == (3, cfg.num_visual_tokens, cfg.llm.hidden_size)
        assert torch.equal(abstractor(vision(pixels)), expected)

    # The README's by-hand snippet runs as written in the export directory and gives the same tokens.
    readme = (out / "README.md").read_text()
    assert "inputs_embeds" in readme
    snippet = re.findall(r"```python\n(.*?)```", readme, re.S)[1]
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(snippet, scope)
    with torch.no_grad():
        assert torch.equal(scope["abstractor"].eval()(scope["vision"].eval()(pixels)), expected)


def test_export_refuses_to_overwrite_and_checks_the_part(lora_dir, tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    rc, lines = _cli(capsys, "export", lora_dir, out, "--part", "llm")
    assert rc == 2 and lines == [f"owl: error: {out} already exists; pass --force to replace it"]
    assert _cli(capsys, "export", lora_dir, out, "--part", "vision-abstractor", "--force")[0] == 0
    assert (out / "README.md").exists()
    with pytest.raises(SystemExit):
        main(["export", str(lora_dir), str(tmp_path / "y"), "--part", "everything"])
