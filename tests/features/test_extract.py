"""Gradient extraction: resume after a real kill, reuse, one store per spec."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harp.data.synthetic import make_skills_suite
from harp.features import FeatureStore, extract_gradient_features

SCRIPT = """
import sys
from harp.data.synthetic import make_skills_suite
from harp.features import extract_gradient_features
pool = make_skills_suite(n_pool=240, n_target_per_domain=2, n_pretrain=10).pool
extract_gradient_features(sys.argv[1], pool, sys.argv[2], dim=64, shard_rows=16,
                          batch_size=4)
"""


@pytest.fixture(scope="module")
def pool():
    return make_skills_suite(n_pool=240, n_target_per_domain=2, n_pretrain=10).pool


def _run_to_end(model_dir, root):
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_dir), str(root)], check=True
    )
    (directory,) = root.glob("gradients-*")
    return directory


def test_killed_extraction_resumes_to_identical_features(tiny_dir, tmp_path, pool):
    reference = FeatureStore.open(_run_to_end(tiny_dir, tmp_path / "ref")).read()

    root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tiny_dir), str(root)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(root.glob("gradients-*/shard-*.done"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "extraction finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (directory,) = root.glob("gradients-*")
    done_before = {p.name: p.stat().st_mtime_ns for p in directory.glob("*.done")}
    assert 2 <= len(done_before) < 15

    _run_to_end(tiny_dir, root)
    resumed = FeatureStore.open(directory)
    np.testing.assert_array_equal(resumed.read(), reference)
    for name, mtime in done_before.items():
        assert (directory / name).stat().st_mtime_ns == mtime, f"{name} recomputed"


def test_other_projection_gets_its_own_store(tiny_dir, tmp_path, pool):
    rows = pool.subset(range(12))
    a = extract_gradient_features(tiny_dir, rows, tmp_path, dim=16, seed=0)
    b = extract_gradient_features(tiny_dir, rows, tmp_path, dim=16, seed=1)
    assert a.directory != b.directory
    assert not np.array_equal(a.read(), b.read())
    again = extract_gradient_features(tiny_dir, rows, tmp_path, dim=16, seed=0)
    assert again.directory == a.directory
    np.testing.assert_array_equal(again.read(), a.read())


def test_the_warm_up_runs_at_the_learning_rate_it_is_given(tiny_dir, tmp_path, pool):
    from harp.core.context import RunContext
    from harp.features import GradientFeatures

    context = RunContext(cache_dir=tmp_path)
    small = pool.subset(range(40))
    peaks = {}
    for lr in (None, 2e-4):
        features = GradientFeatures(
            warmup_lr=lr, warmup_epochs=1.0, warmup_fraction=0.5, n_checkpoints=1
        )
        (checkpoint,) = features.warmup(tiny_dir, small, context)
        peaks[lr] = checkpoint.mean_lr
    # Each warm-up is its own cache entry, trained at its own rate.
    assert 0 < peaks[2e-4] <= 2e-4 < peaks[None] <= 3e-3


def test_a_damaged_shard_is_reported_and_computed_again(
    tiny_dir, tmp_path, pool, caplog
):
    rows = pool.subset(range(12))
    first = extract_gradient_features(tiny_dir, rows, tmp_path, dim=16, shard_rows=4)
    reference = first.read()
    shard = first.shard_path(1)
    data = bytearray(shard.read_bytes())
    data[5] ^= 0x40  # one flipped bit: same size, same marker
    shard.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = extract_gradient_features(
            tiny_dir, rows, tmp_path, dim=16, shard_rows=4
        )
    assert "shard-00001.bin does not match its done marker's hash" in caplog.text
    np.testing.assert_array_equal(again.read(), reference)
    assert again.pending_shards(verify=True) == []


def test_a_torn_manifest_is_rebuilt_not_refused_forever(tiny_dir, tmp_path, pool):
    rows = pool.subset(range(8))
    first = extract_gradient_features(tiny_dir, rows, tmp_path, dim=16, shard_rows=4)
    reference = first.read()
    manifest = first.directory / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    again = extract_gradient_features(tiny_dir, rows, tmp_path, dim=16, shard_rows=4)
    np.testing.assert_array_equal(again.read(), reference)


def test_a_dim_beyond_what_the_model_gives_is_said_not_cut_silently(
    tiny_dir, tmp_path, pool, caplog
):
    import logging

    rows = pool.subset(range(4))
    with caplog.at_level(logging.WARNING, logger="harp.features.extract"):
        store = extract_gradient_features(tiny_dir, rows, tmp_path, dim=10**7)
    assert "dim=10000000 asked for, but the factored projection of this model " in (
        " ".join(caplog.text.split())
    )
    assert f"gives at most {store.dim} features" in " ".join(caplog.text.split())


def test_packed_batches_take_many_rows_and_give_the_same_features(
    tiny_dir, tmp_path, pool, monkeypatch
):
    """A packed batch holds up to max_rows rows (a GPU pays per batch, not per row);
    the features are those of fixed batches, whatever the batching."""
    from harp.core.context import RunContext
    from harp.features import GradientFeatures

    cpu = RunContext(device="cpu")
    assert GradientFeatures(batch_size=4).gradient_batch_rows(cpu) == 4  # auto: fixed
    assert GradientFeatures(batch_size=4, max_tokens=None).gradient_batch_rows(cpu) == 4
    packed = GradientFeatures(batch_size=4, max_tokens=4096, max_rows=64)
    assert packed.gradient_batch_rows(cpu) == 64
    assert (
        GradientFeatures(batch_size=32, max_tokens=512, max_rows=8).gradient_batch_rows(
            cpu
        )
        == 32
    )
    # GradientFeatures hands its row cap to the extraction.
    import harp.features.extract as extract_module

    seen = {}
    monkeypatch.setattr(
        extract_module,
        "extract_gradient_features",
        lambda *args, **kwargs: seen.update(kwargs),
    )
    packed.extract(pool.subset(range(8)), cpu, model_dir=tiny_dir)
    assert seen["batch_size"] == 64 and seen["max_tokens"] == 4096
    monkeypatch.undo()
    rows = pool.subset(range(40))
    fixed = extract_gradient_features(
        tiny_dir, rows, tmp_path / "fixed", dim=32, batch_size=4, max_tokens=None
    ).read()
    big = extract_gradient_features(
        tiny_dir, rows, tmp_path / "big", dim=32, batch_size=64, max_tokens=4096
    ).read()
    np.testing.assert_allclose(big, fixed, rtol=1e-4, atol=1e-6)
