"""Captions name everything; generated questions have answers that are true of their scenes."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owl.conversation import IMAGE_TOKEN
from owl.world import ABILITIES, POSITIONS, Scene, SceneObject, WorldConfig, caption, generate_items, score
from owl.world.captions import number_word
from owl.world.config import COLOUR_RGB, SHAPE_KINDS, SHAPE_SIDES, WORD_OPPOSITES, WORDS
from owl.world.scene import SceneSampler, where_phrase

objects = st.lists(
    st.tuples(st.sampled_from(SHAPE_KINDS), st.sampled_from(list(COLOUR_RGB)), st.sampled_from(["small", "large"])),
    min_size=1,
    max_size=6,
)


@st.composite
def scenes(draw):
    word = draw(st.one_of(st.none(), st.sampled_from(WORDS)))
    row = draw(st.integers(0, 2))
    free = [c for c in range(9) if word is None or c // 3 != row]
    specs = draw(objects)[: len(free)]
    cells = draw(st.permutations(free))[: len(specs)]
    objs = tuple(SceneObject(k, c, s, cell) for (k, c, s), cell in zip(specs, sorted(cells)))
    return Scene(objs, word, None if word is None else row * 3 + 1)


@settings(max_examples=200, deadline=None)
@given(scenes(), st.integers(0, 2**32 - 1))
def test_caption_mentions_every_object_count_and_word(scene, seed):
    text = caption(scene, random.Random(seed))
    lower = text.lower()
    for o in scene.objects:
        assert f"{o.size} {o.colour} {o.kind} {where_phrase(o.position)}" in text
    assert number_word(len(scene.objects)) in lower
    if scene.word is not None:
        assert f'"{scene.word}"' in text and where_phrase(scene.word_position) in lower
    else:
        assert '"' not in text
    assert text[0].isupper() and text.endswith(".")


def test_captions_vary_but_are_fixed_per_seed():
    scene = Scene((SceneObject("star", "red", "large", 0), SceneObject("circle", "blue", "small", 8)))
    assert caption(scene, random.Random(5)) == caption(scene, random.Random(5))
    assert len({caption(scene, random.Random(s)) for s in range(40)}) >= 3


@settings(max_examples=100, deadline=None)
@given(scenes(), st.integers(0, 2**32 - 1))
def test_position_first_captions_name_the_place_before_the_object(scene, seed):
    """position_first=1 names every object place first ("at the top left a large red star") with the same
    count and word; at 0 the caption and the random stream are exactly as without the option."""
    text = caption(scene, random.Random(seed), position_first=1.0)
    for o in scene.objects:
        assert f"{where_phrase(o.position)} a {o.size} {o.colour} {o.kind}" in text.lower()
    assert number_word(len(scene.objects)) in text.lower() and text[0].isupper() and text.endswith(".")
    a, b = random.Random(seed), random.Random(seed)
    assert caption(scene, a, position_first=0.0) == caption(scene, b) and a.random() == b.random()


@pytest.fixture(scope="module")
def items():
    return generate_items(WorldConfig(), random.Random(11), 600)


def test_every_ability_generated_in_equal_shares(items):
    counts = {a: sum(i.ability == a for i in items) for a in ABILITIES}
    assert set(counts.values()) == {50}


def test_taught_answer_scores_correct_and_sample_is_valid(items):
    for i, item in enumerate(items):
        sample = item.to_sample([f"img{k}.png" for k in range(len(item.scenes))])
        assert sample.num_image_markers() == len(item.scenes)
        assert [m.role for m in sample.messages] == ["user", "assistant"] * len(item.turns)
        assert all(IMAGE_TOKEN not in m.content for m in sample.messages[1:])
        row = item.to_eval(f"e{i}", [f"img{k}.png" for k in range(len(item.scenes))])
        assert row["messages"][-1]["role"] == "user"
        assert score(item.turns[-1][1], row), (item.task, item.turns, item.answer)
        assert item.answer in row["scorer"]["choices"] or item.scorer["rule"] == "form"
        assert 0 < row["chance"] <= 0.5


def test_yes_no_answers_are_balanced(items):
    answers = [i.answer for i in items if i.scorer["rule"] == "yesno"]
    assert len(answers) > 60
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def _cell(question):
    names = sorted(POSITIONS, key=len, reverse=True)
    return POSITIONS.index(next(n for n in names if where_phrase(n) in question))


def test_answers_are_true_of_the_scene(items):
    checked = 0
    for item in items:
        q = item.turns[-1][0]
        scene = item.scenes[0] if item.scenes else None
        if item.task == "count_all":
            assert item.answer == str(len(scene.objects))
        elif item.task == "colour_at_position":
            assert scene.at(_cell(q)).colour == item.answer
        elif item.task == "shape_at_position":
            assert scene.at(_cell(q)).kind == item.answer
        elif item.task == "size_at_position":
            assert scene.at(_cell(q)).size == item.answer
        elif item.task == "polygon_sides":
            assert str(SHAPE_SIDES[scene.at(_cell(q)).kind]) == item.answer
        elif item.task == "read_word":
            assert scene.word == item.answer
        elif item.task == "word_opposite":
            assert WORD_OPPOSITES[scene.word] == item.answer
        elif item.task == "position_of_shape":
            obj = next(o for o in scene.objects if o.position == item.answer)
            assert f"the {obj.kind}" in q or f"the {obj.colour} {obj.kind}" in q
        elif item.task == "total_count":
            assert item.answer == str(sum(len(s.objects) for s in item.scenes))
        elif item.task == "more_shapes":
            a, b = (len(s.objects) for s in item.scenes)
            assert item.answer == ("first" if a > b else "second") and a != b
        elif item.task == "colour_of_shape":
            kind = re.search(r"the (\w+)", q).group(1)
            assert [o.colour for o in scene.objects if o.kind == kind] == [item.answer]
        else:
            continue
        checked += 1
    assert checked > 150


def test_eval_sampler_excludes_training_scenes():
    config = WorldConfig(shapes=("circle", "square"), colours=("red", "blue"), sizes=("large",), max_objects=1,
                         word_prob=0.0)  # fmt: skip
    rng = random.Random(0)
    train = SceneSampler(rng, config)
    seen = {train.draw() for _ in range(40)}
    assert 10 < len(seen) < 36  # 2 kinds x 2 colours x 9 cells = 36 possible scenes
    held_out = SceneSampler(random.Random(1), config, exclude=seen)
    assert all(held_out.draw() not in seen for _ in range(50))
    full = SceneSampler(random.Random(2), config, exclude={s for s in seen} | set(held_out.drawn) | _all(config))
    with pytest.raises(RuntimeError, match="too small"):
        full.draw(max_tries=50)


def _all(config):
    return {
        Scene((SceneObject(k, c, "large", cell),)) for k in config.shapes for c in config.colours for cell in range(9)
    }


def test_small_config_without_words_skips_word_abilities():
    config = WorldConfig(word_prob=0.0)
    generated = generate_items(config, random.Random(0), 110)
    assert {i.ability for i in generated} == set(ABILITIES) - {"ocr"}
    assert all(i.task not in ("word_opposite", "word_is_animal", "followup_letter") for i in generated)
    with pytest.raises(ValueError, match="cannot generate"):
        generate_items(config, random.Random(0), 10, weights={"ocr": 1.0})
