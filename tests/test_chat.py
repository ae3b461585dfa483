"""`owl chat`: multi-turn, multi-image conversation through the shared processor."""

from __future__ import annotations

import pytest

from owl.chat import chat
from owl.models import save_pretrained
from tests.helpers import random_image
from tests.models.test_owl import make


@pytest.fixture
def model_dir(tmp_path):
    model, proc = make(seed=2)
    save_pretrained(model, tmp_path / "m", tokenizer=proc.tokenizer)
    return tmp_path / "m"


def test_interactive_session_keeps_history_and_images(model_dir, tmp_path, monkeypatch, capsys):
    images = []
    for i in range(2):
        images.append(tmp_path / f"{i}.png")
        random_image(i).save(images[-1])
    lines = iter([f"/image {images[0]}", "What is this?", f"/image {images[1]}", "And this one?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda *_: next(lines))
    messages = chat(str(model_dir), max_new_tokens=4)
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0].content == "<image>\nWhat is this?" and messages[2].content == "<image>\nAnd this one?"
    assert capsys.readouterr().out.count("owl> ") == 2


def test_reset_and_missing_image(model_dir, monkeypatch):
    lines = iter(["hello", "/reset", "again", "/quit"])
    monkeypatch.setattr("builtins.input", lambda *_: next(lines))
    assert [m.content for m in chat(str(model_dir), max_new_tokens=2)][0] == "again"
    with pytest.raises(FileNotFoundError, match="image not found"):
        chat(str(model_dir), images=["/nope.png"], message="hi")
