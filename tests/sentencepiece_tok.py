"""A small LLaMA-like SentencePiece BPE model, trained on the fly (no download), and a fixture for it.

The released mPLUG-Owl checkpoints use LLaMA's SentencePiece tokenizer, whose
"▁" word prefix and whitespace pieces are what make chunk-wise and
segment-wise tokenisation disagree. A byte-level test tokenizer cannot show
that, so tests that check reference compatibility train this one: the same
trainer settings as LLaMA (BPE, byte fallback, split digits, unk 0 / bos 1 /
eos 2, dummy prefix, identity normalisation, whitespace kept), a few hundred
pieces learnt from template-like English so real merges exist.

Use the session fixture ``spm_model`` (the path of ``tokenizer.model``)::

    from tests.sentencepiece_tok import spm_model  # noqa: F401
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

VOCAB_SIZE = 600

_SYSTEM = (
    "The following is a conversation between a curious human and AI assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_QA = [
    ("What is in the picture?", "A black cat is sleeping on a red sofa near the window."),
    ("What colour is the car?", "The car is blue, and it is parked in front of a small house."),
    ("How many people are there?", "There are 3 people: two adults and one child, standing by the river."),
    ("Describe the image in detail.", "The image shows a busy street with shops, trees and people walking."),
    ("Is it raining?", "No, the sky is clear and the sun is shining over the green hills."),
    ("What is the man holding?", "He is holding an umbrella and a cup of coffee from the café."),
    ("Why is this meme funny?", "Because the dog looks surprised, as if it had never seen snow before."),
    ("Compare the two images.", "The first one is brighter; the second one was taken at night, at 10:45 pm."),
    ("Read the text on the sign.", "The sign says: 'Open 24 hours, 7 days a week'."),
    ("Where was this photo taken?", "It looks like a beach in Spain, with naïve paintings on the wall."),
]


def corpus() -> list[str]:
    """Template-like lines (system prompt, Human/AI turns, ``<image>`` lines, spaces and digits)."""
    lines = [_SYSTEM]
    for i, (q, a) in enumerate(_QA):
        lines += [
            f"Human: <image>\nHuman: {q}\nAI: {a}",
            f"Human: {q}",
            f"AI: {a}",
            f"{q} {a}",
            f"  {a}  ",  # leading and double spaces, so whitespace-only pieces are learnt
            f"Question {i}: {q}\n\nAnswer: {a}",
            f"In {1990 + i}, {a.lower()}",
        ]
    lines += ["日本語のテキスト", "Ünïcödé tëxt, déjà vu", "tab\tseparated\tvalues", "a    b     c"]
    return lines


def train_spm(directory: str | Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train the model and write ``directory/tokenizer.model``; returns its path (deterministic, well under 1 s)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus() * 3),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path = Path(directory) / "tokenizer.model"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a trained LLaMA-like ``tokenizer.model`` (one per test session)."""
    return train_spm(tmp_path_factory.mktemp("spm"))
