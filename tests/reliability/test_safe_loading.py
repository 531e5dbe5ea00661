"""Safe loading end to end: nothing from a model folder, a feature store or a config
file is unpickled or executed unless the user asks for it."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from harp.app.cli import app
from harp.data.synthetic import make_skills_suite

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    suite = make_skills_suite(n_pool=40, n_target_per_domain=3, n_pretrain=10)
    return suite.save(tmp_path_factory.mktemp("data"))


def test_pickle_only_model_is_refused_from_the_cli(files, tiny_dir, tmp_path):
    import torch

    from harp.models import load_model

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    model, _ = load_model(tiny_dir)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        app,
        ["select", "--pool", str(files["pool"]), "--method", "fisher"]
        + ["--model", str(folder), "--out", str(out), "--budget", "5"]
        + ["--cache-dir", str(tmp_path / "cache")],
    )
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "allow_pickle" in last
    assert not out.exists()


def test_config_file_cannot_run_code(files, tmp_path):
    marker = tmp_path / "EXECUTED"
    config = tmp_path / "select.yaml"
    config.write_text(
        f"pool: {files['pool']}\n"
        f"out: {tmp_path / 'o.jsonl'}\n"
        f"method: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    result = runner.invoke(app, ["select", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "select.yaml" in result.output and "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "o.jsonl").exists()


def test_suite_file_cannot_run_code(tmp_path):
    marker = tmp_path / "EXECUTED"
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        f"kind: skills\nmethods: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    result = runner.invoke(
        app, ["bench", "--suite", str(suite), "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 2, result.output
    assert "mine.yaml" in result.output
    assert not marker.exists()
