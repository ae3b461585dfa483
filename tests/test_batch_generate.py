"""`owl generate`: file in, file out; batched == batch size 1, resume == one run, bad lines reported, formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from owl.batch import ResultsFile, to_sample
from owl.cli import main
from owl.conversation import Message, SampleError
from owl.errors import InputError
from owl.models import save_pretrained
from tests.helpers import random_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.test_generation import make  # LLM weights scaled up: different prompts give different answers

    model, proc = make("llama", seed=3)
    path = tmp_path_factory.mktemp("model") / "m"
    save_pretrained(model, path, tokenizer=proc.tokenizer)
    return path


@pytest.fixture
def data(tmp_path):
    """A folder with images (one in a sub-folder) and an input file of every supported format."""
    (tmp_path / "pics").mkdir()
    for i in range(3):
        random_image(i).save(tmp_path / f"img{i}.png")
    random_image(7).save(tmp_path / "pics" / "p.png")
    records = [
        {"id": "q1", "image": "img0.png", "question": "What is in the picture?"},
        {"id": "q2", "prompt": "A text-only question, long enough to be padded against the short ones here?"},
        {"id": "llava", "image": "img1.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A noisy square."}]},
        {"id": "sharegpt", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."},
                                             {"from": "human", "value": "Name a colour."}]},
        {"id": "openai", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "img2.png"}}, {"type": "text", "text": "Colour?"}]}]},
        {"id": "roles", "messages": [{"role": "user", "content": "Count to three."}]},
        {"id": "mplug", "text": "Human: <image>\nHuman: What is this?\nAI: ", "image": ["pics/p.png"]},
        {"id": "alpaca", "instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"id": "caption", "caption": "noise", "image": "img1.png"},
        {"id": "two", "images": ["img0.png", "img1.png"], "text": "Compare the two."},
    ]  # fmt: skip
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run(model_dir, inp, out, *extra) -> int:
    args = ["generate", str(model_dir), "--input", str(inp), "--output", str(out), "--max-new-tokens", "6"]
    return main([*args, "--no-progress", *map(str, extra)])


def records(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def by_id(path) -> dict:
    recs = records(path)
    ids = [str(r["id"]) for r in recs]
    assert len(ids) == len(set(ids)), "duplicate lines"
    return {str(r["id"]): r for r in recs}


def test_batched_equals_batch_size_one_and_every_format_is_answered(model_dir, data, tmp_path, capsys):
    assert run(model_dir, data, tmp_path / "b4.jsonl", "--batch-size", 4) == 0
    assert run(model_dir, data, tmp_path / "b1.jsonl", "--batch-size", 1) == 0
    batched, single = by_id(tmp_path / "b4.jsonl"), by_id(tmp_path / "b1.jsonl")
    assert batched == single
    assert set(batched) == {"q1", "q2", "llava", "sharegpt", "openai", "roles", "mplug", "alpaca", "caption", "two"}
    assert all("error" not in r and r["completion_tokens"] <= 6 for r in batched.values())
    assert len({r["answer"] for r in batched.values()}) > 3  # not a constant answer
    assert batched["llava"]["reference"] == "A noisy square." and batched["alpaca"]["reference"] == "Hi!"
    assert batched["caption"]["reference"] == "noise" and "reference" not in batched["q1"]
    assert set(batched["q1"]) == {"id", "answer", "finish_reason", "prompt_tokens", "completion_tokens"}
    assert "10 answered, 0 errors, 0 skipped" in capsys.readouterr().err


def test_resume_after_limit_and_torn_line_equals_one_run(model_dir, data, tmp_path, capsys):
    assert run(model_dir, data, tmp_path / "full.jsonl", "--batch-size", 3) == 0
    part = tmp_path / "part.jsonl"
    assert run(model_dir, data, part, "--batch-size", 3, "--limit", 4) == 0
    assert len(records(part)) == 4
    with open(part, "ab") as f:  # what kill -9 in the middle of a write leaves
        f.write(b'{"id": "q9", "answ')
    assert run(model_dir, data, part, "--batch-size", 2, "--limit", 3) == 0
    assert run(model_dir, data, part, "--batch-size", 3) == 0
    assert by_id(part) == by_id(tmp_path / "full.jsonl")
    err = capsys.readouterr().err
    assert "removed 1 line(s) to redo" in err and "3 answered, 0 errors, 7 skipped" in err
    before = part.read_bytes()
    assert run(model_dir, data, part) == 0 and part.read_bytes() == before  # nothing left to do
    assert "0 answered, 0 errors, 10 skipped" in capsys.readouterr().err


def test_bad_lines_become_error_lines_and_the_run_completes(model_dir, data, tmp_path, capsys):
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    lines = [
        json.dumps({"id": "ok", "prompt": "Hello?"}),
        "{not json",
        json.dumps({"id": "gone", "image": "missing.png", "prompt": "What?"}),
        json.dumps({"id": "corrupt", "image": "corrupt.png", "prompt": "What?"}),
        json.dumps({"id": "long", "prompt": "x" * 600}),
        json.dumps({"id": "empty", "prompt": "   "}),
        json.dumps({"id": "nothing", "foo": 1}),
        json.dumps({"id": "markers", "prompt": "<image> <image>", "image": "img0.png"}),
        json.dumps({"id": "ok", "prompt": "Again?"}),
        json.dumps({"id": "remote", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
    ]  # fmt: skip
    inp = data.parent / "bad.jsonl"  # beside the images
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert run(model_dir, inp, out, "--batch-size", 4) == 0
    got = {(str(r["id"]), r.get("line")): r for r in records(out)}
    assert "answer" in got["ok", None] and len(got) == len(lines)
    codes = {k[0]: r.get("error_code") for k, r in got.items() if "error" in r and k[0] != "ok"}
    assert codes == {
        "2": "malformed_json",
        "gone": "missing_image",
        "corrupt": "bad_image",
        "long": "prompt_too_long",
        "empty": "no_prompt",
        "nothing": "no_prompt",
        "markers": "image_count_mismatch",
        "remote": "remote_image",
    }
    assert got["ok", 9]["error_code"] == "duplicate_id" and "also the id of line 1" in got["ok", 9]["error"]
    assert "missing.png" in got["gone", None]["error"] and "max_length=512" in got["long", None]["error"]
    assert "1 answered, 9 errors" in capsys.readouterr().err
    before = out.read_bytes()  # permanent errors are not redone
    assert run(model_dir, inp, out) == 0 and out.read_bytes() == before


def test_transient_errors_and_retry_errors_are_redone_without_duplicates(model_dir, data, tmp_path):
    out = tmp_path / "out.jsonl"
    assert run(model_dir, data, out, "--limit", 3) == 0
    first = records(out)
    oom = {"id": "q2", "error": "CUDA out of memory", "error_code": "out_of_memory"}
    bad = {"id": "roles", "error": "image file not found: x", "error_code": "missing_image"}
    out.write_text("".join(json.dumps(r) + "\n" for r in [*first, oom, bad]))
    assert run(model_dir, data, out) == 0
    got = by_id(out)
    assert "answer" in got["q2"] and got["roles"]["error_code"] == "missing_image"  # transient redone, not the other
    assert run(model_dir, data, out, "--retry-errors") == 0
    assert all("answer" in r for r in by_id(out).values()) and len(by_id(out)) == 10


def test_image_paths_resolve_against_image_root(model_dir, data, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    inp = other / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "image": "p.png", "prompt": "What?"}) + "\n")
    assert run(model_dir, inp, tmp_path / "o1.jsonl") == 0
    assert by_id(tmp_path / "o1.jsonl")["a"]["error_code"] == "missing_image"  # default: the input file's folder
    assert run(model_dir, inp, tmp_path / "o2.jsonl", "--image-root", data.parent / "pics") == 0
    assert "answer" in by_id(tmp_path / "o2.jsonl")["a"]


def test_input_formats_become_the_samples_training_reads(data):
    root = str(data.parent)
    recs = {r["id"]: r for r in records(data)}
    s, ref = to_sample(recs["llava"], root)
    assert s.messages == [Message("user", "<image>\nDescribe it.")] and ref == "A noisy square."
    assert s.images == [os.path.join(root, "img1.png")]
    s, _ = to_sample(recs["openai"], root)
    assert s.messages == [Message("system", "Be brief."), Message("user", "<image>\nColour?")]
    s, ref = to_sample(recs["mplug"], root)
    assert s.messages == [Message("user", "<image>\nWhat is this?")] and ref is None
    assert s.images == [os.path.join(root, "pics", "p.png")]
    s, _ = to_sample(recs["sharegpt"], root)
    assert [m.role for m in s.messages] == ["user", "assistant", "user"]
    s, _ = to_sample(recs["two"], root)
    assert s.messages == [Message("user", "<image>\n<image>\nCompare the two.")] and len(s.images) == 2
    s, ref = to_sample(recs["caption"], root)
    assert s.messages == [Message("user", "<image>")] and ref == "noise"
    s, _ = to_sample({"messages": [{"role": "user", "content": "hi"}], "image": "img0.png"}, root)
    assert s.messages == [Message("user", "<image>\nhi")]
    with pytest.raises(SampleError, match="no user turn"):
        to_sample({"conversations": [{"from": "gpt", "value": "Hello, how can I help?"}]}, root)


def test_a_second_writer_is_refused(tmp_path):
    first = ResultsFile(tmp_path / "out.jsonl")
    try:
        with pytest.raises(InputError, match="being written by another owl generate"):
            ResultsFile(tmp_path / "out.jsonl")
    finally:
        first.close()


def test_cli_errors_are_one_line(model_dir, tmp_path, capsys):
    assert run(model_dir, tmp_path / "nope.jsonl", tmp_path / "o.jsonl") == 2
    assert "input file not found" in capsys.readouterr().err
    (tmp_path / "i.jsonl").write_text("{}\n")
    assert run(model_dir, tmp_path / "i.jsonl", tmp_path / "o.jsonl", "--batch-size", 0) == 2
    assert "--batch-size 0 must be >= 1" in capsys.readouterr().err


def test_kill_9_mid_run_resumes_to_the_same_records(model_dir, data, tmp_path):
    """A real SIGKILL while batches are being written; the resumed file equals one uninterrupted run."""
    many = tmp_path / "many.jsonl"
    base = records(data)
    many.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{k}"}) + "\n" for k in range(6) for r in base))
    out, full = tmp_path / "killed.jsonl", tmp_path / "full.jsonl"
    args = ["generate", str(model_dir), "--input", str(many), "--max-new-tokens", "24", "--batch-size", "2"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "owl.cli", *args, "--output", str(out), "--no-progress"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (not out.exists() or out.read_text().count("\n") < 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < out.read_text().count("\n") < 60, "killed before the end"
    assert main([*args, "--output", str(out), "--no-progress"]) == 0
    assert main([*args, "--output", str(full), "--no-progress"]) == 0
    assert by_id(out) == by_id(full) and len(by_id(full)) == 60
