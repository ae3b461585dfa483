"""`owl chat`: multi-turn, multi-image conversation through the shared processor."""

from __future__ import annotations

import pytest

from owl.chat import chat
from owl.generation import GenerationOptions
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
    messages = chat(str(model_dir), options=GenerationOptions(max_new_tokens=4))
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0].content == "<image>\nWhat is this?" and messages[2].content == "<image>\nAnd this one?"
    assert capsys.readouterr().out.count("owl> ") == 2


def test_reset_and_missing_image(model_dir, monkeypatch):
    lines = iter(["hello", "/reset", "again", "/quit"])
    monkeypatch.setattr("builtins.input", lambda *_: next(lines))
    assert [m.content for m in chat(str(model_dir), options=GenerationOptions(max_new_tokens=2))][0] == "again"
    with pytest.raises(FileNotFoundError, match="image not found"):
        chat(str(model_dir), images=["/nope.png"], message="hi")


def test_a_prompt_over_max_length_is_reported_and_the_session_goes_on(model_dir, monkeypatch, capsys):
    lines = iter(["a question far too long for max_length", "/reset", "hi", "/quit"])
    monkeypatch.setattr("builtins.input", lambda *_: next(lines))
    messages = chat(str(model_dir), options=GenerationOptions(max_length=180))  # "hi": 172 prompt tokens
    err = capsys.readouterr().err
    assert "the prompt has 208 tokens" in err and "max_length=180" in err and "leaves no room" in err
    assert [m.content for m in messages][0] == "hi"  # the failed turn left nothing behind


def test_chat_device_and_dtype_flags(model_dir, capsys):
    from owl.cli import main

    assert main(["chat", str(model_dir), "--message", "hi", "--max-new-tokens", "2", "--dtype", "bf16"]) == 0
    assert main(["chat", str(model_dir), "--message", "hi", "--dtype", "int8"]) == 2
    assert "--dtype 'int8' is unknown" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert main(["chat", str(model_dir), "--message", "hi", "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
