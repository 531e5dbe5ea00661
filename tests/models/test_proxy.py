"""The proxy model: shape, seeded construction, pretraining."""

from __future__ import annotations

import pytest
import torch

from harp.core.errors import ParameterError
from harp.data import ExampleSet
from harp.models import ProxyConfig, build_proxy, pretrain_proxy


def _records(n=24):
    words = ["abcd", "bcda", "cdab", "dabc", "abdc", "badc"]
    return [
        {"prompt": f"copy: {words[i % 6]}", "response": words[i % 6], "domain": "copy"}
        for i in range(n)
    ]


def test_default_config_matches_design_size():
    model, tok = build_proxy()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < n_params < 0.95e6
    assert model.config.vocab_size == len(tok)
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128
    assert model.dtype == torch.float32
    assert not model.training


def test_seeded_init_and_caller_rng_untouched(tiny_config):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_proxy(tiny_config, seed=7)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG not consumed
    b, _ = build_proxy(tiny_config, seed=7)
    c, _ = build_proxy(tiny_config, seed=8)
    for (name, pa), pb, pc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values()
    ):
        assert torch.equal(pa, pb), name
    assert any(
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters())
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 30, "num_heads": 4},
        {"num_layers": 0},
        {"num_kv_heads": 3},
        {"attn_implementation": "flash"},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ParameterError):
        ProxyConfig(**kwargs)


def test_pretrain_lowers_loss_and_is_deterministic(tiny_config):
    data = ExampleSet.from_records(_records())
    from harp.training.evaluate import response_losses

    a, tok = build_proxy(tiny_config, seed=0)
    before = response_losses(a, tok, data).mean()
    pretrain_proxy(a, tok, data, steps=30, batch_size=8, lr=1e-2, seed=3)
    after = response_losses(a, tok, data).mean()
    assert after < before - 0.5
    assert not a.training
    b, _ = build_proxy(tiny_config, seed=0)
    pretrain_proxy(b, tok, data, steps=30, batch_size=8, lr=1e-2, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_pretrain_on_plain_texts_and_response_only(tiny_config):
    model, tok = build_proxy(tiny_config, seed=0)
    texts = ["hello world", "abc abc abc", "the cat sat"] * 4
    pretrain_proxy(model, tok, texts, steps=3, batch_size=4, seed=0)  # all tokens
    data = ExampleSet.from_records(_records(8))
    pretrain_proxy(model, tok, data, steps=3, batch_size=4, seed=0, loss_on="all")
    with pytest.raises(ParameterError, match="loss_on"):
        pretrain_proxy(model, tok, data, steps=1, batch_size=4, loss_on="prompt")
