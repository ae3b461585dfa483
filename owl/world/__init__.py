"""Owl-World: a seeded, deterministic toy visual world with captions, instructions and scorers.

Small enough that a ~135M LLM with a small CNN learns to see it on CPU in minutes, and
scored automatically per ability (with chance level) on a held-out split. See
:mod:`owl.world.build` for the files and :mod:`owl.world.scorers` for every scoring rule.
"""

from owl.world.build import build_world
from owl.world.captions import caption
from owl.world.config import COLOUR_RGB, POSITIONS, SHAPE_KINDS, SHAPE_SIDES, WORDS, WorldConfig
from owl.world.formats import PREAMBLE, eval_item_to_sample, load_eval, reference_text, sample_to_reference
from owl.world.generate import generate_items, supported_abilities
from owl.world.items import ABILITIES, OWLEVAL_GROUP, WorldItem
from owl.world.render import render
from owl.world.scene import Scene, SceneObject, SceneSampler, sample_scene
from owl.world.scorers import chance, format_summary, normalize, score, summarize

__all__ = [
    "ABILITIES",
    "COLOUR_RGB",
    "OWLEVAL_GROUP",
    "POSITIONS",
    "PREAMBLE",
    "SHAPE_KINDS",
    "SHAPE_SIDES",
    "WORDS",
    "Scene",
    "SceneObject",
    "SceneSampler",
    "WorldConfig",
    "WorldItem",
    "build_world",
    "caption",
    "chance",
    "eval_item_to_sample",
    "format_summary",
    "generate_items",
    "load_eval",
    "normalize",
    "reference_text",
    "render",
    "sample_scene",
    "sample_to_reference",
    "score",
    "summarize",
    "supported_abilities",
]
