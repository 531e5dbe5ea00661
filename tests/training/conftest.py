"""Fixtures: a tiny random Llama (hidden 32, 2 layers) and a folder holding it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from harp.models import ProxyConfig, build_proxy, save_model  # noqa: E402

TINY = ProxyConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: the CI machine has 2 cores shared by several jobs,
    and oversubscribed OpenMP is many times slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config():
    """The tiny model's shape."""
    return TINY


@pytest.fixture
def tiny():
    """A fresh tiny model and its character tokenizer (seed 0)."""
    return build_proxy(TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder holding the tiny model (config.json, model.safetensors, tokenizer)."""
    model, tok = build_proxy(TINY, seed=0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model(model, tok, path)
    return path
