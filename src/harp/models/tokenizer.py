"""A character-level tokenizer built offline, for the tiny proxy model."""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "build_bpe_tokenizer",
    "build_char_tokenizer",
    "CHAR_SPECIAL_TOKENS",
    "BASE_CHARS",
]

#: Special tokens of the character tokenizer, in id order (``<pad>`` is id 0).
CHAR_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")

#: Printable ASCII (letters, digits, punctuation, space) plus the newline.
BASE_CHARS: str = string.ascii_letters + string.digits + string.punctuation + " " + "\n"


def build_char_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """Build a character-level tokenizer without any download.

    Every character of :data:`BASE_CHARS` (printable ASCII, the space and ``"\\n"``)
    plus ``extra_chars`` is one token; any other character becomes ``<unk>``. The
    special tokens are ``<pad>`` (id 0), ``<s>`` (BOS, prepended to every encoded
    text, as Llama tokenizers do), ``</s>`` (EOS) and ``<unk>``. Decoding joins the
    characters back without spaces, so ``decode(encode(text))`` gives ``text`` back
    for any text made of known characters.

    Parameters
    ----------
    extra_chars : str, default ""
        Further characters to give their own token (duplicates are ignored). The
        vocabulary order is fixed by this argument, so the same call always gives the
        same ids.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        A fast tokenizer; ``save_pretrained(dir)`` writes it and
        ``AutoTokenizer.from_pretrained(dir)`` reads it back.

    Examples
    --------
    >>> tok = build_char_tokenizer()
    >>> ids = tok("ab")["input_ids"]
    >>> ids[0] == tok.bos_token_id, len(ids)
    (True, 3)
    >>> tok.decode(ids, skip_special_tokens=True)
    'ab'
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
    )

    vocab: dict[str, int] = {}
    for token in CHAR_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for char in BASE_CHARS + extra_chars:
        if char not in vocab:
            vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=CHAR_SPECIAL_TOKENS[3]))
    # One pre-token per character (newlines included), kept as they are.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(CHAR_SPECIAL_TOKENS))
    return _with_specials(backend)


def _with_specials(backend: Any) -> PreTrainedTokenizerFast:
    """A fast tokenizer over ``backend`` that prepends BOS, with harp's specials."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos, unk = CHAR_SPECIAL_TOKENS
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A $B",
        special_tokens=[(bos, backend.token_to_id(bos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=1_000_000,
    )


def build_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (offline, seconds).

    The subword tokenizer of a small random model that should read text as a real
    model does (merges of frequent byte sequences, any Unicode text encodable), when
    no real model's tokenizer is at hand. Special tokens and BOS handling are those
    of :func:`build_char_tokenizer`. Training is deterministic for the same texts.

    Parameters
    ----------
    texts : iterable of str
        The corpus.
    vocab_size : int, default 2048
        Target vocabulary size (the 256 bytes and the specials included).

    Returns
    -------
    transformers.PreTrainedTokenizerFast

    Examples
    --------
    >>> tok = build_bpe_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    >>> ids = tok("the cat")["input_ids"]
    >>> ids[0] == tok.bos_token_id, tok.decode(ids, skip_special_tokens=True)
    (True, 'the cat')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    backend = Tokenizer(models.BPE(unk_token=CHAR_SPECIAL_TOKENS[3]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=list(CHAR_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    return _with_specials(backend)
