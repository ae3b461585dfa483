"""The official ``openai`` client against a real ``owl serve`` process: answers equal owl's own ``generate``."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
import torch

from owl.conversation import Message, Sample
from owl.generation import GenerationOptions, generate
from owl.models import load_model, save_pretrained
from owl.processing import OwlProcessor
from owl.serve.server import load, serve_in_thread, settings_for
from owl.train.config import LoraSpec, Trainable
from owl.train.trainable import apply_trainable
from tests.helpers import random_image
from tests.serve.conftest import png_data_url
from tests.serve.models import make


@pytest.fixture(scope="module")
def local(served_model_dir):
    """The served model loaded here, for owl's own answers to compare with."""
    return load_model(served_model_dir).eval(), OwlProcessor.from_pretrained(served_model_dir)


def solo(local, sample, n):
    return generate(*local, [sample], GenerationOptions(max_new_tokens=n))[0]


def test_non_streamed_and_streamed_answers_agree_with_generate(server, local):
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about owls."}]
    want = solo(local, Sample([Message("system", "Be brief."), Message("user", "Tell me about owls.")]), 16)
    r = client.chat.completions.create(model=server.name, messages=messages, max_tokens=16)
    assert r.choices[0].message.content == want.text and r.choices[0].finish_reason == want.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert r.object == "chat.completion" and r.model == server.name and r.id.startswith("chatcmpl-")

    chunks = list(
        client.chat.completions.create(
            model=server.name, messages=messages, max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.completion_tokens


def test_an_image_as_a_data_url(server, local):
    image = random_image(5)
    content = [
        {"type": "image_url", "image_url": {"url": png_data_url(image)}},
        {"type": "text", "text": "What is it?"},
    ]
    r = server.client().chat.completions.create(
        model=server.name, messages=[{"role": "user", "content": content}], max_tokens=10
    )
    want = solo(local, Sample([Message("user", "<image>\nWhat is it?")], [image]), 10)
    assert r.choices[0].message.content == want.text and r.usage.prompt_tokens == want.prompt_tokens


def test_multi_turn_with_an_image_in_an_earlier_turn(server, local):
    a, b = random_image(6), random_image(7)
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(a)}},
                                     {"type": "text", "text": "And this?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "Compare with"},
                                     {"type": "image_url", "image_url": {"url": png_data_url(b)}}]},
    ]  # fmt: skip
    r = server.client().chat.completions.create(model=server.name, messages=messages, max_tokens=10)
    sample = Sample(
        [
            Message("user", "<image>\nAnd this?"),
            Message("assistant", "A cat."),
            Message("user", "<image>\nCompare with"),
        ],
        [a, b],
    )
    want = solo(local, sample, 10)
    assert r.choices[0].message.content == want.text and r.usage.prompt_tokens == want.prompt_tokens


def test_sixteen_clients_at_once_share_the_batch_and_get_their_solo_answers(server, local):
    questions = ["Hi", "What colour is the sky on a clear day?", "Count to three.", "Why?"]
    want = {q: solo(local, Sample([Message("user", q)]), 24).text for q in questions}
    client = server.client()
    answers: dict[int, str] = {}
    barrier = threading.Barrier(16)

    def ask(i: int) -> None:
        barrier.wait()
        q = questions[i % 4]
        r = client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": q}], max_tokens=24)
        answers[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 16
    assert all(answers[i] == want[questions[i % 4]] for i in range(16))
    m = server.metrics()
    assert m["max_sequences_in_step"] > 1  # the batch was really shared (counted by the engine, not timed)
    assert m["running"] == 0 and m["queue_length"] == 0 and m["requests_served"] >= 16


def test_models_health_metrics_and_seeded_sampling(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == [server.name]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    m = server.metrics()
    assert {"requests_served", "max_sequences_in_step", "queue_length", "steps", "running"} <= set(m)
    kw = dict(model=server.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=12, temperature=1.5)
    a, b = (client.chat.completions.create(**kw, seed=3, top_p=0.95).choices[0].message.content for _ in range(2))
    assert a == b


def test_the_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(server.base_url + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # health stays open for probes


def test_a_lora_run_serves_on_its_base_model_unmerged(tmp_path):
    """A model directory with adapter/ (as a LoRA run writes it) serves with its adapter attached, not merged."""
    model, proc = make("llama", seed=5)
    apply_trainable(model, Trainable(llm="lora"), LoraSpec(r=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    save_dir = tmp_path / "lora-run"
    save_pretrained(model, save_dir, tokenizer=proc.tokenizer)
    assert (save_dir / "adapter").is_dir()

    served, processor = load(save_dir, device="cpu")
    assert hasattr(served.llm, "peft_config")  # attached, not merged
    sample = Sample([Message("user", "Tell me about owls.")])
    with_adapter = generate(served, processor, [sample], GenerationOptions(max_new_tokens=12))[0].text
    base = load_model(save_dir, load_adapter=False).eval()
    without = generate(base, processor, [sample], GenerationOptions(max_new_tokens=12))[0].text
    assert with_adapter != without  # the adapter matters, so the comparison below means something

    with serve_in_thread(served, processor, settings_for(save_dir)) as s:
        client = openai.OpenAI(base_url=s.base_url, api_key="-", max_retries=0)
        assert [m.id for m in client.models.list()] == ["lora-run"]
        r = client.chat.completions.create(
            model="lora-run", messages=[{"role": "user", "content": "Tell me about owls."}], max_tokens=12
        )
    assert r.choices[0].message.content == with_adapter
