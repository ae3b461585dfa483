"""The continuous-batching engine without HTTP: staggered joins give each request exactly its solo greedy answer."""

from __future__ import annotations

import pytest

from owl.conversation import Message, Sample
from owl.generation import GenerationOptions, generate
from owl.serve.engine import Engine, Event, QueueFull
from tests.helpers import random_image
from tests.serve.models import forbid_eos, make


def prompts():
    a, b = random_image(1), random_image(2)
    return [
        Sample([Message("user", "<image>\nWhat is it?")], [a]),
        Sample([Message("user", "A much longer text-only question, to force left padding in the batch?")]),
        Sample([Message("user", "<image>\n<image>\nCompare.")], [a, b]),
        Sample([Message("user", "<image>\nFirst?"), Message("assistant", "A."), Message("user", "Then?")], [b]),
        Sample([Message("system", "Be brief."), Message("user", "Hi")]),
    ]


class Collector:
    """Records one request's events, as the HTTP layer's queue would."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1].done

    @property
    def last(self) -> Event:
        return self.events[-1]

    @property
    def streamed(self) -> str:
        return "".join(e.delta for e in self.events)


def submit(engine, proc, sample, options):
    c = Collector()
    resolved = options.resolve()
    engine.submit(proc.encode(sample, for_generation=True), resolved, c)
    return c


def run_until_done(engine, collectors, limit=500):
    for _ in range(limit):
        if all(c.done for c in collectors):
            return
        engine.step()
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_staggered_joins_give_each_request_its_solo_greedy_answer(family):
    model, proc = make(family, seed=3)
    ps = prompts()
    budgets = [6, 14, 9, 12, 4]
    solo = [generate(model, proc, [p], GenerationOptions(max_new_tokens=n))[0] for p, n in zip(ps, budgets)]
    assert len({c.text for c in solo}) > 2  # not a degenerate constant output

    engine = Engine(model, proc, max_running=8)
    got = [submit(engine, proc, ps[0], GenerationOptions(max_new_tokens=budgets[0]))]
    engine.step(), engine.step()
    got += [submit(engine, proc, p, GenerationOptions(max_new_tokens=n)) for p, n in zip(ps[1:3], budgets[1:3])]
    for _ in range(3):
        engine.step()
    got += [submit(engine, proc, p, GenerationOptions(max_new_tokens=n)) for p, n in zip(ps[3:], budgets[3:])]
    run_until_done(engine, got)

    for c, want in zip(got, solo):
        assert (c.last.text, c.last.finish_reason) == (want.text, want.finish_reason)
        assert (c.last.prompt_tokens, c.last.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
        assert c.streamed == c.last.text  # the deltas add up to the answer
    m = engine.metrics()
    assert m["max_sequences_in_step"] >= 3 and m["running"] == 0 and m["requests_served"] == len(ps)


def test_stop_strings_and_eos_end_a_sequence_as_generate_does():
    model, proc = make("llama", seed=3)
    p = prompts()[1]
    full = generate(model, proc, [p], GenerationOptions(max_new_tokens=12))[0].text
    stop = full[3:5]
    want = generate(model, proc, [p], GenerationOptions(max_new_tokens=12, stop=[stop, "never"]))[0]
    engine = Engine(model, proc)
    c = submit(engine, proc, p, GenerationOptions(max_new_tokens=12, stop=[stop, "never"]))
    other = submit(engine, proc, prompts()[0], GenerationOptions(max_new_tokens=12))
    run_until_done(engine, [c, other])
    assert (c.last.text, c.last.finish_reason) == (want.text, "stop") and c.streamed == want.text
    assert stop not in c.streamed


def test_seeded_sampling_does_not_depend_on_the_batch():
    model, proc = make("llama", seed=4)
    opts = GenerationOptions(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=40, top_p=0.9, seed=11)
    engine = Engine(model, proc)
    alone = submit(engine, proc, prompts()[0], opts)
    run_until_done(engine, [alone])
    crowd = [submit(engine, proc, p, GenerationOptions(max_new_tokens=10, do_sample=True)) for p in prompts()[1:]]
    engine.step()
    again = submit(engine, proc, prompts()[0], opts)
    run_until_done(engine, [again, *crowd])
    assert again.last.text == alone.last.text
    opts.seed = 12
    third = submit(engine, proc, prompts()[0], opts)
    run_until_done(engine, [third])
    assert third.last.text != alone.last.text


def test_bounded_queue_and_max_running():
    model, proc = make("llama", seed=1, scale=0)
    engine = Engine(model, proc, max_running=2, max_queue=3)
    cs = [submit(engine, proc, prompts()[4], GenerationOptions(max_new_tokens=3)) for _ in range(3)]
    with pytest.raises(QueueFull):
        submit(engine, proc, prompts()[4], GenerationOptions(max_new_tokens=3))
    engine.step()
    m = engine.metrics()
    assert (m["running"], m["queue_length"], m["requests_rejected_queue_full"]) == (2, 1, 1)
    run_until_done(engine, cs)
    assert engine.metrics()["max_sequences_in_step"] == 2


def test_a_cancelled_request_frees_its_slot_at_the_next_step():
    model, proc = make("llama", seed=1, scale=0)
    forbid_eos(model, proc)
    engine = Engine(model, proc, max_running=1)
    long = submit(engine, proc, prompts()[4], GenerationOptions(max_new_tokens=500))
    engine.step(), engine.step()
    waiting = submit(engine, proc, prompts()[4], GenerationOptions(max_new_tokens=3))
    engine.step()
    assert engine.metrics()["queue_length"] == 1
    engine._running[0].request.cancel()  # the long one's client went away
    run_until_done(engine, [long, waiting], limit=10)
    assert long.last.finish_reason == "cancelled" and long.last.completion_tokens < 10
    assert waiting.last.finish_reason == "length"
    m = engine.metrics()
    assert (m["requests_cancelled"], m["requests_served"], m["running"]) == (1, 1, 0)


def test_the_engine_thread_serves_and_stops():
    import time

    model, proc = make("llama", seed=1, scale=0)
    engine = Engine(model, proc).start()
    try:
        c = submit(engine, proc, prompts()[4], GenerationOptions(max_new_tokens=5))
        deadline = time.monotonic() + 30
        while not c.done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.done and c.last.completion_tokens <= 5 and engine.alive
    finally:
        engine.stop()
    assert not engine.alive
