"""Broken models and numerical faults: a clean error naming the culprit, no output.

A model folder without weights, one asking for remote code, a model whose weights are
NaN (every loss and gradient non-finite: the run must stop and name the example ids,
never select from garbage), and a feature store built by another model.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from harp.app.cli import app
from harp.data.synthetic import make_skills_suite

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    suite = make_skills_suite(n_pool=60, n_target_per_domain=4, n_pretrain=10)
    return suite.save(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def nan_model(tiny_dir, tmp_path_factory):
    """The tiny model with its first MLP weight set to NaN."""
    import torch

    from harp.models import load_model, save_model

    model, tokenizer = load_model(tiny_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "model"
    save_model(model, tokenizer, path)
    return path


def _select(files, out, *args):
    return runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(files["pool"]),
            "--target",
            str(files["target"]),
            "--out",
            str(out),
            "--budget",
            "10",
            *args,
        ],
    )


def _assert_clean(result, out, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    # Progress narration (INFO) may come first; the error is one final line.
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, result.output)
    assert not out.exists() and not out.with_name(out.name + ".meta.json").exists()


def test_model_folder_without_weights(files, tiny_dir, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(tiny_dir / "config.json", empty / "config.json")
    out = tmp_path / "out.jsonl"
    result = _select(
        files,
        out,
        "--method",
        "less",
        "--model",
        str(empty),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    _assert_clean(result, out, "no-weights", "weights")


def test_missing_model_folder(files, tmp_path):
    out = tmp_path / "out.jsonl"
    result = _select(
        files,
        out,
        "--method",
        "harp-c",
        "--model",
        str(tmp_path / "x"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    _assert_clean(result, out, str(tmp_path / "x"))


def test_remote_code_in_a_model_folder_is_never_run(files, tiny_dir, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(tiny_dir, remote)
    marker = tmp_path / "EXECUTED"
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
    )
    cache = ["--cache-dir", str(tmp_path / "cache"), "-p", "dim=32"]
    # A known architecture: transformers' own classes load it; the code never runs.
    out = tmp_path / "out.jsonl"
    ok = _select(files, out, "--method", "fisher", "--model", str(remote), *cache)
    assert ok.exit_code == 0, ok.output
    assert not marker.exists()
    # An architecture only the folder's code knows: refused, naming the fix.
    config["model_type"] = "evil-net"
    (remote / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out2.jsonl"
    refused = _select(files, out, "--method", "fisher", "--model", str(remote), *cache)
    _assert_clean(refused, out, "custom code", "--trust-remote-code")
    assert not marker.exists()
    # The flag the message advises exists on the command that printed it.
    assert "--trust-remote-code" in runner.invoke(app, ["select", "--help"]).output


@pytest.mark.parametrize("method", ["fisher", "harp-c"])
def test_nan_model_stops_the_run_and_names_the_examples(
    method, files, nan_model, tmp_path
):
    out = tmp_path / "out.jsonl"
    args = ["--method", method, "--model", str(nan_model)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    if method == "harp-c":
        args += ["-p", "encoder=tfidf", "-p", "train_steps=2", "--evals", "2"]
    else:
        args += ["-p", "dim=32", "-p", "warmup_epochs=1.0"]
    result = _select(files, out, *args)
    _assert_clean(result, out, "nan")
    # The ids of the examples involved are in the message.
    assert "ids" in result.output


def test_feature_store_of_another_model_is_refused(
    files, tiny_dir, nan_model, tmp_path
):
    from harp.core.errors import HarpError
    from harp.data import load_examples
    from harp.features import FeatureStore
    from harp.features.extract import extract_embedding_features, gradient_spec

    pool = load_examples(files["pool"])
    store = extract_embedding_features(pool, tmp_path, encoder="tfidf")
    spec = gradient_spec(tiny_dir, pool, dim=32)
    with pytest.raises(HarpError) as err:
        FeatureStore.open(store.directory, expect_spec=spec)
    message = str(err.value)
    assert str(store.directory) in message and "kind" in message
