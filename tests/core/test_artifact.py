"""JsonCache: a damaged or foreign entry is reported by name and counts as missing."""

from __future__ import annotations

import json

import pytest

from harp.core.artifact import JsonCache


@pytest.fixture
def cache(tmp_path):
    store = JsonCache(tmp_path)
    store.put("k1", {"report": {"loss": 0.25}, "seconds": 1.5})
    return store


def test_round_trip(cache):
    assert cache.get("k1") == {"report": {"loss": 0.25}, "seconds": 1.5}
    assert "k1" in cache and "k2" not in cache


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda text: text.replace("0.25", "0.35"), "does not match its checksum"),
        (lambda text: "{}", "not a harp cache entry"),
        (lambda text: text[: len(text) // 2], "unreadable"),
        (lambda text: json.dumps({"loss": 0.25}), "not a harp cache entry"),
    ],
)
def test_a_damaged_entry_is_named_and_recomputed(cache, caplog, damage, why):
    path = cache.path("k1")
    path.write_text(damage(path.read_text()))
    with caplog.at_level("WARNING"):
        assert cache.get("k1") is None
    assert str(path) in caplog.text and why in caplog.text
    cache.put("k1", {"report": {"loss": 0.25}, "seconds": 2.0})
    assert cache.get("k1")["seconds"] == 2.0


def test_an_entry_copied_under_another_key_is_not_trusted(cache, caplog):
    cache.path("k2").write_text(cache.path("k1").read_text())
    with caplog.at_level("WARNING"):
        assert cache.get("k2") is None
    assert "holds the result of 'k1'" in caplog.text
