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


def test_on_cuda_the_utility_trains_adapters_together_as_one_at_a_time(
    tiny_dir, tmp_path
):
    subsets = [_rows(4), _rows(5, 4), _rows(8), _rows(3, 2)]

    def utility(name, at_once):
        context = GPU.replace(cache_dir=tmp_path / name, adapters_at_once=at_once)
        return TrainEvalUtility(
            tiny_dir, _rows(6, 8), TRAIN, EvalConfig(metrics=("loss",)), context=context
        )

    def losses(results):
        return [r.report.average("loss").mean for r in results]

    alone, together = utility("alone", 1), utility("together", None)
    assert together.context.adapters_at_once_count > 1  # the GPU default
    results = together.map(subsets)
    assert [r.report.meta["trained_with"] for r in results] == [4, 4, 4, 4]
    assert losses(results) == pytest.approx(losses(alone.map(subsets)), rel=1e-3)
    # Two seeds in one stack, two adapters training at a time.
    seeds = [1, 2, 2, 1]
    results = utility("slots", 2).map(subsets, seeds=seeds)
    assert [r.report.meta["trained_with"] for r in results] == [4, 4, 4, 4]
    expected = losses(alone.map(subsets, seeds=seeds))
    assert losses(results) == pytest.approx(expected, rel=1e-3)


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


def test_factored_gradients_on_cuda_match_the_cpu(tiny_dir):
    from harp.features.gradients import per_sample_gradients
    from harp.features.projection import make_projector
    from harp.models import attach_lora
    from harp.nn import seeded

    out = {}
    for name, context in (("cpu", CPU), ("cuda", GPU)):
        model, tok = load_model(tiny_dir, context=context)
        with seeded(0):
            model = attach_lora(model)
        projector = make_projector(model, 256, kind="factored", seed=3)
        parts = list(
            per_sample_gradients(
                model, tok, _rows(8), batch_size=3, projector=projector, max_tokens=64
            )
        )
        rows = np.concatenate([r for r, _ in parts])
        feats = np.concatenate([g for _, g in parts])
        ordered = np.empty_like(feats)
        ordered[rows] = feats
        out[name] = ordered
    np.testing.assert_allclose(out["cuda"], out["cpu"], rtol=1e-3, atol=1e-5)


def test_labelled_position_losses_on_cuda_equal_the_whole_logits_and_repeat(tiny_dir):
    """forward_losses on CUDA: the whole logits' losses, and bit-identical reruns
    (its reductions write each token once, no scatter-add)."""
    from harp.nn import (
        collate,
        encode_examples,
        forward_losses,
        pad_token_id,
        token_losses,
    )

    model, tok = load_model(tiny_dir, context=GPU)
    enc = encode_examples(tok, _rows(8), max_length=64)
    ids, _, labels = collate(
        list(zip(enc.input_ids, enc.labels)), pad_token_id(tok), model_device(model)
    )
    with torch.no_grad():
        nll, mask = token_losses(model(input_ids=ids).logits, labels)
        runs = [forward_losses(model, ids, labels) for _ in range(3)]
    for flat in runs:
        assert torch.equal(flat.row_sums(), runs[0].row_sums())
        assert torch.equal(flat.group_means(4), runs[0].group_means(4))
    torch.testing.assert_close(runs[0].row_sums(), nll.sum(1), rtol=1e-5, atol=1e-5)


def test_the_torch_log_det_engine_on_cuda_picks_what_numpy_picks():
    from harp.selectors.logdet import GreedyLogDet, default_alpha
    from harp.selectors.logdet_torch import TorchGreedyLogDet

    rng = np.random.default_rng(0)
    g = rng.normal(size=(3000, 64)) / np.sqrt(np.arange(1, 65))
    alpha = default_alpha(g)
    for conflict in (0.0, 0.3):
        ref = GreedyLogDet(64, alpha=alpha, conflict_weight=conflict).select(g, 100)
        for storage, streamed in (("fp64", None), ("fp32", 0)):
            out = TorchGreedyLogDet(
                64,
                alpha=alpha,
                conflict_weight=conflict,
                device="cuda",
                storage=storage,
                max_device_bytes=streamed,
            ).select(g, 100)
            agree = np.mean(out.indices == ref.indices)
            assert agree == 1.0 if storage == "fp64" else agree > 0.9
            assert out.objective[-1] == pytest.approx(ref.objective[-1], rel=1e-6)


def test_the_gpu_suite_runs_quick_on_the_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "gpu_suite.py"),
            "--quick",
            "--device",
            "cuda",
            "--out",
            str(tmp_path / "gs.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(root / "src")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
