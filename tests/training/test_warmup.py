"""LESS warm-up: checkpoints, Adam state on disk, names, determinism, caching."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.data import ExampleSet
from harp.training import TrainConfig, finetune
from harp.training.warmup import WarmupResult, checkpoint_steps, warmup

CONFIG = TrainConfig(steps=8, batch_size=4, lora_r=4, lora_alpha=8.0)


def _pool(n=32):
    return ExampleSet.from_records(
        [
            {"prompt": f"rev: {i:03d}ab", "response": f"ba{i:03d}"[::-1], "domain": "r"}
            for i in range(n)
        ]
    )


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "w"
    torch.set_num_threads(1)
    return warmup(
        tiny_dir, _pool(), out, fraction=0.25, config=CONFIG, context=RunContext(seed=3)
    )


def _tensors(result):
    out = []
    for ckpt in result.checkpoints:
        out.append(load_file(str(ckpt.path / "adapter_model.safetensors")))
        out.append(load_file(str(ckpt.path / "optimizer.safetensors")))
    return out


def test_checkpoints_on_disk(run):
    assert [c.step for c in run.checkpoints] == [2, 4, 6, 8]
    for ckpt in run.checkpoints:
        assert ckpt.path.name == f"checkpoint-{ckpt.step}"
        for name in ("adapter_model.safetensors", "optimizer.safetensors"):
            assert (ckpt.path / name).is_file()
        info = json.loads((ckpt.path / "checkpoint.json").read_text())
        assert info["step"] == ckpt.step and info["lr"] == ckpt.lr > 0
        assert info["params"] and all("shape" in p for p in info["params"])
    manifest = json.loads((run.directory / "warmup.json").read_text())
    assert manifest["complete"] is True
    assert len(manifest["row_ids"]) == 8  # 25% of 32 rows
    assert manifest["row_ids"] == list(run.row_ids)
    assert manifest["config"]["steps"] == 8
    # The row sample draws from the "warmup" stream of the run's seed.
    assert manifest["seed"] == RunContext(seed=3).int_seed("warmup")
    assert manifest["dtype"] == "fp32"
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 4, 6, 8]
    # The cosine schedule decays: later checkpoints have smaller learning rates.
    lrs = [c.lr for c in run.checkpoints]
    assert lrs == sorted(lrs, reverse=True)


def test_no_pickle_anywhere(run):
    names = [p.name for p in run.directory.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    for path in run.directory.rglob("*.safetensors"):
        assert path.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle


def test_optimizer_state_matches_trainable_params(run):
    ckpt = run.checkpoints[-1]
    model = ckpt.load_model()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state = ckpt.optimizer_state()
    assert list(state) == list(trainable)
    assert all("lora_" in n for n in state)
    for name, (exp_avg, exp_avg_sq) in state.items():
        assert exp_avg.shape == exp_avg_sq.shape == trainable[name].shape
        assert bool((exp_avg_sq >= 0).all())
    assert any(bool(s[1].abs().sum() > 0) for s in state.values())
    assert load_file(str(ckpt.path / "optimizer.safetensors"))["step"].item() == 8


def test_adapter_weights_reload(run):
    ckpt = run.checkpoints[1]
    model = ckpt.load_model()
    saved = load_file(str(ckpt.path / "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    for key, value in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(params[name].detach(), value)


def test_last_checkpoint_equals_finetune(run, tiny_dir):
    pool = _pool()
    rows = [i for i, e in enumerate(pool) if e.id in set(run.row_ids)]
    tuned = finetune(tiny_dir, None, pool.subset(rows), CONFIG)
    want = {n: p.detach() for n, p in tuned.named_parameters() if p.requires_grad}
    got = run.checkpoints[-1].load_model()
    for name, param in got.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), want[name])


def test_deterministic(run, tiny_dir, tmp_path):
    again = warmup(
        tiny_dir,
        _pool(),
        tmp_path / "w2",
        fraction=0.25,
        config=CONFIG,
        context=RunContext(seed=3),
    )
    assert again.row_ids == run.row_ids
    assert again.fingerprint == run.fingerprint
    for a, b in zip(_tensors(run), _tensors(again)):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_is_a_cache_hit(run, tiny_dir):
    files = sorted(p for p in run.directory.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    again = warmup(
        tiny_dir,
        _pool(),
        run.directory,
        fraction=0.25,
        config=CONFIG,
        context=RunContext(seed=3),
    )
    assert again == run
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert WarmupResult.load(run.directory) == run


def test_other_run_in_same_dir_is_refused(run, tiny_dir):
    other = TrainConfig(steps=4, batch_size=4, lora_r=4, lora_alpha=8.0)
    with pytest.raises(ParameterError, match="holds another warm-up"):
        warmup(
            tiny_dir,
            _pool(),
            run.directory,
            fraction=0.25,
            config=other,
            context=RunContext(seed=3),
        )
    with pytest.raises(ParameterError, match="holds another warm-up"):
        warmup(
            tiny_dir,
            _pool(),
            run.directory,
            fraction=0.25,
            config=CONFIG,
            context=RunContext(seed=4),
        )


def test_overwrite_and_few_steps(tiny_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="harp.training.warmup"):
        first = warmup(
            tiny_dir,
            _pool(8),
            tmp_path,
            fraction=0.5,
            config=TrainConfig(steps=2, batch_size=2, lora_r=2),
            context=RunContext(seed=0),
        )
    assert [c.step for c in first.checkpoints] == [1, 2]  # fewer steps than 4
    assert "4 checkpoints asked for, but the run has 2 optimiser steps" in caplog.text
    second = warmup(
        tiny_dir,
        _pool(8),
        tmp_path,
        fraction=0.5,
        n_checkpoints=1,
        config=TrainConfig(steps=3, batch_size=2, lora_r=2),
        overwrite=True,
    )
    assert [c.step for c in second.checkpoints] == [3]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]


def test_incomplete_run_restarts(tiny_dir, tmp_path):
    config = TrainConfig(steps=2, batch_size=2, lora_r=2)
    first = warmup(tiny_dir, _pool(8), tmp_path, fraction=0.5, config=config)
    manifest = json.loads((tmp_path / "warmup.json").read_text())
    manifest["complete"] = False
    (tmp_path / "warmup.json").write_text(json.dumps(manifest))
    again = warmup(tiny_dir, _pool(8), tmp_path, fraction=0.5, config=config)
    assert again == first
    assert json.loads((tmp_path / "warmup.json").read_text())["complete"] is True


def test_bad_inputs(tiny_dir, tmp_path):
    with pytest.raises(ParameterError, match="pool is empty"):
        warmup(tiny_dir, ExampleSet.from_records([]), tmp_path)
    for fraction in (0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ParameterError, match="fraction="):
            warmup(tiny_dir, _pool(), tmp_path, fraction=fraction)
    with pytest.raises(ParameterError, match="n_checkpoints=0"):
        warmup(tiny_dir, _pool(), tmp_path, n_checkpoints=0)
    with pytest.raises(ParameterError, match="method='full'"):
        warmup(tiny_dir, _pool(), tmp_path, config=TrainConfig(method="full"))
    assert not (tmp_path / "warmup.json").exists()


def test_at_least_one_row(tiny_dir, tmp_path):
    result = warmup(
        tiny_dir,
        _pool(4),
        tmp_path,
        fraction=0.01,
        n_checkpoints=1,
        config=TrainConfig(steps=1, batch_size=2, lora_r=2),
    )
    assert len(result.row_ids) == 1


def test_checkpoint_steps():
    assert checkpoint_steps(100, 4) == [25, 50, 75, 100]
    assert checkpoint_steps(10, 4) == [3, 5, 8, 10]
    assert checkpoint_steps(1, 3) == [1]


def test_by_fingerprint_keeps_runs_apart(tiny_dir, tmp_path):
    small = dict(fraction=0.5, by_fingerprint=True, n_checkpoints=1)
    a = warmup(tiny_dir, _pool(8), tmp_path, config=TrainConfig(steps=1), **small)
    b = warmup(tiny_dir, _pool(8), tmp_path, config=TrainConfig(steps=2), **small)
    assert a.directory != b.directory
    assert a.directory.parent == b.directory.parent == tmp_path
    assert a.directory.name == f"warmup-{a.fingerprint[:16]}"
    again = warmup(tiny_dir, _pool(8), tmp_path, config=TrainConfig(steps=1), **small)
    assert again == a


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_file_is_named_and_the_warm_up_rerun(
    tiny_dir, tmp_path, caplog, damage
):
    config = TrainConfig(steps=2, batch_size=2, lora_r=2)
    first = warmup(tiny_dir, _pool(8), tmp_path, fraction=0.5, config=config)
    adapter = first.checkpoints[-1].path / "adapter_model.safetensors"
    original = adapter.read_bytes()
    data = bytearray(original)
    if damage == "flip":
        data[-3] ^= 0x10
    else:
        data = data[: len(data) // 2]
    adapter.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = warmup(tiny_dir, _pool(8), tmp_path, fraction=0.5, config=config)
    assert f"{adapter}: does not match its recorded SHA-256" in caplog.text
    assert again == first
    assert adapter.read_bytes() == original  # trained again, bit for bit
