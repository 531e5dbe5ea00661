"""Which model a model-based method runs on: a folder, the proxy, or nothing given."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from harp.core.context import RunContext
from harp.core.errors import ModelError, ParameterError
from harp.data import ExampleSet
from harp.models import load_model
from harp.models.resolve import resolve_model

SMALL = dict(pretrain_steps=2, batch_size=4)


def _pool(n=24, tag=""):
    return ExampleSet.from_records(
        [{"prompt": f"up{tag}: ab{i}", "response": f"AB{i}"} for i in range(n)]
    )


def test_folder_is_validated(tiny_dir, tmp_path):
    assert resolve_model(tiny_dir, _pool()) == tiny_dir
    assert resolve_model(str(tiny_dir), ExampleSet.from_records([])) == tiny_dir
    with pytest.raises(ModelError, match="model directory not found"):
        resolve_model(tmp_path / "missing", _pool())
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError, match="no model weights found"):
        resolve_model(tmp_path, _pool())
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(tmp_path.parent, _pool())


def test_proxy_builds_once_then_reuses(tmp_path):
    pool = _pool()
    path = resolve_model("proxy", pool, context=RunContext(cache_dir=tmp_path), **SMALL)
    assert path.parent == tmp_path and path.name.startswith("proxy-")
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    model, tok = load_model(path)
    assert model.config.vocab_size == len(tok)
    again = resolve_model(
        "proxy", pool, context=RunContext(cache_dir=tmp_path), **SMALL
    )
    assert again == path
    assert weights.stat().st_mtime_ns == stamp
    # Another pool, seed or size gets its own folder.
    other = resolve_model(
        "proxy", _pool(tag="x"), context=RunContext(cache_dir=tmp_path), **SMALL
    )
    assert other != path
    capped = resolve_model(
        "proxy", pool, context=RunContext(cache_dir=tmp_path), max_rows=10, **SMALL
    )
    reseeded = resolve_model(
        "proxy", pool, context=RunContext(cache_dir=tmp_path, seed=1), **SMALL
    )
    assert len({path, other, capped, reseeded}) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (path, other, capped, reseeded)
    )


def test_a_proxy_folder_that_does_not_match_is_replaced_whole(tmp_path):
    pool = _pool()
    path = resolve_model("proxy", pool, context=RunContext(cache_dir=tmp_path), **SMALL)
    marker = path / "harp-proxy.json"
    built = json.loads(marker.read_text())
    marker.write_text(json.dumps({**built, "fingerprint": "another"}))
    (path / "left-over.bin").write_bytes(b"x")
    again = resolve_model(
        "proxy", pool, context=RunContext(cache_dir=tmp_path), **SMALL
    )
    assert again == path
    assert json.loads(marker.read_text())["fingerprint"] == built["fingerprint"]
    assert not (path / "left-over.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    model, tok = load_model(path)
    assert model.config.vocab_size == len(tok)


def test_none_means_proxy_and_logs_one_line(tmp_path, caplog):
    pool = _pool()
    with caplog.at_level(logging.INFO, logger="harp.models.resolve"):
        path = resolve_model(
            None, pool, context=RunContext(cache_dir=tmp_path), **SMALL
        )
    lines = [r for r in caplog.records if r.name == "harp.models.resolve"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    message = lines[0].getMessage()
    assert message.startswith("no --model given: using the built-in proxy model")
    assert str(path) in message
    assert (
        resolve_model("proxy", pool, context=RunContext(cache_dir=tmp_path), **SMALL)
        == path
    )


def test_bad_arguments(tmp_path):
    with pytest.raises(ParameterError, match="pool is empty"):
        resolve_model(
            "proxy", ExampleSet.from_records([]), context=RunContext(cache_dir=tmp_path)
        )
    with pytest.raises(ParameterError, match="pretrain_steps=0"):
        resolve_model(
            "proxy", _pool(), context=RunContext(cache_dir=tmp_path), pretrain_steps=0
        )
    with pytest.raises(ParameterError, match="max_rows"):
        resolve_model(
            None, _pool(), context=RunContext(cache_dir=tmp_path), max_rows=-1
        )
    with pytest.raises(ParameterError, match="model=3"):
        resolve_model(3, _pool(), context=RunContext(cache_dir=tmp_path))
    assert not list(tmp_path.iterdir())
