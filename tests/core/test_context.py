"""The run context: device and dtype resolution, seed streams, what travels."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from harp.core.context import STREAMS, RunContext, resolve_seed
from harp.core.errors import ParameterError
from harp.execution import LocalExecutor


def test_cpu_resolves_to_fp32_and_auto_follows_the_hardware():
    cpu = RunContext(device="cpu")
    assert cpu.device_name == "cpu" and cpu.dtype_name == "fp32"
    assert cpu.torch_dtype() is torch.float32
    auto = RunContext()
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert auto.device_name == expected
    assert RunContext(device="cpu", dtype="bf16").torch_dtype() is torch.bfloat16
    assert RunContext(dtype="fp16").dtype_name == "fp16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_clear_error():
    context = RunContext(device="cuda:1")  # accepted as a name: checked when used
    with pytest.raises(ParameterError, match="no CUDA device is available") as err:
        context.check()
    assert "device='cpu'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("device", "gpu"), ("device", "cuda:x"), ("device", 0), ("dtype", "fp8")],
)
def test_bad_device_or_dtype_names_the_field(field, value):
    with pytest.raises(ParameterError, match=f"{field}="):
        RunContext(**{field: value})


def test_seed_streams_are_named_independent_and_reproducible():
    ctx = RunContext(seed=5)
    # The root stream is numpy's default generator of the seed itself.
    assert ctx.rng().integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)
    seeds = {name: ctx.int_seed(name) for name in STREAMS}
    assert len(set(seeds.values())) == len(STREAMS)
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert RunContext(seed=5).int_seed("tree") == seeds["tree"]
    assert RunContext(seed=6).int_seed("tree") != seeds["tree"]
    assert 0 <= ctx.int_seed("tree", bits=32) < 2**32
    a = ctx.rng("bootstrap").random(4)
    np.testing.assert_array_equal(a, RunContext(seed=5).rng("bootstrap").random(4))
    with pytest.raises(ValueError, match="unknown random stream 'warmpu'"):
        ctx.int_seed("warmpu")


def test_seed_none_draws_entropy_once():
    first, second = RunContext().with_seed(None), RunContext().with_seed(None)
    assert first.seed != second.seed and first.seed >= 2**64
    again = RunContext().with_seed(first.seed)
    assert again.int_seed("warmup") == first.int_seed("warmup")
    assert resolve_seed(3) == 3
    with pytest.raises(ParameterError, match="seed=-1"):
        resolve_seed(-1)


def test_the_executor_does_not_travel_to_workers(tmp_path):
    with LocalExecutor(workers=1) as executor:
        ctx = RunContext(cache_dir=tmp_path, executor=executor, progress=True)
        copy = pickle.loads(pickle.dumps(ctx))
        assert copy.executor is None and ctx.executor is executor
        # The dtype travels settled: a GPU worker keeps the driver's choice.
        assert ctx.dtype == "auto" and copy.dtype == ctx.dtype_name
        assert copy.cache_dir == tmp_path and copy.progress is True
        assert ctx.for_worker().executor is None


def test_describe_and_replace():
    ctx = RunContext(device="cpu", cache_dir="somewhere")
    assert ctx.describe() == {
        "device": "cpu",
        "dtype": "fp32",
        "seed": 0,
        "cache_dir": "somewhere",
    }
    assert ctx.replace(seed=2).seed == 2 and ctx.seed == 0


def test_encoder_dtype_follows_an_explicit_dtype_and_the_cpu(monkeypatch):
    import harp.core.context as context_mod

    assert RunContext(device="cpu", dtype="fp32").encoder_dtype_name == "fp32"
    assert RunContext(device="cpu", dtype="bf16").encoder_dtype_name == "bf16"
    monkeypatch.setattr(context_mod, "_cpu_computes_bf16", lambda: False)
    assert RunContext(device="cpu").encoder_dtype_name == "fp32"
    monkeypatch.setattr(context_mod, "_cpu_computes_bf16", lambda: True)
    assert RunContext(device="cpu").encoder_dtype_name == "bf16"
    # Models stay fp32 on a CPU whatever the encoder computes in.
    assert RunContext(device="cpu").dtype_name == "fp32"


def test_adapters_at_once_is_one_on_the_cpu_unless_given():
    from harp.core.context import GPU_ADAPTERS_AT_ONCE

    assert RunContext(device="cpu").adapters_at_once_count == 1
    assert RunContext(device="cpu", adapters_at_once=4).adapters_at_once_count == 4
    assert GPU_ADAPTERS_AT_ONCE > 1
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ParameterError, match="adapters_at_once="):
            RunContext(adapters_at_once=bad)
