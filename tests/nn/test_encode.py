"""Encoding: label masking, truncation, batches on the model's device."""

from __future__ import annotations

import pytest
import torch

from harp.core.errors import ParameterError
from harp.data import ExampleSet
from harp.nn import (
    IGNORE_INDEX,
    collate,
    encode_examples,
    encode_texts,
    format_prompt,
    length_batches,
    model_device,
    pad_token_id,
    seeded,
)


def _labelled(row_ids, row_labels):
    return [t for t, lab in zip(row_ids, row_labels) if lab != IGNORE_INDEX]


def test_labels_cover_response_and_eos_only(tiny):
    _, tok = tiny
    data = ExampleSet.from_records([{"prompt": "rev: abcd", "response": "dcba"}])
    enc = encode_examples(tok, data, max_length=128)
    ids, labels = enc.input_ids[0], enc.labels[0]
    expected = tok(format_prompt("rev: abcd") + "dcba")["input_ids"] + [
        tok.eos_token_id
    ]
    assert list(ids) == expected
    assert enc.n_prompt[0] == len(tok(format_prompt("rev: abcd"))["input_ids"])
    assert all(lab == IGNORE_INDEX for lab in labels[: enc.n_prompt[0]])
    assert tok.decode(_labelled(ids, labels)) == "dcba</s>"


def test_prompt_change_leaves_labelled_tokens_unchanged(tiny):
    _, tok = tiny
    data = ExampleSet.from_records(
        [
            {"prompt": "short", "response": "same answer"},
            {"prompt": "a longer prompt\nwith two lines", "response": "same answer"},
        ]
    )
    enc = encode_examples(tok, data, max_length=128)
    assert _labelled(enc.input_ids[0], enc.labels[0]) == _labelled(
        enc.input_ids[1], enc.labels[1]
    )
    every = encode_examples(tok, data, max_length=128, response_only=False)
    assert every.labels[0] == every.input_ids[0]


def test_truncation_keeps_response_and_prompt_end(tiny):
    _, tok = tiny
    prompt = "x" * 50 + "QUESTION"
    data = ExampleSet.from_records([{"prompt": prompt, "response": "answer"}])
    enc = encode_examples(tok, data, max_length=40)
    ids = enc.input_ids[0]
    assert len(ids) == 40 and enc.truncated == 1
    assert ids[0] == tok.bos_token_id  # BOS kept
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.endswith("QUESTION\n### Response:\nanswer")
    assert tok.decode(_labelled(ids, enc.labels[0])) == "answer</s>"
    # A response longer than the budget is cut at its end; the prompt keeps half.
    data = ExampleSet.from_records([{"prompt": prompt, "response": "r" * 100}])
    enc = encode_examples(tok, data, max_length=30)
    assert len(enc.input_ids[0]) == 30 and enc.n_prompt[0] == 15


def test_rows_without_response_tokens_are_dropped(tiny):
    _, tok = tiny
    data = ExampleSet.from_records(
        [{"prompt": "a", "response": ""}, {"prompt": "b", "response": "c"}]
    )
    enc = encode_examples(tok, data, max_length=64, add_eos=False)
    assert enc.dropped == (0,) and enc.indices == (1,)


def test_collate_pads_right_and_builds_on_the_device(tiny):
    _, tok = tiny
    rows = [([1, 5, 6], [IGNORE_INDEX, 5, 6]), ([1, 7], [IGNORE_INDEX, 7])]
    ids, mask, labels = collate(rows, pad_id=0)
    assert ids.tolist() == [[1, 5, 6], [1, 7, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX]]
    assert ids.device.type == "cpu"
    model, _ = tiny
    on_model = collate(rows, pad_id=0, device=model_device(model))
    assert all(t.device == model_device(model) for t in on_model)
    assert all(torch.equal(a, b) for a, b in zip(on_model, (ids, mask, labels)))


def test_pad_token_falls_back_to_eos_and_then_fails(tiny):
    _, tok = tiny
    assert pad_token_id(tok) == tok.pad_token_id

    class NoPad:
        pad_token_id = None
        eos_token_id = 2

    assert pad_token_id(NoPad()) == 2
    NoPad.eos_token_id = None
    with pytest.raises(ParameterError, match="neither a pad nor an EOS"):
        pad_token_id(NoPad())


def test_encode_texts_labels_every_token(tiny):
    _, tok = tiny
    rows = encode_texts(tok, ["abc", "abcdefgh"], max_length=6)
    assert [i for i, _, _ in rows] == [0, 1]
    for _, ids, labels in rows:
        assert ids == labels and ids[0] == tok.bos_token_id
    assert rows[0][1][-1] == tok.eos_token_id  # BOS + 3 characters + EOS
    assert len(rows[1][1]) == 6  # cut at max_length


def test_length_batches_group_by_length_stably():
    assert length_batches([3, 1, 2, 1, 3], 2) == [[1, 3], [2, 0], [4]]


def test_seeded_restores_the_callers_generator():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    with seeded(5):
        inside = torch.rand(3)
    with seeded(5):
        assert torch.equal(torch.rand(3), inside)
    assert torch.equal(torch.rand(3), expected)
