"""Fixtures shared by the executor tests."""

from __future__ import annotations

import pytest

from harp.core.context import RunContext
from harp.selectors import make_selector


@pytest.fixture
def fast_harp(tiny_dir):
    """``fast_harp(cache_dir, executor=None, **params)``: a HARP-C selector on the
    tiny model that makes a few short train-evaluate calls (4 leaves, 2 a round)."""

    def make(cache, executor=None, **kw):
        return make_selector(
            "harp-c",
            budget=30,
            model=str(tiny_dir),
            encoder="tfidf",
            leaf_size=10,
            train_steps=2,
            bootstrap=10,
            evals=4,
            round_size=2,
            context=RunContext(cache_dir=cache, executor=executor),
            **kw,
        )

    return make
