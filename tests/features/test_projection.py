"""RandomProjector: reproducible across processes, shardable by blocks, JL-sane."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from harp.core.errors import ParameterError
from harp.features.projection import RandomProjector, estimate_bytes

torch = pytest.importorskip("torch")

_HASH_SCRIPT = """
import hashlib, torch
from harp.features.projection import RandomProjector
x = torch.arange(3 * 300, dtype=torch.float32).reshape(3, 300).sin()
p = RandomProjector(300, 64, kind={kind!r}, seed=7, block_size=128)
print(hashlib.sha256(p.project(x).numpy().tobytes()).hexdigest())
"""


def _x(n: int = 3, d: int = 300) -> torch.Tensor:
    return torch.arange(n * d, dtype=torch.float32).reshape(n, d).sin()


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_identical_in_a_separate_process(kind):
    p = RandomProjector(300, 64, kind=kind, seed=7, block_size=128)
    here = hashlib.sha256(p.project(_x()).numpy().tobytes()).hexdigest()
    out = subprocess.run(
        [sys.executable, "-c", _HASH_SCRIPT.format(kind=kind)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == here


def test_matches_dense_matrix_and_scaling():
    p = RandomProjector(300, 64, seed=1, block_size=100)
    m = p.matrix()
    assert m.shape == (300, 64)
    assert set(m.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(p.project(_x()), _x() @ m / 8.0, rtol=1e-5, atol=1e-5)


def test_block_subsets_sum_to_whole():
    p = RandomProjector(300, 64, seed=2, block_size=64)
    assert p.n_blocks == 5
    x = _x()
    first = p.project_blocks(x, [0, 2, 4])
    second = p.project_blocks(x, [1, 3])
    torch.testing.assert_close(first + second, p.project(x), rtol=1e-5, atol=1e-5)
    # a shard that only holds its own coordinates (zeros elsewhere) agrees too
    x_shard = torch.zeros_like(x)
    x_shard[:, p.block_rows(1)] = x[:, p.block_rows(1)]
    x_shard[:, p.block_rows(3)] = x[:, p.block_rows(3)]
    torch.testing.assert_close(p.project(x_shard), second, rtol=1e-5, atol=1e-5)
    # each block alone is the same tensor as the block of the full matrix
    torch.testing.assert_close(p.block(3), p.matrix()[p.block_rows(3)])


def test_streaming_equals_cached():
    cached = RandomProjector(300, 64, seed=4, block_size=64)
    streamed = RandomProjector(300, 64, seed=4, block_size=64, max_cache_bytes=0)
    assert cached.cached and not streamed.cached
    x = _x()
    torch.testing.assert_close(cached.project(x), streamed.project(x), rtol=0, atol=0)
    torch.testing.assert_close(cached.project(x), cached.project(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_johnson_lindenstrauss_norms(kind):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4000, generator=gen)
    p = RandomProjector(4000, 2048, kind=kind, seed=0)
    ratio = p.project(x).norm(dim=1) / x.norm(dim=1)
    assert float((ratio - 1).abs().max()) < 0.1
    # inner products (cosines) are preserved too
    y = p.project(x)
    cos_x = torch.nn.functional.cosine_similarity(x[0:1], x[1:], dim=1)
    cos_y = torch.nn.functional.cosine_similarity(y[0:1], y[1:], dim=1)
    assert float((cos_x - cos_y).abs().max()) < 0.1


def test_kind_and_seed_change_the_matrix():
    base = RandomProjector(200, 32, seed=0).matrix()
    assert not torch.equal(base, RandomProjector(200, 32, seed=1).matrix())
    gauss = RandomProjector(200, 32, seed=0, kind="gaussian").matrix()
    assert not torch.equal(base, gauss)
    assert len(gauss.unique()) > 100


def test_identity_and_validation():
    p = RandomProjector(10, None)
    assert p.identity and p.out_dim == 10
    x = torch.randn(2, 10)
    assert torch.equal(p.project(x), x)
    assert RandomProjector(10, 0).identity
    with pytest.raises(ParameterError):
        RandomProjector(10, 4, kind="sparse")
    with pytest.raises(ParameterError):
        RandomProjector(10, 4).project(torch.zeros(2, 11))
    with pytest.raises(ParameterError):
        RandomProjector(10, 4, block_size=4).block(3)


def test_estimate_bytes():
    assert estimate_bytes(32768, 8192) == 2**30
    assert estimate_bytes(10, None) == 0
    assert RandomProjector(100, 16).nbytes == 6400
    assert np.isclose(RandomProjector(100, 16, dtype=torch.float64).nbytes, 12800)
