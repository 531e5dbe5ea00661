"""A character-level tokenizer built offline, for the tiny proxy model."""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

__all__ = ["build_char_tokenizer", "CHAR_SPECIAL_TOKENS", "BASE_CHARS"]

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
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in CHAR_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for char in BASE_CHARS + extra_chars:
        if char not in vocab:
            vocab[char] = len(vocab)
    pad, bos, eos, unk = CHAR_SPECIAL_TOKENS

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    # One pre-token per character (newlines included), kept as they are.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A $B",
        special_tokens=[(bos, vocab[bos])],
    )
    backend.add_special_tokens(list(CHAR_SPECIAL_TOKENS))
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
