"""The run on a GPU: the tiny model placed on ``cuda``, trained, scored and
differentiated there, and the results checked against the same work on the CPU.

Every test here carries the ``gpu`` marker and is skipped where torch sees no CUDA
device (``tests/conftest.py``); run them on a GPU machine with
``python -m pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harp.core.context import RunContext
from harp.data import ExampleSet
from harp.models import load_model
from harp.nn import model_device
from harp.training import EvalConfig, TrainConfig, TrainEvalUtility, evaluate, finetune

pytestmark = pytest.mark.gpu

CPU = RunContext(device="cpu", dtype="fp32")
GPU = RunContext(device="cuda", dtype="fp32")
WORDS = ["abcd", "bcda", "cdab", "dabc", "abdc", "badc", "cadb", "dcba"]
TRAIN = TrainConfig(steps=6, batch_size=4, lr=1e-2)
EVAL = EvalConfig(max_new_tokens=5, batch_size=8)


def _rows(n, offset=0):
    return ExampleSet.from_records(
        [
            {"prompt": f"rev {w}", "response": w[::-1], "domain": d}
            for d, w in zip(["x", "y"] * n, (WORDS * 4)[offset : offset + n])
        ]
    )


def _lora(model):
    return {
        n: p.detach().float().cpu() for n, p in model.named_parameters() if "lora_" in n
    }


def test_the_model_is_placed_once_on_the_context_device(tiny_dir):
    model, _ = load_model(tiny_dir, context=GPU)
    assert model_device(model).type == "cuda"
    assert next(model.parameters()).dtype == torch.float32
    auto, _ = load_model(tiny_dir, context=RunContext(device="cuda"))
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert next(auto.parameters()).dtype == expected


def test_finetune_and_evaluate_on_cuda_match_the_cpu(tiny_dir):
    reports, weights = {}, {}
    for name, context in (("cpu", CPU), ("cuda", GPU)):
        model, tok = load_model(tiny_dir, context=context)
        tuned = finetune(model, tok, _rows(8), TRAIN)
        assert model_device(tuned).type == name
        weights[name] = _lora(tuned)
        reports[name] = evaluate(tuned, tok, _rows(6, 8), EVAL)
    for key, cpu in weights["cpu"].items():
        torch.testing.assert_close(weights["cuda"][key], cpu, rtol=1e-3, atol=1e-4)
    for domain in ("x", "y"):
        cpu, gpu = reports["cpu"][domain], reports["cuda"][domain]
        assert gpu["loss"].mean == pytest.approx(cpu["loss"].mean, abs=1e-3)
        assert gpu["exact_match"].n == cpu["exact_match"].n


def test_bf16_training_keeps_fp32_adapters_and_finite_losses(tiny_dir):
    context = RunContext(device="cuda", dtype="bf16")
    model, tok = load_model(tiny_dir, context=context)
    tuned = finetune(model, tok, _rows(8), TRAIN)
    adapters = [p for n, p in tuned.named_parameters() if "lora_" in n]
    assert adapters and all(p.dtype == torch.float32 for p in adapters)
    report = evaluate(tuned, tok, _rows(6, 8), EvalConfig(metrics=("loss",)))
    assert all(np.isfinite(report[d]["loss"].mean) for d in ("x", "y"))


def test_gradients_and_projection_on_cuda_match_the_cpu(tiny_dir):
    from harp.features.gradients import gradient_dim, per_sample_gradients
    from harp.features.projection import RandomProjector
    from harp.models import attach_lora
    from harp.nn import seeded

    out = {}
    for name, context in (("cpu", CPU), ("cuda", GPU)):
        model, tok = load_model(tiny_dir, context=context)
        with seeded(0):
            model = attach_lora(model)
        projector = RandomProjector(gradient_dim(model), 64, seed=3)
        rows = [
            g
            for _, g in per_sample_gradients(
                model, tok, _rows(8), batch_size=4, projector=projector
            )
        ]
        out[name] = np.concatenate(rows)
    np.testing.assert_allclose(out["cuda"], out["cpu"], rtol=1e-3, atol=1e-4)


def test_the_utility_runs_on_cuda_with_the_cpu_key(tiny_dir, tmp_path):
    cpu = TrainEvalUtility(
        tiny_dir, _rows(6, 8), TRAIN, EVAL, context=CPU.replace(cache_dir=tmp_path)
    )
    gpu = TrainEvalUtility(
        tiny_dir,
        _rows(6, 8),
        TRAIN,
        EVAL,
        context=GPU.replace(cache_dir=tmp_path / "gpu"),
    )
    assert gpu.key(_rows(8)) == cpu.key(_rows(8))  # the device is not in the key
    a, b = cpu(_rows(8)), gpu(_rows(8))
    for domain in ("x", "y"):
        assert b[domain]["loss"].mean == pytest.approx(a[domain]["loss"].mean, abs=1e-3)


def test_a_selection_says_it_ran_on_cuda(tiny_dir, tmp_path):
    import harp

    pool = _rows(24)
    target = _rows(6, 8)
    selection = harp.select(
        pool,
        target,
        method="harp-c",
        budget=8,
        model=str(tiny_dir),
        features__encoder="tfidf",
        evals=3,
        train_steps=2,
        bootstrap=10,
        leaf_size=4,
        context=GPU.replace(cache_dir=tmp_path),
    )
    assert selection.cost.device.startswith("cuda")
    fisher = harp.select(
        pool,
        method="fisher",
        budget=5,
        model=str(tiny_dir),
        dim=32,
        warmup_epochs=1.0,
        batch_size=4,
        max_length=64,
        context=GPU.replace(cache_dir=tmp_path),
    )
    assert fisher.cost.device.startswith("cuda") and len(fisher) > 0
