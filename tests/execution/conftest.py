"""Fixtures shared by the executor tests."""

from __future__ import annotations

import pytest

from harp.selectors import make_selector


@pytest.fixture
def fast_harp(tiny_dir):
    """``fast_harp(cache_dir, **params)``: a HARP-C selector on the tiny model that
    makes a few short train-evaluate calls (4 leaves, 2 a round)."""

    def make(cache, **kw):
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
            cache_dir=str(cache),
            **kw,
        )

    return make
