"""The CPU thread policy: one thread for small models, torch's for large ones."""

from __future__ import annotations

import pytest
import torch

from harp.nn.threads import SMALL_MODEL_PARAMETERS, apply_thread_policy


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_small_model_runs_on_one_thread_a_large_one_on_torchs(tiny):
    model, _ = tiny
    initial = torch.get_num_threads()
    assert apply_thread_policy(model) == 1 == torch.get_num_threads()
    large = torch.nn.Linear(5000, 5000)
    assert sum(p.numel() for p in large.parameters()) >= SMALL_MODEL_PARAMETERS
    assert apply_thread_policy(large) == torch.get_num_threads()
    assert torch.get_num_threads() >= 1 and (
        initial == 1 or torch.get_num_threads() > 1
    )


def test_the_run_context_can_set_the_count(tiny_dir):
    from harp.core.context import RunContext
    from harp.core.errors import ParameterError
    from harp.models import load_model

    load_model(tiny_dir, context=RunContext(threads=2))
    assert torch.get_num_threads() == 2
    load_model(tiny_dir)
    assert torch.get_num_threads() == 1
    with pytest.raises(ParameterError, match="threads=0"):
        RunContext(threads=0)


def test_the_environment_overrides_the_policy(tiny, monkeypatch):
    from harp.core.errors import ParameterError

    model, _ = tiny
    torch.set_num_threads(2)
    monkeypatch.setenv("HARP_THREADS", "torch")
    assert apply_thread_policy(model) == 2
    monkeypatch.setenv("HARP_THREADS", "3")
    assert apply_thread_policy(model) == 3
    monkeypatch.setenv("HARP_THREADS", "many")
    with pytest.raises(ParameterError, match="HARP_THREADS"):
        apply_thread_policy(model)
