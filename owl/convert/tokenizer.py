"""A fast tokenizer that reproduces the released mPLUG-Owl (LLaMA) SentencePiece tokenizer exactly.

The reference tokenised with the slow, legacy ``LlamaTokenizer``: for text
without special-token strings, each call is ``sp.encode(text)`` (SentencePiece
adds one "▁" in front and turns every space into "▁"). transformers 5 converts
a ``tokenizer.model`` to a Metaspace pre-tokenizer with ``prepend_scheme
"always"``, which does not add the "▁" when the text already starts with a
space: ``sp.encode(" lead")`` gives ``['▁▁', 'le', 'ad']`` but it gives
``['▁', 'le', 'ad']``. A converted model must see the ids it was trained on,
so this module builds the classic LLaMA ``tokenizer.json`` layout instead
(normalizer: prepend "▁", replace " " with "▁"; no pre-tokenizer; BPE with
byte fallback; the matching decoder), which matches ``sp.encode`` and is
loaded verbatim by ``AutoTokenizer`` (the saved class is the generic fast
tokenizer, so nothing rebuilds the pipeline on load).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from owl.errors import ConfigError

# SentencePiece piece types (sentencepiece_model.proto): 1 normal, 2 unknown, 3 control, 4 user defined, 6 byte.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def _read_proto(model_file: Path):  # noqa: ANN202 (a protobuf message class generated at run time)
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb2
    except ImportError as e:
        raise ImportError(
            "reading a SentencePiece tokenizer.model needs the sentencepiece and protobuf packages "
            "(pip install 'sentencepiece>=0.2' 'protobuf>=4')"
        ) from e
    proto = pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as e:  # protobuf raises DecodeError (and others) for bad files
        raise ConfigError(f"{model_file} is not a SentencePiece model: {e}") from e
    return proto


def _merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """BPE merges for the normal pieces, most preferred first.

    SentencePiece merges the adjacent pair whose joined piece has the highest
    score; a rank-ordered merge list reproduces that when merges are sorted by
    the joined piece's score (ties by id, i.e. training order). Control, byte and
    unknown pieces never take part, as in SentencePiece (``<s>`` in text is text).
    """
    normal = {p: i for i, (p, _, t) in enumerate(pieces) if t in (_NORMAL, _USER_DEFINED)}
    out: list[tuple[float, int, int, str, str]] = []
    for piece, i in normal.items():
        score = pieces[i][1]
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                out.append((-score, i, normal[left], left, right))
    out.sort()
    return [(left, right) for *_, left, right in out]


def llama_tokenizer_from_spm(
    model_file: str | Path,
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    unk_token: str = "<unk>",
    pad_token: str | None = "<unk>",
    model_max_length: int = 2048,
) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` equal to the legacy slow ``LlamaTokenizer`` on ``model_file``.

    ``tokenizer(text, add_special_tokens=False)`` gives ``sp.encode(text)`` for text
    without special-token strings (leading and repeated spaces included); no BOS or EOS
    is added automatically (the reference adds them by hand). ``pad_token`` defaults to
    ``<unk>``, as the reference's ``MplugOwlTokenizer``. The result survives
    ``save_pretrained`` and ``AutoTokenizer.from_pretrained`` unchanged.
    """
    model_file = Path(model_file)
    if not model_file.is_file():
        raise ConfigError(f"SentencePiece model not found: {model_file}")
    proto = _read_proto(model_file)
    if proto.trainer_spec.model_type != 2:  # 1 unigram, 2 bpe
        raise ConfigError(f"{model_file} is not a BPE SentencePiece model (LLaMA's is); cannot convert it")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    for name, tok in (("bos", bos_token), ("eos", eos_token), ("unk", unk_token)):
        if tok not in vocab:
            raise ConfigError(f"{model_file} has no {name} piece {tok!r}; pass {name}_token=<the model's piece>")

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=_merges(pieces), unk_token=unk_token, fuse_unk=True, byte_fallback=True)
    )
    spec = proto.normalizer_spec
    steps = [normalizers.Prepend("▁")] if spec.add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(content=" ", left=1, right=0)] if spec.add_dummy_prefix else []
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    # Control pieces are special (never produced from text by SentencePiece, only added by hand); user-defined
    # pieces are matched in text as a whole, as SentencePiece does.
    tok.add_special_tokens(
        [AddedToken(p, normalized=False, special=True) for p, _, t in pieces if t in (_CONTROL, _UNKNOWN)]
    )
    user = [AddedToken(p, normalized=False, special=False) for p, _, t in pieces if t == _USER_DEFINED]
    if user:
        tok.add_tokens(user)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        unk_token=unk_token,
        pad_token=pad_token,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
