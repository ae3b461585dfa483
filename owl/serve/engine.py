"""Continuous batching: one thread owns the model and decodes every running request in one batch per step.

Each :meth:`Engine.step`:

1. drops cancelled requests (a client that went away frees its slot at once);
2. admits waiting requests while there are free slots (up to a prefill token
   budget per step): their prompts (already tokenised, with pixels, by the
   caller) are embedded together (``OwlModel.embed``: vision tower +
   abstractor spliced into the text embeddings), run through the LLM with a
   fresh KV cache, and their first tokens chosen; the survivors join the
   running batch's cache (:class:`owl.serve.batch.KVBatch`);
3. runs one decode step for every running sequence at once;
4. chooses each sequence's next token with its own settings
   (:class:`owl.serve.sampling.Sampler`) and sends each request its new,
   stable text (:class:`owl.serve.sampling.TextStream`);
5. retires sequences that ended (EOS, stop string, token budget, cancelled)
   without touching the others' state.

Greedy answers equal ``owl.generation.generate`` on the request alone,
whatever else shares the batch and whenever it joined (tested for LLaMA and
BLOOM): the same embeddings, position ids from the mask, fp32 logits and
argmax, and the same final decode and stop-string cut.

Requests arrive from other threads (:meth:`Engine.submit`); each one's events
go to its ``on_event`` callback, called on the engine thread, which must not
block (the HTTP layer hands them to the request's asyncio queue). The waiting
queue is bounded: :class:`QueueFull` when it is full.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from owl.errors import InputError
from owl.generation import GenerationOptions, eos_ids
from owl.models.owl import OwlModel
from owl.processing import Encoded, OwlProcessor
from owl.serve.batch import ForwardKwargs, KVBatch
from owl.serve.sampling import Sampler, TextStream

log = logging.getLogger("owl.serve")


class QueueFull(Exception):
    """The waiting queue is full; the caller should answer 503 and ask the client to retry later."""


class EngineStopped(Exception):
    """The engine is not running (stopped, or its thread died)."""


@dataclass
class Event:
    """What a request hears from the engine: new text, and at the end why it finished and the token counts.

    ``finish_reason``: ``"stop"`` (EOS or a stop string), ``"length"`` (token budget), ``"cancelled"``, or
    ``"error"`` (``error`` says what went wrong). ``text`` on the last event is the whole answer.
    """

    delta: str = ""
    finish_reason: str | None = None
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Request:
    """A submitted generation. :meth:`cancel` from any thread; the engine frees its slot at its next step."""

    id: int
    encoded: Encoded
    options: GenerationOptions  # resolved
    budget: int  # answer tokens allowed
    on_event: Callable[[Event], None]
    cancelled: bool = False
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class _Sequence:
    """A running request's decoding state (engine thread only)."""

    def __init__(self, request: Request, processor: OwlProcessor, eos: set[int]) -> None:
        self.request = request
        self.sampler = Sampler(request.options)
        self.stream = TextStream(processor.decode, request.options.stop or [])
        self.eos = eos | set(request.options.eos_token_id or [])
        self.generated: list[int] = []
        self.last: int | None = None  # the token chosen last, fed to the next decode step

    def take(self, token: int) -> str | None:
        """Record a chosen token; the finish reason if the sequence ended with it."""
        if token in self.eos:
            return "stop"
        self.generated.append(token)
        self.last = token
        if self.stream.add(token):
            return "stop"
        if len(self.generated) >= self.request.budget:
            return "length"
        return None


def token_budget(options: GenerationOptions, prompt_tokens: int) -> int:
    """Answer tokens allowed for a prompt: ``max_new_tokens``, else what ``max_length`` leaves after the prompt."""
    if options.max_new_tokens is not None:
        return options.max_new_tokens
    budget = options.max_length - prompt_tokens
    if budget < 1:
        raise InputError(
            f"the prompt has {prompt_tokens} tokens (visual tokens included) but max_length={options.max_length} "
            "leaves no room for an answer; set max_tokens"
        )
    return budget


class Engine:
    """The continuous-batching generator; see the module docstring. Start its thread with :meth:`start`, or drive
    it by hand with :meth:`step` (tests)."""

    def __init__(
        self,
        model: OwlModel,
        processor: OwlProcessor,
        max_running: int = 16,
        max_queue: int = 64,
        max_prefill_tokens: int = 8192,
    ) -> None:
        if max_running < 1 or max_queue < 0 or max_prefill_tokens < 1:
            raise ValueError("max_running and max_prefill_tokens must be >= 1, max_queue >= 0")
        self.model = model.eval()
        self.processor = processor
        self.max_running = max_running
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.device = next(model.parameters()).device
        self.eos = set(eos_ids(model, processor))
        self._llm = model.causal_lm  # the transformers LM itself (a LoRA adapter is injected in its layers)
        self._kwargs = ForwardKwargs(self._llm)
        self._waiting: deque[Request] = deque()
        self._running: list[_Sequence] = []
        self._kv = KVBatch()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failure: str | None = None  # set when the engine thread died
        self.counters = {
            "requests_submitted": 0,
            "requests_served": 0,
            "requests_cancelled": 0,
            "requests_failed": 0,
            "requests_rejected_queue_full": 0,
            "steps": 0,
            "prefills": 0,
            "tokens_generated": 0,
            "max_sequences_in_step": 0,
        }

    # ------------------------------------------------------------------ other threads
    def submit(self, encoded: Encoded, options: GenerationOptions, on_event: Callable[[Event], None]) -> Request:
        """Queue a tokenised prompt with resolved ``options``; raises :class:`QueueFull`, :class:`EngineStopped`,
        or ``InputError`` (no room for an answer)."""
        budget = token_budget(options, len(encoded.input_ids))
        with self._cv:
            if self._stopping or self.failure:
                raise EngineStopped(self.failure or "the engine is stopping")
            if len(self._waiting) >= self.max_queue:
                self.counters["requests_rejected_queue_full"] += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            req = Request(next(self._ids), encoded, options, budget, on_event)
            self._waiting.append(req)
            self.counters["requests_submitted"] += 1
            self._cv.notify()
        return req

    def wake(self) -> None:
        """Let the engine thread notice a cancellation now rather than at its next step."""
        with self._cv:
            self._cv.notify()

    def metrics(self) -> dict:
        with self._cv:
            return {
                **self.counters,
                "running": len(self._running),
                "queue_length": len(self._waiting),
                "max_running": self.max_running,
                "max_queue": self.max_queue,
                "alive": self.alive,
            }

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="owl-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still waiting or running end with ``finish_reason="cancelled"``."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cv:
            pending = list(self._waiting)
            self._waiting.clear()
        for seq in self._running:
            pending.append(seq.request)
        self._running, self._kv = [], KVBatch()
        for req in pending:
            self._finish(req, Event(finish_reason="cancelled"))

    # ------------------------------------------------------------------ engine thread
    def _loop(self) -> None:
        torch.set_grad_enabled(False)  # grad mode is per thread
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # a bug or the device running out of memory: fail what is in flight, go on
                log.exception("engine step failed")
                self._fail_running(f"{type(e).__name__}: {e}")

    def step(self) -> bool:
        """One scheduling step (admit + prefill, one decode step, retire). False when there was nothing to do."""
        with torch.inference_mode():
            self._drop_cancelled()
            admitted = self._admit()
            if admitted:
                self._prefill(admitted)
            if self._running:
                self._decode()
            return bool(admitted or self._running)

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [r for r in self._waiting if r.cancelled]
            for r in gone:
                self._waiting.remove(r)
        for r in gone:
            self._finish(r, Event(finish_reason="cancelled"))
        if any(s.request.cancelled for s in self._running):
            self._retire({i: "cancelled" for i, s in enumerate(self._running) if s.request.cancelled})

    def _admit(self) -> list[Request]:
        out: list[Request] = []
        tokens = 0
        with self._cv:
            while self._waiting and len(self._running) + len(out) < self.max_running:
                n = len(self._waiting[0].encoded.input_ids)
                if out and tokens + n > self.max_prefill_tokens:
                    break
                out.append(self._waiting.popleft())
                tokens += n
        return out

    def _prefill(self, requests: list[Request]) -> None:
        seqs = [_Sequence(r, self.processor, self.eos) for r in requests]
        try:
            batch = self.processor.collate([r.encoded for r in requests], padding_side="left")
            ids = batch["input_ids"].to(self.device)
            mask = batch["attention_mask"].to(self.device)
            pixels = batch["pixel_values"]
            pixels = pixels.to(self.device) if pixels is not None else None
            embeds = self.model.embed(ids, pixels, batch["image_counts"])
            cache = DynamicCache()
            out = self._llm(inputs_embeds=embeds, **self._kwargs(cache, mask, ids.shape[1]))
            logits = out.logits[:, -1].float()
        except Exception as e:  # this group's prompts failed (e.g. memory); the running batch is untouched
            log.exception("prefill failed")
            for r in requests:
                self._finish(r, Event(finish_reason="error", error=f"{type(e).__name__}: {e}"))
            return
        self.counters["prefills"] += 1
        ended = self._choose(seqs, logits)
        keep = [i for i in range(len(seqs)) if i not in ended]
        for i, reason in ended.items():
            self._end(seqs[i], reason)
        if keep:
            kv = KVBatch()
            kv.cache, kv.mask = cache, mask
            if len(keep) < len(seqs):
                kv.keep(keep)
            self._kv.join(kv.cache, kv.mask)
            self._running += [seqs[i] for i in keep]

    def _decode(self) -> None:
        n = len(self._running)
        tokens = torch.tensor([[s.last] for s in self._running], dtype=torch.long, device=self.device)
        mask = self._kv.extend_mask()
        out = self._llm(input_ids=tokens, **self._kwargs(self._kv.cache, mask, 1))
        logits = out.logits[:, -1].float()
        self.counters["steps"] += 1
        self.counters["max_sequences_in_step"] = max(self.counters["max_sequences_in_step"], n)
        ended = self._choose(self._running, logits)
        if ended:
            self._retire(ended)

    def _choose(self, seqs: list[_Sequence], logits: torch.Tensor) -> dict[int, str]:
        """Pick each sequence's next token, send its new text; {row: finish reason} of those that ended."""
        greedy = logits.argmax(-1).tolist()
        ended: dict[int, str] = {}
        for i, seq in enumerate(seqs):
            token = greedy[i] if seq.sampler.greedy else seq.sampler(logits[i], seq.generated)
            reason = seq.take(token)
            self.counters["tokens_generated"] += 1
            if reason is not None:
                ended[i] = reason
            elif delta := seq.stream.delta():
                self._send(seq.request, Event(delta=delta))
        return ended

    def _retire(self, ended: dict[int, str]) -> None:
        keep = [i for i in range(len(self._running)) if i not in ended]
        for i, reason in ended.items():
            self._end(self._running[i], reason)
        self._kv.keep(keep)
        self._running = [self._running[i] for i in keep]

    def _end(self, seq: _Sequence, reason: str) -> None:
        text, rest, _ = seq.stream.final()
        req = seq.request
        self._finish(
            req,
            Event(
                delta=rest if reason != "cancelled" else "",
                finish_reason=reason,
                text=text,
                prompt_tokens=len(req.encoded.input_ids),
                completion_tokens=len(seq.generated),
            ),
        )

    def _finish(self, req: Request, event: Event) -> None:
        if req.finished:
            return
        req.finished = True
        key = {"cancelled": "requests_cancelled", "error": "requests_failed"}.get(
            event.finish_reason, "requests_served"
        )
        self.counters[key] += 1
        self._send(req, event)

    def _send(self, req: Request, event: Event) -> None:
        try:
            req.on_event(event)
        except Exception:  # a listener's failure (e.g. its event loop closed) must not stop the others
            log.warning("request %d: its event listener failed", req.id, exc_info=True)
            req.cancelled = True

    def _fail_running(self, why: str) -> None:
        running, self._running, self._kv = self._running, [], KVBatch()
        for seq in running:
            self._finish(seq.request, Event(finish_reason="error", error=why))
