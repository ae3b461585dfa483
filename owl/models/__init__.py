"""Model parts and their composition."""

from owl.models.abstractor import VisualAbstractor
from owl.models.builders import build_llm, build_model, count_parameters, load_llm
from owl.models.checkpoint import load_model, save_pretrained
from owl.models.owl import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID, OwlModel, OwlOutput

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER_ID",
    "OwlModel",
    "OwlOutput",
    "VisualAbstractor",
    "build_llm",
    "build_model",
    "count_parameters",
    "load_llm",
    "load_model",
    "save_pretrained",
]
