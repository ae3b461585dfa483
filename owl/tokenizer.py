"""A byte-level tokenizer built in code, for tiny random models.

Tests and the ``tiny`` preset need a real ``transformers`` tokenizer without a
hub download. A byte-level BPE with no merges covers every string, round-trips
exactly, and behaves like any other fast tokenizer (special tokens, chat
template, save/load).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# A ChatML-style template so the "chat-template" processing path can be tested offline.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Return a byte-level tokenizer: ids 0-2 are <unk>, <s>, </s>; 3..258 are the 256 bytes."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    assert len(vocab) == BYTE_VOCAB_SIZE
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast
