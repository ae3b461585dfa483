"""Damaged model directories, one table row each (tests/reliability/damage.py holds the damage): loading must end in
one error that names the file and what is wrong with it, never a traceback from safetensors, json or peft, and
never unpickle anything. A few rows also go through the real CLI (`owl chat`), which must exit 2 with one line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from owl.cli import main
from owl.errors import CheckpointError, ConfigError, OwlError
from owl.models import load_model
from owl.models.checkpoint import load_generation_config
from owl.processing import OwlProcessor
from tests.reliability.damage import DAMAGE, fresh_copy

# id -> (error class, regex of its message)
EXPECTED: dict[str, tuple[type[OwlError], str]] = {
    "modeldir-empty": (CheckpointError, r"is not an owl model directory \(no config.json\); create one with `owl new`"),
    "modeldir-config-missing": (CheckpointError, r"is not an owl model directory \(no config.json\)"),
    "modeldir-config-invalid-json": (ConfigError, r"config.json:1:13: invalid JSON"),
    "modeldir-config-not-object": (ConfigError, r"config.json: expected a JSON object of config sections, got list"),
    "modeldir-config-binary": (ConfigError, r"config.json: not UTF-8 text \(byte 0\)"),
    "modeldir-config-unknown-key": (ConfigError, r"config.json: unknown config key visoin; did you mean vision\?"),
    "modeldir-config-wrong-type": (ConfigError, r"config.json: abstractor.num_queries='many' must be an integer"),
    "modeldir-config-impossible": (ConfigError, r"abstractor.hidden_size=32 is not divisible by abstractor.num_heads=5"),
    "modeldir-weights-missing": (CheckpointError, r"no model.safetensors or model.safetensors.index.json in"),
    "modeldir-weights-empty": (CheckpointError, r"model.safetensors is not a readable safetensors file \(.*header too small"),
    "modeldir-weights-cut-in-length": (CheckpointError, r"not a readable safetensors file \(.*header too small"),
    "modeldir-weights-cut-in-header": (CheckpointError, r"not a readable safetensors file \(.*invalid header length"),
    "modeldir-weights-cut-after-header": (CheckpointError, r"not a readable safetensors file \(.*not fully covered"),
    "modeldir-weights-cut-in-half": (CheckpointError, r"not a readable safetensors file \(.*not fully covered"),
    "modeldir-weights-cut-last-byte": (CheckpointError, r"not a readable safetensors file .*was not copied completely"),
    "modeldir-weights-huge-header-length": (CheckpointError, r"not a readable safetensors file \(.*header too large"),
    "modeldir-weights-header-not-json": (CheckpointError, r"not a readable safetensors file \(.*invalid JSON in header"),
    "modeldir-weights-header-not-object": (CheckpointError, r"not a readable safetensors file \(.*invalid JSON in header"),
    "modeldir-weights-offsets-outside-file": (CheckpointError, r"not a readable safetensors file \(.*invalid offset"),
    "modeldir-weights-dtype-unknown": (CheckpointError, r"not a readable safetensors file \(.*data type"),
    "modeldir-weights-pickle-named-safetensors": (CheckpointError, r"is a PyTorch pickle or zip archive, not safetensors"),
    "modeldir-weights-only-pytorch-bin": (CheckpointError, r"it has pickled weights \(.bin/.pt\): owl reads weights only"),
    "modeldir-weights-zip-archive": (CheckpointError, r"is a PyTorch pickle or zip archive, not safetensors"),
    "modeldir-weights-extra-tensor": (CheckpointError, r"weights not in the model built from its config.json: \['junk.weight'\]"),
    "modeldir-weights-tensor-missing": (CheckpointError, r"weights missing from the checkpoint: \['abstractor"),
    "modeldir-weights-wrong-shape": (CheckpointError, r"has shape \(3, 3\), the config.json model \(32,\)"),
    "modeldir-config-more-layers": (CheckpointError, r"weights missing from the checkpoint: \['abstractor.layers.2"),
    "modeldir-config-fewer-layers": (CheckpointError, r"weights not in the model built from its config.json: \['abstractor.layers.1"),
    "modeldir-config-other-width": (CheckpointError, r"has shape \(88,\), the config.json model \(176,\)"),
    "modeldir-config-other-queries": (CheckpointError, r"query_tokens has shape \(1, 4, 32\), the config.json model \(1, 3, 32\)"),
    "modeldir-index-shard-missing": (CheckpointError, r"index.json names shards that are not in .*model-00001-of-00002"),
    "modeldir-index-invalid-json": (CheckpointError, r"index.json:1:16: invalid JSON"),
    "modeldir-index-no-weight-map": (CheckpointError, r"index.json: expected \{\"weight_map\""),
    "modeldir-index-escapes-dir": (CheckpointError, r"shard '../../etc/passwd' of a.weight is not a file name in the model"),
    "modeldir-tokenizer-missing": (CheckpointError, r"has no tokenizer files; pass a tokenizer or save one with the model"),
    "modeldir-tokenizer-garbage": (CheckpointError, r"its tokenizer files cannot be read \(JSONDecodeError"),
    "modeldir-generation-config-invalid": (CheckpointError, r"generation_config.json:1:2: invalid JSON"),
    "modeldir-generation-config-not-object": (CheckpointError, r"generation_config.json: expected a JSON object"),
    "modeldir-adapter-config-garbage": (CheckpointError, r"adapter_config.json: not a readable peft adapter config"),
    "modeldir-adapter-weights-missing": (CheckpointError, r"has no adapter_model.safetensors \(owl reads adapters only"),
}  # fmt: skip
CLI_ROWS = {
    "modeldir-weights-cut-in-half",
    "modeldir-weights-pickle-named-safetensors",
    "modeldir-config-other-width",
    "modeldir-tokenizer-garbage",
    "modeldir-adapter-config-garbage",
}


def test_every_damage_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == set(DAMAGE)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("good") / "m"
    assert main(["new", "--preset", "tiny", "--out", str(out), "--tokenizer", "byte"]) == 0
    return out


def _load_everything(d: Path) -> None:
    """What `owl chat`, `owl generate` and `owl serve` read from a model directory."""
    load_model(d)
    OwlProcessor.from_pretrained(d)
    load_generation_config(d)


def test_the_undamaged_directory_loads(good_dir: Path) -> None:
    _load_everything(good_dir)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_model_directory_is_one_clear_error(case: str, good_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    d = fresh_copy(good_dir, tmp_path / "m")
    DAMAGE[case](d)
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or {})
    kind, pattern = EXPECTED[case]
    with pytest.raises(kind) as info:
        _load_everything(d)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "\n" not in message and not unpickled


@pytest.mark.parametrize("case", sorted(CLI_ROWS))
def test_damaged_model_directory_through_the_cli(case: str, good_dir: Path, tmp_path: Path, capsys) -> None:
    d = fresh_copy(good_dir, tmp_path / "m")
    DAMAGE[case](d)
    code = main(["chat", str(d), "--message", "hi", "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("owl: error: "), err
    assert re.search(EXPECTED[case][1], err[0]), err[0]
