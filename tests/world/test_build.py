"""build_world end to end: files, reference format, determinism, held-out eval, scoring gold."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from owl.world import ABILITIES, PREAMBLE, WorldConfig, build_world, eval_item_to_sample, load_eval, score, summarize

SIZES = {"n_captions": 40, "n_instructions": 110, "n_text": 20, "n_eval": 120}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    manifest = build_world(out, WorldConfig(), seed=3, **SIZES, progress=False)
    return out, manifest


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _parse(text: str) -> tuple[int, list[tuple[str, str]]]:
    """(number of image lines, [(speaker, line)]) from a reference-format conversation."""
    lines = text.split("\n")
    assert lines[0] == PREAMBLE
    images, turns = 0, []
    for line in lines[1:]:
        speaker, sep, content = line.partition(": ")
        assert sep and speaker in ("Human", "AI"), line
        if content == "<image>":
            assert speaker == "Human" and not turns, "image lines come first"
            images += 1
        else:
            turns.append((speaker, content))
    return images, turns


def test_files_and_manifest(world):
    out, manifest = world
    assert json.loads((out / "manifest.json").read_text()) == manifest
    counts = manifest["counts"]
    assert counts["captions"] == 40 and counts["instruct"] == 110 and counts["text"] == 20 and counts["eval"] == 120
    pngs = list((out / "images").glob("*.png"))
    assert len(pngs) == counts["train_images"] + counts["eval_images"]
    assert manifest["eval_abilities"] == {a: 10 for a in ABILITIES}
    assert set(manifest["instruct_abilities"]) == set(ABILITIES) - {"text"}
    assert manifest["eval_chance"]["colour"] == pytest.approx(1 / 6)
    assert manifest["eval_chance"]["position"] == pytest.approx(1 / 9)
    assert manifest["eval_chance"]["size"] == 0.5
    captions = _rows(out / "captions.jsonl")
    assert captions[0]["image"] == "images/000001.png" and (out / captions[0]["image"]).is_file()
    assert all(set(c) == {"image", "caption"} and c["caption"] for c in captions)


@pytest.mark.parametrize("name", ["instruct.jsonl", "text.jsonl"])
def test_reference_lines_parse_back(world, name):
    out, _ = world
    for row in _rows(out / name):
        assert set(row) == {"image", "text", "task_type"} and row["task_type"].startswith("owl_world_")
        assert not row["text"].endswith("\n")
        images, turns = _parse(row["text"])
        assert images == len(row["image"])
        assert (images == 0) == (name == "text.jsonl")
        assert [s for s, _ in turns] == ["Human", "AI"] * (len(turns) // 2) and turns
        assert all(content.strip() for _, content in turns)
        assert all((out / p).is_file() for p in row["image"])


def test_eval_items(world):
    out, _ = world
    items = load_eval(out / "eval.jsonl")
    assert {i["ability"] for i in items} == set(ABILITIES)
    assert any(len(i["image"]) == 2 for i in items if i["ability"] == "multiimage")
    assert any(len(i["messages"]) >= 3 for i in items if i["ability"] == "multiturn")
    assert all(i["image"] == [] for i in items if i["ability"] == "text")
    for i in items:
        sample = eval_item_to_sample(i, out)
        assert sample.messages[-1].role == "user" and sample.meta["answer"] == i["answer"]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in sample.images)
    summary = summarize(items, [i["answer"] for i in items])
    assert all(row["accuracy"] == 1.0 for row in summary.values()), "the gold answer must score as correct"
    assert not score("purple elephant", items[0])


def test_eval_images_differ_from_train_images(world):
    out, _ = world
    digests = _digests(out / "images")
    train = {d for name, d in digests.items() if not name.startswith("eval_")}
    held_out = {d for name, d in digests.items() if name.startswith("eval_")}
    assert held_out and not train & held_out


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    out, _ = world
    again = tmp_path / "again"
    build_world(again, WorldConfig(), seed=3, **SIZES, progress=False)
    assert _digests(again) == _digests(out)
    other = tmp_path / "other"
    build_world(other, WorldConfig(), seed=4, **SIZES, progress=False)
    a, b = _digests(out), _digests(other)
    assert a["captions.jsonl"] != b["captions.jsonl"] and a["eval.jsonl"] != b["eval.jsonl"]
    assert a["images/000001.png"] != b["images/000001.png"]


def test_counts_are_independent_streams(world, tmp_path):
    out, _ = world
    more_captions = tmp_path / "more"
    build_world(more_captions, WorldConfig(), seed=3, **{**SIZES, "n_captions": 41}, progress=False)
    assert (more_captions / "instruct.jsonl").read_bytes() == (out / "instruct.jsonl").read_bytes()
    assert (more_captions / "text.jsonl").read_bytes() == (out / "text.jsonl").read_bytes()
    old, new = _rows(out / "captions.jsonl"), _rows(more_captions / "captions.jsonl")
    assert new[:40] == old


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_eval=-1"):
        build_world("/nonexistent/never", n_eval=-1)
    with pytest.raises(ValueError, match="unknown abilities"):
        build_world(tmp_path / "never", n_captions=0, n_instructions=1, n_text=0, n_eval=0,
                    ability_weights={"colours": 1.0})  # fmt: skip
    assert not (tmp_path / "never").exists(), "nothing is written when the arguments are bad"


def test_bytes_do_not_depend_on_python_hash_seed(world, tmp_path):
    """Set iteration order changes with PYTHONHASHSEED; the world must not."""
    out, _ = world
    code = (
        "import sys; from owl.world import WorldConfig, build_world; "
        f"build_world(sys.argv[1], WorldConfig(), seed=3, progress=False, **{SIZES!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).parents[2]
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], check=True, env=env, cwd=root)
    assert _digests(tmp_path / "w") == _digests(out)


def test_packed_instructions_ask_several_questions_about_one_image(tmp_path):
    """qa_per_image=4: single-scene items become 4-question conversations about one image; the eval split
    keeps one question per item and every packed answer is the true one for its scene."""
    import random

    from owl.world.captions import number_word
    from owl.world.generate import generate_items
    from owl.world.tasks_visual import COUNT_ALL

    items = generate_items(WorldConfig(), random.Random(0), 60, qa_per_image=4)
    packed = [it for it in items if it.task == "packed"]
    assert packed and all(len(it.turns) == 4 and len(it.scenes) == 1 for it in packed)
    assert all(len({q for q, _ in it.turns}) == 4 for it in packed)
    single = [it for it in items if it.task != "packed"]
    assert {it.ability for it in single} <= {"knowledge", "reasoning", "multiturn", "multiimage", "text"}
    for it in packed:  # count questions about all shapes must give the scene's object count
        for q, a in it.turns:
            if q.split("?")[0] + "?" in COUNT_ALL or q.split(".")[0] + "." in COUNT_ALL:
                assert a in (str(len(it.scenes[0].objects)), number_word(len(it.scenes[0].objects))), (q, a)
    m = build_world(
        tmp_path,
        WorldConfig(),
        seed=1,
        n_captions=4,
        n_instructions=20,
        n_text=2,
        n_eval=24,
        qa_per_image=3,
        progress=False,
    )
    assert all(len(e["messages"]) in (1, 3) for e in _rows(tmp_path / "eval.jsonl"))  # multiturn eval keeps its own
    assert m["counts"]["instruct"] == 20
    with pytest.raises(ValueError, match="qa_per_image"):
        generate_items(WorldConfig(), random.Random(0), 5, qa_per_image=0)


def test_balanced_answers_cap_the_prior_without_changing_the_default(tmp_path):
    """balance_answers=1.5: no answer of a question type is taught more than 1.5x its fair share (plus one), where
    natural scenes make "1" the answer to ~70% of "How many red shapes?"; 0 leaves the items byte for byte as they
    were, and packed items are balanced per question."""
    import random
    from collections import Counter

    from owl.world.generate import AnswerBalancer, generate_items

    def shares(items):
        c: dict[str, Counter] = {}
        for it in items:
            c.setdefault(it.task, Counter())[str(it.answer)] += 1
        return c

    natural = generate_items(WorldConfig(), random.Random(0), 1200)
    off = generate_items(WorldConfig(), random.Random(0), 1200, balance_answers=0)
    assert [(it.turns, it.scenes) for it in natural] == [(it.turns, it.scenes) for it in off]
    nat = shares(natural)["count_colour"]
    assert nat["1"] / sum(nat.values()) > 0.5  # the prior the balancer exists for
    balanced = generate_items(WorldConfig(), random.Random(0), 1200, balance_answers=1.5)
    choices = {it.task: len(it.scorer["choices"]) for it in balanced if it.ability != "text"}  # text is not balanced
    for task, counts in shares(it for it in balanced if it.task in choices).items():
        assert max(counts.values()) <= 1.5 * sum(counts.values()) / choices[task] + 1, (task, counts)

    def count_colour_answers(balance: float) -> list[str]:  # packed turns "How many <colour> shapes ...?"
        items = generate_items(WorldConfig(), random.Random(1), 900, qa_per_image=3, balance_answers=balance)
        pattern = r"(How many|Count the) [a-z]+ shapes"
        return [a for it in items if it.task == "packed" for q, a in it.turns if re.match(pattern, q)]

    natural_packed, capped_packed = count_colour_answers(0), count_colour_answers(1.5)
    assert len(natural_packed) > 40 and natural_packed.count("1") / len(natural_packed) > 0.5
    # the scene is fixed, so a rejected answer's turn goes to another question: fewer such turns, none mostly "1"
    assert 5 <= len(capped_packed) < len(natural_packed) and capped_packed.count("1") / len(capped_packed) < 0.4
    for bad in (0.5, -1, "x"):
        with pytest.raises(ValueError, match="balance_answers"):
            AnswerBalancer(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="caption_position_first=2"):
        build_world(tmp_path, WorldConfig(), n_captions=1, caption_position_first=2, progress=False)


def test_single_object_captions_for_the_curriculum(world, tmp_path):
    """n_captions_single adds one-object captions from a stream of their own: the other training files keep their
    bytes, the captions name exactly one shape, and no held-out image equals one of their images."""
    out, _ = world
    m = build_world(tmp_path, WorldConfig(), seed=3, **SIZES, n_captions_single=30, progress=False)
    assert m["counts"]["captions_single"] == 30 and m["files"]["captions_single"] == "captions_single.jsonl"
    for name in ("captions.jsonl", "instruct.jsonl", "text.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    rows = _rows(tmp_path / "captions_single.jsonl")
    assert len(rows) == 30 and all(r["image"].startswith("images/one_") for r in rows)
    assert all(("One shape" in r["caption"] or "one shape" in r["caption"]) for r in rows), rows[:3]
    digests = _digests(tmp_path / "images")
    train = {d for name, d in digests.items() if not name.startswith("eval_")}
    assert not train & {d for name, d in digests.items() if name.startswith("eval_")}
    assert len(list((tmp_path / "images").glob("*.png"))) == m["counts"]["train_images"] + m["counts"]["eval_images"]
    assert "captions_single" not in build_world(tmp_path / "none", WorldConfig(), seed=3, **SIZES)["counts"]
