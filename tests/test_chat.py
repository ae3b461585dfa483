"""`owl chat`: multi-turn, multi-image conversation through the shared processor."""

from __future__ import annotations

import pytest
import torch

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


# ----------------------------------------------------------------------------- streaming


def test_streamed_pieces_join_to_the_same_text_as_without_streaming():
    from owl.generation import generate
    from tests.test_generation import make as make_scaled
    from tests.test_generation import prompts

    model, proc = make_scaled("llama", seed=3)
    first = generate(model, proc, prompts(), GenerationOptions(max_new_tokens=12), 3)[0].text
    for opts in (GenerationOptions(max_new_tokens=12), GenerationOptions(max_new_tokens=12, stop=[first[4:6]])):
        pieces: dict[int, list[str]] = {}
        on_text = lambda i, t, pieces=pieces: pieces.setdefault(i, []).append(t)
        streamed = generate(model, proc, prompts(), opts, 3, on_text=on_text)
        plain = generate(model, proc, prompts(), opts, 3)
        assert [c.text for c in streamed] == [c.text for c in plain]
        assert ["".join(pieces.get(i, [])) for i in range(len(plain))] == [c.text for c in plain]
        assert max(len(p) for p in pieces.values()) > 1  # text arrived in pieces, not at the end only
    assert plain[0].text == first[: first.find(first[4:6])]  # the stop string was hit


def test_streamer_holds_back_cut_characters_and_stop_string_starts():
    from owl.generation import AnswerStreamer
    from owl.processing import OwlProcessor
    from owl.tokenizer import byte_tokenizer

    model, _ = make(seed=0)
    proc = OwlProcessor.from_config(model.config, byte_tokenizer())
    text = "héllo wörld 🦉 ok. STOP here"
    ids = proc.tokenizer(text, add_special_tokens=False)["input_ids"]
    for stop, final in (([], text), (["STOP"], text[: text.find("STOP")])):
        got: list[str] = []
        sent = []
        streamer = AnswerStreamer(
            proc, lambda _i, t, got=got: got.append(t), 0, [len(ids)], [proc.tokenizer.eos_token_id], stop
        )
        streamer.put(torch.zeros((1, 0), dtype=torch.long))  # transformers puts the prompt first: nothing to show
        for t in ids:
            streamer.put(torch.tensor([t]))
            sent.append("".join(got))
        streamer.end()
        streamer.flush([final])
        assert "".join(got) == final and len(got) > 5
        assert all("\ufffd" not in p for p in got) and all(final.startswith(s) for s in sent)
        assert not stop or "ST" not in "".join(got)  # the start of a stop string never shows


def test_chat_streams_the_answer_it_returns(model_dir, capsys):
    from owl.cli import main

    assert main(["chat", str(model_dir), "--message", "hi", "--max-new-tokens", "8", "--no-stream"]) == 0
    plain = capsys.readouterr().out
    assert main(["chat", str(model_dir), "--message", "hi", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == plain and plain.endswith("\n")


# ----------------------------------------------------------------------------- /save


def test_save_writes_a_record_training_and_owl_generate_read_back(model_dir, tmp_path, monkeypatch, capsys):
    import json

    from owl.cli import main
    from owl.data.formats import SourceSpec, iter_source

    image = tmp_path / "a.png"
    random_image(0).save(image)
    saved = tmp_path / "chats.jsonl"
    lines = iter(["/save", f"/image {image}", "What is this?", "And now?", f"/save {saved}", "/quit"])
    monkeypatch.setattr("builtins.input", lambda *_: next(lines))
    messages = chat(str(model_dir), options=GenerationOptions(max_new_tokens=6, do_sample=False))
    assert "/save needs a file name" in capsys.readouterr().err

    [sample] = list(iter_source(SourceSpec("chats", "llava", str(saved))))  # as `owl train` reads it
    assert sample.messages == messages and sample.images == [str(image)]

    out = tmp_path / "answers.jsonl"
    args = ["generate", str(model_dir), "--input", str(saved), "--output", str(out), "--max-new-tokens", "6"]
    assert main([*args, "--greedy", "--no-progress"]) == 0
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["reference"] == messages[-1].content and record["answer"] == messages[-1].content
