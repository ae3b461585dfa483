"""Ways to damage an owl model directory, one function each, for the model-directory fuzz table.

Each takes a fresh copy of a good tiny model directory and breaks one thing the way disks, interrupted copies,
hand edits and the wrong download do. Kept apart from the test so the damage is readable on its own.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def _edit_config(d: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((d / "config.json").read_text())
    edit(config)
    (d / "config.json").write_text(json.dumps(config))


def _edit_weights(d: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = load_file(str(d / WEIGHTS))
    edit(state)
    save_file(state, str(d / WEIGHTS))


def _cut(d: Path, keep: Callable[[int], int]) -> None:
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: keep(len(data))])


def _header_len(d: Path) -> int:
    return int.from_bytes((d / WEIGHTS).read_bytes()[:8], "little")


def _set_header(d: Path, edit: Callable[[dict], None]) -> None:
    data = (d / WEIGHTS).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (d / WEIGHTS).write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _pickle_weights(d: Path, name: str = WEIGHTS) -> None:
    state = load_file(str(d / WEIGHTS))
    (d / WEIGHTS).unlink()
    torch.save(state, d / name)


def _zip_weights(d: Path) -> None:
    with zipfile.ZipFile(d / WEIGHTS, "w") as z:
        z.writestr("data.pkl", b"not weights")


def _shard_index(d: Path, index: str | dict, keep_file: bool = False) -> None:
    text = index if isinstance(index, str) else json.dumps(index)
    (d / "model.safetensors.index.json").write_text(text)
    if not keep_file:
        (d / WEIGHTS).unlink()


def _layers(delta: int) -> Callable[[Path], None]:
    return lambda d: _edit_config(d, lambda c: c["abstractor"].update(num_layers=c["abstractor"]["num_layers"] + delta))


def _adapter(d: Path, config: str | None) -> None:
    (d / "adapter").mkdir()
    if config is not None:
        (d / "adapter" / "adapter_config.json").write_text(config)


# id -> damage (a function of the model directory)
DAMAGE: dict[str, Callable[[Path], object]] = {
    "modeldir-empty": lambda d: [p.unlink() for p in d.iterdir()],
    "modeldir-config-missing": lambda d: (d / "config.json").unlink(),
    "modeldir-config-invalid-json": lambda d: (d / "config.json").write_text('{"vision": {'),
    "modeldir-config-not-object": lambda d: (d / "config.json").write_text("[1, 2]"),
    "modeldir-config-binary": lambda d: (d / "config.json").write_bytes(b"\xff\xd8\xff\xe0JFIF"),
    "modeldir-config-unknown-key": lambda d: _edit_config(d, lambda c: c.update(visoin={})),
    "modeldir-config-wrong-type": lambda d: _edit_config(d, lambda c: c["abstractor"].update(num_queries="many")),
    "modeldir-config-impossible": lambda d: _edit_config(d, lambda c: c["abstractor"].update(num_heads=5)),
    "modeldir-weights-missing": lambda d: (d / WEIGHTS).unlink(),
    "modeldir-weights-empty": lambda d: (d / WEIGHTS).write_bytes(b""),
    "modeldir-weights-cut-in-length": lambda d: _cut(d, lambda _: 5),
    "modeldir-weights-cut-in-header": lambda d: _cut(d, lambda _: 8 + _header_len(d) // 2),
    "modeldir-weights-cut-after-header": lambda d: _cut(d, lambda _: 8 + _header_len(d)),
    "modeldir-weights-cut-in-half": lambda d: _cut(d, lambda n: n // 2),
    "modeldir-weights-cut-last-byte": lambda d: _cut(d, lambda n: n - 1),
    "modeldir-weights-huge-header-length": lambda d: (d / WEIGHTS).write_bytes((2**62).to_bytes(8, "little") + b"{}"),
    "modeldir-weights-header-not-json": lambda d: (d / WEIGHTS).write_bytes((16).to_bytes(8, "little") + b"not json" * 2),
    "modeldir-weights-header-not-object": lambda d: (d / WEIGHTS).write_bytes((8).to_bytes(8, "little") + b"[1,2,3] "),
    "modeldir-weights-offsets-outside-file": lambda d: _set_header(
        d, lambda h: h[_first_tensor(h)].update(data_offsets=[10**9, 10**9 + 4 * _numel(h[_first_tensor(h)])])
    ),
    "modeldir-weights-dtype-unknown": lambda d: _set_header(d, lambda h: h[_first_tensor(h)].update(dtype="C64")),
    "modeldir-weights-pickle-named-safetensors": lambda d: _pickle_weights(d),
    "modeldir-weights-only-pytorch-bin": lambda d: _pickle_weights(d, "pytorch_model.bin"),
    "modeldir-weights-zip-archive": _zip_weights,
    "modeldir-weights-extra-tensor": lambda d: _edit_weights(d, lambda s: s.update({"junk.weight": torch.zeros(2)})),
    "modeldir-weights-tensor-missing": lambda d: _edit_weights(d, lambda s: s.pop(sorted(s)[0])),
    "modeldir-weights-wrong-shape": lambda d: _edit_weights(d, lambda s: s.update({sorted(s)[0]: torch.zeros(3, 3)})),
    "modeldir-config-more-layers": _layers(+1),
    "modeldir-config-fewer-layers": _layers(-1),
    "modeldir-config-other-width": lambda d: _edit_config(
        d, lambda c: c["abstractor"].update(intermediate_size=c["abstractor"]["intermediate_size"] * 2)
    ),
    "modeldir-config-other-queries": lambda d: _edit_config(d, lambda c: c["abstractor"].update(num_queries=3)),
    "modeldir-index-shard-missing": lambda d: _shard_index(d, {"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}),
    "modeldir-index-invalid-json": lambda d: _shard_index(d, '{"weight_map": '),
    "modeldir-index-no-weight-map": lambda d: _shard_index(d, {"metadata": {}}),
    "modeldir-index-escapes-dir": lambda d: _shard_index(d, {"weight_map": {"a.weight": "../../etc/passwd"}}),
    "modeldir-tokenizer-missing": lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
    "modeldir-tokenizer-garbage": lambda d: (d / "tokenizer.json").write_text("{ nope"),
    "modeldir-generation-config-invalid": lambda d: (d / "generation_config.json").write_text("{"),
    "modeldir-generation-config-not-object": lambda d: (d / "generation_config.json").write_text('"greedy"'),
    "modeldir-adapter-config-garbage": lambda d: _adapter(d, "{ nope"),
    "modeldir-adapter-weights-missing": lambda d: _adapter(
        d, json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    ),
}  # fmt: skip


def _numel(meta: dict) -> int:
    n = 1
    for s in meta["shape"]:
        n *= s
    return n


def fresh_copy(good: Path, where: Path) -> Path:
    """A copy of the good model directory to damage."""
    shutil.copytree(good, where)
    return where
