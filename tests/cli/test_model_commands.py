"""`harp features`, `harp warmup` and `harp select --method less` on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from harp.app.cli import app
from harp.data.synthetic import make_skills_suite
from harp.features import FeatureStore

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    suite = make_skills_suite(n_pool=60, n_target_per_domain=5, n_pretrain=10)
    return suite.save(tmp_path_factory.mktemp("data"))


def test_features_embeddings_then_rerun_reuses_the_store(files, tmp_path):
    args = [
        "features",
        "--kind",
        "embeddings",
        "--encoder",
        "tfidf",
        "--data",
        str(files["pool"]),
        "--out",
        str(tmp_path),
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    (store_dir,) = tmp_path.glob("embeddings-*")
    store = FeatureStore.open(store_dir)
    assert store.n_rows == 60 and store.complete
    mtimes = {p.name: p.stat().st_mtime_ns for p in store_dir.glob("shard-*")}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime_ns for p in store_dir.glob("shard-*")} == mtimes


def test_features_gradients_on_a_local_model(files, tiny_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "features",
            "--kind",
            "gradients",
            "--model",
            str(tiny_dir),
            "--dim",
            "32",
            "--data",
            str(files["target"]),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    (store_dir,) = tmp_path.glob("gradients-*")
    store = FeatureStore.open(store_dir)
    x = store.read()
    assert x.shape == (15, 32) and np.all(np.isfinite(x)) and np.all(x != 0)
    assert store.spec["projection"] == {"dim": 32, "kind": "factored", "seed": 0}


def test_features_rejects_unknown_kind(files, tmp_path):
    result = runner.invoke(
        app,
        [
            "features",
            "--kind",
            "pixels",
            "--data",
            str(files["pool"]),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2 and "--kind 'pixels'" in result.output


def test_warmup_writes_checkpoints(files, tiny_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "warmup",
            "--pool",
            str(files["pool"]),
            "--model",
            str(tiny_dir),
            "--fraction",
            "0.25",
            "--epochs",
            "1",
            "--checkpoints",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "wu"),
        ],
    )
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if line.startswith("step")]
    assert len(steps) == 2
    meta = json.loads((tmp_path / "wu" / "warmup.json").read_text())
    assert meta["complete"] and len(meta["checkpoints"]) == 2


def test_select_less_with_a_local_model(files, tiny_dir, tmp_path):
    out = tmp_path / "less.jsonl"
    result = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(files["pool"]),
            "--target",
            str(files["target"]),
            "--method",
            "less",
            "--model",
            str(tiny_dir),
            "--budget",
            "10",
            "-p",
            "dim=64",
            "-p",
            "warmup_epochs=1",
            "-p",
            "n_checkpoints=1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "less.jsonl.meta.json").read_text())
    assert meta["method"] == "less" and len(meta["indices"]) == 10
    assert meta["params"]["model"] == str(tiny_dir)
    assert meta["cost"]["gradient_passes"] == 60 + 15


def test_model_flag_on_a_method_without_a_model(files, tmp_path):
    result = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(files["pool"]),
            "--model",
            "proxy",
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert result.exit_code == 2 and "uses no model" in result.output
