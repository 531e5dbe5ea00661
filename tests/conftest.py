"""Shared fixtures: a tiny random Llama, the folder holding it, one torch thread."""

from __future__ import annotations

import pytest

from harp.models import ProxyConfig

TINY = ProxyConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch sees none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread per test: CI's 2 cores may be shared, and oversubscribed OpenMP
    was measured many times slower than one thread on these tiny models."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_mount(tmp_path):
    """Mount a real tmpfs (``ro`` or full) where this process may mount one.

    Yields ``mount(options, size="64k") -> folder``; everything mounted is
    unmounted afterwards. Skips where the process may not mount (not root).
    """
    import shutil
    import subprocess

    mounted = []

    def mount(options="rw", size="64k"):
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size},{options}",
                "tmpfs",
                str(point),
            ],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip("this process may not mount a tmpfs (not root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


@pytest.fixture(scope="session")
def tiny_config():
    """The tiny model's shape."""
    return TINY


@pytest.fixture
def tiny():
    """A fresh tiny model and its character tokenizer (seed 0)."""
    from harp.models import build_proxy

    return build_proxy(TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder holding the tiny model (config.json, model.safetensors, tokenizer)."""
    from harp.models import build_proxy, save_model

    model, tok = build_proxy(TINY, seed=0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model(model, tok, path)
    return path
