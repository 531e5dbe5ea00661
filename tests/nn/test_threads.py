"""The CPU thread policy: all of torch's threads when the cores are free, one for a
small model beside busy jobs."""

from __future__ import annotations

import pytest
import torch

import harp.nn.threads as threads_module
from harp.nn.threads import SMALL_MODEL_PARAMETERS, apply_thread_policy


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("HARP_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "_initial_threads", 2)
    yield
    torch.set_num_threads(before)


def _cores_free(monkeypatch, n):
    monkeypatch.setattr(threads_module, "_free_cores", lambda: n)


def test_a_small_model_gets_one_thread_beside_busy_jobs_all_when_quiet(
    tiny, monkeypatch
):
    model, _ = tiny
    _cores_free(monkeypatch, 0)
    assert apply_thread_policy(model) == 1 == torch.get_num_threads()
    _cores_free(monkeypatch, 1)
    assert apply_thread_policy(model) == 1
    _cores_free(monkeypatch, 2)
    assert apply_thread_policy(model) == 2 == torch.get_num_threads()


def test_a_large_model_gets_the_free_cores(monkeypatch):
    large = torch.nn.Linear(5000, 5000)
    assert sum(p.numel() for p in large.parameters()) >= SMALL_MODEL_PARAMETERS
    _cores_free(monkeypatch, 1)
    assert apply_thread_policy(large) == 1
    _cores_free(monkeypatch, 8)
    assert apply_thread_policy(large) == 2  # never more than torch's own


def test_the_free_cores_are_counted_on_this_machine():
    import os

    free = threads_module._free_cores()
    if not os.path.exists("/proc/loadavg"):
        assert free is None
        return
    # This process itself is not counted as another's: some core is free at most
    # all of them, and never a negative count.
    assert isinstance(free, int) and 0 <= free <= len(os.sched_getaffinity(0))


def test_the_run_context_can_set_the_count(tiny_dir, monkeypatch):
    from harp.core.context import RunContext
    from harp.core.errors import ParameterError
    from harp.models import load_model

    _cores_free(monkeypatch, 0)
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
