"""The character tokenizer: round trips, special tokens, save and reload."""

from __future__ import annotations

from transformers import AutoTokenizer

from harp.models import build_char_tokenizer
from harp.models.tokenizer import BASE_CHARS, CHAR_SPECIAL_TOKENS

TEXT = "Sort: dcba\n### Response:\nabcd  {x} ~!@#$%^&*()_+-=[]|\\;:'\",.<>/?`"


def test_round_trip_every_base_char():
    tok = build_char_tokenizer()
    text = BASE_CHARS + TEXT
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1  # one token per character plus BOS
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_and_ids():
    tok = build_char_tokenizer()
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == list(CHAR_SPECIAL_TOKENS)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    )
    assert len(tok) == len(CHAR_SPECIAL_TOKENS) + len(set(BASE_CHARS))
    assert tok("ab</s>")["input_ids"][-1] == tok.eos_token_id


def test_unknown_chars_become_unk_and_extra_chars_get_ids():
    tok = build_char_tokenizer()
    ids = tok("aéb", add_special_tokens=False)["input_ids"]
    assert ids[1] == tok.unk_token_id and len(ids) == 3
    extra = build_char_tokenizer("éß")
    ids = extra("aéb", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert extra.decode(ids) == "aéb"
    assert len(extra) == len(tok) + 2
    # Same call, same ids.
    assert build_char_tokenizer("éß").get_vocab() == extra.get_vocab()


def test_save_and_reload(tmp_path):
    tok = build_char_tokenizer("é")
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    ids = again(TEXT + "é")["input_ids"]
    assert again.decode(ids, skip_special_tokens=True) == TEXT + "é"
    assert again.pad_token_id == tok.pad_token_id == 0
    assert again.eos_token_id == tok.eos_token_id


def test_batch_padding_sides():
    tok = build_char_tokenizer()
    right = tok(["ab", "abcd"], padding=True)["input_ids"]
    assert right[0][-2:] == [tok.pad_token_id] * 2
    tok.padding_side = "left"
    left = tok(["ab", "abcd"], padding=True)["input_ids"]
    assert left[0][:2] == [tok.pad_token_id] * 2
