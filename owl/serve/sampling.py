"""Per-sequence token choice and text: each request in a shared batch keeps its own settings and its own text.

:class:`Sampler` picks one sequence's next token from its logits row with that
request's settings, in transformers' order (repetition penalty over the
generated tokens, then temperature, top-k, top-p, then a draw); its random
generator belongs to the request, so a seeded answer does not depend on what
else shares the batch. Greedy rows are chosen for the whole batch at once.

:class:`TextStream` turns a sequence's token ids into text as they come. New
text is decoded from a short window of recent ids (the vLLM rule), and only
once it no longer ends in U+FFFD, so a multi-byte character split over tokens
is sent whole. Text that could be the start of a stop string is held back
until it is known not to be one, so a stream never sends what the final
answer cuts. The final text is the whole answer decoded at once and cut at the
first stop string exactly as ``owl.generation`` does, so it equals what
``generate`` returns; the stream's last delta makes up the difference.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from owl.generation import GenerationOptions


class Sampler:
    """Chooses the next token of one sequence; ``options`` must be resolved (every field set)."""

    def __init__(self, options: GenerationOptions) -> None:
        self.options = options
        self.greedy = not options.do_sample and options.repetition_penalty == 1.0
        self._seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**63)
        self._generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor, generated: list[int]) -> int:
        """``logits``: (V,) float32 for this sequence; ``generated``: its answer tokens so far."""
        o = self.options
        if o.repetition_penalty != 1.0 and generated:
            ids = torch.tensor(sorted(set(generated)), device=logits.device)
            picked = logits[ids]
            logits = logits.clone()
            logits[ids] = torch.where(picked < 0, picked * o.repetition_penalty, picked / o.repetition_penalty)
        if not o.do_sample:
            return int(logits.argmax())
        logits = logits / o.temperature
        if o.top_k and o.top_k < logits.shape[-1]:
            kth = torch.topk(logits, o.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if o.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=False)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative <= 1 - o.top_p
            drop[-1] = False  # always keep the most likely token
            logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        if self._generator is None or self._generator.device != logits.device:
            self._generator = torch.Generator(device=logits.device).manual_seed(self._seed)
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self._generator))


def stop_cut(text: str, stops: list[str]) -> int:
    """Where the first stop string starts in ``text`` (-1 if none): ``owl.generation``'s rule."""
    return min((text.find(s) for s in stops if s in text), default=-1)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (may still become one)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class TextStream:
    """One sequence's answer text, built token by token; see the module docstring."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]) -> None:
        self.decode = decode
        self.stops = list(stops)
        self.ids: list[int] = []
        self.text = ""  # stable text decoded so far
        self.sent = ""  # what the stream has been given
        self._prefix = 0  # decode window: ids[_prefix:_read] gave text already in self.text
        self._read = 0
        self._longest_stop = max((len(s) for s in self.stops), default=0)

    def add(self, token: int) -> bool:
        """Take one answer token; True when the text now contains a stop string."""
        self.ids.append(token)
        before = self.decode(self.ids[self._prefix : self._read])
        after = self.decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            start = max(0, len(self.text) - self._longest_stop + 1)
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
            return bool(self.stops) and stop_cut(self.text[start:], self.stops) >= 0
        return False

    def delta(self) -> str:
        """New text that is safe to send now (not part of a possible stop string)."""
        if self.stops and stop_cut(self.text, self.stops) >= 0:
            return ""  # finished by a stop string: the final text decides
        safe = self.text[: len(self.text) - _held_back(self.text, self.stops)]
        if not safe.startswith(self.sent):
            return ""
        new, self.sent = safe[len(self.sent) :], safe
        return new

    def final(self) -> tuple[str, str, bool]:
        """(whole answer text, the stream's last delta, whether a stop string cut it)."""
        text = self.decode(self.ids)
        cut = stop_cut(text, self.stops) if self.stops else -1
        if cut >= 0:
            text = text[:cut]
        rest = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = text if text.startswith(self.sent) else self.sent
        return text, rest, cut >= 0
