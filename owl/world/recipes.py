"""The demo's recipes and world specs, shipped inside the package (found with importlib.resources).

``owl/world/recipes/<profile>/`` holds ``world.yaml`` (a :class:`WorldSpec`:
how to generate the Owl-World dataset) and ``stage1.yaml`` / ``stage2.yaml``
(ordinary ``owl train`` recipes; ``configs/world`` in a checkout links here).
The training core knows nothing of Owl-World: this module builds the world
first and hands the trainer a recipe whose data paths point into it.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from owl.configtools import deep_merge, from_dict, parse_overrides, read_yaml
from owl.errors import ConfigError
from owl.train.config import TrainConfig, train_config_from_dict
from owl.world.config import WorldSpec

PROFILES = ("full", "long", "quick")
STAGES = ("stage1", "stage2")
WORLD_PREFIX = "world."  # overrides that start with this go to the WorldSpec, the others to both recipes
STAMP = "owl_world_spec.json"  # the spec a world folder was built from


def recipe_file(profile: str, name: str) -> Path:
    """``world.yaml``, ``stage1.yaml`` or ``stage2.yaml`` of a shipped profile."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown demo profile {profile!r}; use one of {', '.join(PROFILES)}")
    path = Path(str(resources.files("owl.world") / "recipes" / profile / name))
    if not path.is_file():
        raise ConfigError(f"the installed owl has no recipe {profile}/{name} ({path}); reinstall owl")
    return path


def split_overrides(overrides: list[str] | None) -> tuple[list[str], list[str]]:
    """(WorldSpec overrides without their ``world.`` prefix, recipe overrides)."""
    world = [o[len(WORLD_PREFIX) :] for o in overrides or [] if o.startswith(WORLD_PREFIX)]
    return world, [o for o in overrides or [] if not o.startswith(WORLD_PREFIX)]


def load_world_spec(path: str | Path, overrides: list[str] | None = None) -> WorldSpec:
    """A WorldSpec from a YAML file (keys as :class:`WorldSpec`) plus ``key=value`` overrides."""
    return from_dict(WorldSpec, deep_merge(read_yaml(Path(path)), parse_overrides(overrides or [])), "world.")


def build_from_spec(out: str | Path, spec: WorldSpec, progress: bool | None = None) -> dict:
    """Build the Owl-World of ``spec`` into ``out`` and stamp it with the spec; returns the manifest."""
    from owl.world.build import build_world
    from owl.world.config import WorldConfig

    out = Path(out)
    manifest = build_world(
        out,
        WorldConfig(image_size=spec.image_size, **spec.config),
        seed=spec.seed,
        n_captions=spec.n_captions,
        n_instructions=spec.n_instructions,
        n_text=spec.n_text,
        n_eval=spec.n_eval,
        n_captions_single=spec.n_captions_single,
        ability_weights=spec.ability_weights or None,
        qa_per_image=spec.qa_per_image,
        balance_answers=spec.balance_answers,
        caption_position_first=spec.caption_position_first,
        progress=progress,
    )
    (out / STAMP).write_text(_spec_json(spec))
    return manifest


def prepare_world(out: str | Path, spec: WorldSpec, progress: bool | None = None) -> Path:
    """Build the Owl-World of ``spec`` into ``out`` unless one stamped with the same spec is there; returns ``out``."""
    out = Path(out)
    stamp = out / STAMP
    if not (stamp.exists() and stamp.read_text() == _spec_json(spec)):
        build_from_spec(out, spec, progress)
    return out


def _spec_json(spec: WorldSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def load_recipe(profile: str, stage: str, world: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A shipped recipe whose data sources read the world in ``world`` (each source's file name, in that folder)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    path = recipe_file(profile, f"{stage}.yaml")
    d = read_yaml(path)
    for src in d.get("data", {}).get("sources", []):
        src["path"] = str(Path(world) / Path(src["path"]).name)
    return train_config_from_dict(d, overrides, source=str(path))
