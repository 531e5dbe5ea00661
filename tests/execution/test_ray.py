"""On a local Ray cluster (2 CPUs): sharded features, a killed task, HARP rounds.

Each check compares against the same work done locally: Ray changes where tasks
run, never what they compute.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install 'harp-select[ray]')"
)

from harp.core.context import RunContext  # noqa: E402
from harp.core.errors import DataError, HarpError  # noqa: E402
from harp.data.synthetic import make_skills_suite  # noqa: E402
from harp.execution import Executor, RayExecutor  # noqa: E402
from harp.features import extract_gradient_features  # noqa: E402

pytestmark = pytest.mark.ray

# Ray workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    """A private local Ray cluster with 2 CPUs, for the whole module."""
    if ray.is_initialized():  # pragma: no cover - someone else's session
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 2**20,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def suite():
    return make_skills_suite(n_pool=60, n_target_per_domain=4, n_pretrain=10)


GRADIENTS = dict(dim=32, shard_rows=16, batch_size=4)


@pytest.fixture(scope="module")
def local_gradients(tiny_dir, suite, tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as every Ray task (cpus_per_task=1)
    root = tmp_path_factory.mktemp("local")
    yield extract_gradient_features(tiny_dir, suite.pool, root, **GRADIENTS)
    torch.set_num_threads(before)


# -- tasks ---------------------------------------------------------------------------


def double(x):
    return 2 * x


def bad_row(x):
    if x == 1:
        raise DataError("row 1 is bad")
    return x


def always_fails(x):
    raise RuntimeError(f"no luck with {x}")


def slow_after_a_bad_row(job):
    """Row 1 fails at once; row 2 is still running then, and leaves a marker."""
    folder, x = job
    if x == 1:
        raise DataError("row 1 is bad")
    if x == 2:
        import time

        time.sleep(1.0)
        (Path(folder) / "row-2-finished").write_text("done")
    return x


def killed_midway(log_dir, fn, job):
    """Log each run; the first run of shard 1 leaves a torn shard file and dies."""
    log_dir = Path(log_dir)
    with open(log_dir / "runs.log", "a") as handle:
        handle.write(f"{job['shard']}\n")
    marker = log_dir / "killed"
    if job["shard"] == 1 and not marker.exists():
        marker.write_text("once")
        # Half a shard of garbage where the data go, then a hard kill: no cleanup,
        # no done marker.
        torn = Path(job["directory"]) / "shard-00001.bin"
        torn.write_bytes(b"\xff" * 100)
        os._exit(1)
    return fn(job)


class KillingExecutor(Executor):
    """Ray, with each task wrapped by ``killed_midway``."""

    name = "ray"

    def __init__(self, inner, log_dir):
        self.inner = inner
        self.log_dir = str(log_dir)

    @property
    def n_workers(self):
        return self.inner.n_workers

    def map(self, fn, items, *, desc=""):
        import functools

        wrapped = functools.partial(killed_midway, self.log_dir, fn)
        return self.inner.map(wrapped, items, desc=desc)


# -- the executor --------------------------------------------------------------------


def test_ray_map_keeps_order_and_reports_failures(cluster):
    ex = RayExecutor(max_retries=1)
    assert ex.n_workers == 2 and ex.name == "ray"
    assert ex.map(double, range(6)) == [0, 2, 4, 6, 8, 10]
    with pytest.raises(DataError, match="row 1 is bad"):
        ex.map(bad_row, [0, 1, 2])
    with pytest.raises(HarpError, match=r"boom: item 0 \(5\) failed after 2 attempts"):
        ex.map(always_fails, [5], desc="boom")
    ex.shutdown()  # joined, not started: the cluster keeps running
    assert ray.is_initialized()


def test_a_failure_leaves_the_running_tasks_to_finish(cluster, tmp_path):
    """No ray.cancel: cancelling a task as its reply arrives aborts the driver inside
    Ray (ray-project/ray#54527), which crashed this suite once in Ray 2.60."""
    ex = RayExecutor(max_retries=0)
    with pytest.raises(DataError, match="row 1 is bad"):
        ex.map(slow_after_a_bad_row, [(str(tmp_path), x) for x in range(3)])
    marker = tmp_path / "row-2-finished"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.05)
    assert marker.read_text() == "done"  # a cancelled task would never write it
    assert ex.map(double, [1, 2]) == [2, 4]


# -- features ------------------------------------------------------------------------


def test_sharded_gradients_on_ray_equal_local_bit_for_bit(
    cluster, tiny_dir, suite, tmp_path, local_gradients
):
    store = extract_gradient_features(
        tiny_dir,
        suite.pool,
        tmp_path,
        context=RunContext(executor=RayExecutor()),
        **GRADIENTS,
    )
    assert store.complete and store.n_shards == 4
    assert store.directory.name == local_gradients.directory.name
    for k in range(store.n_shards):
        assert (
            store.shard_path(k).read_bytes()
            == local_gradients.shard_path(k).read_bytes()
        ), f"shard {k} differs"
    np.testing.assert_array_equal(store.read(), local_gradients.read())


def test_a_task_killed_midway_is_retried_and_the_store_completes(
    cluster, tiny_dir, suite, tmp_path, local_gradients
):
    logs = tmp_path / "logs"
    logs.mkdir()
    executor = KillingExecutor(RayExecutor(max_retries=2), logs)
    store = extract_gradient_features(
        tiny_dir,
        suite.pool,
        tmp_path / "store",
        context=RunContext(executor=executor),
        **GRADIENTS,
    )
    assert (logs / "killed").exists()
    runs = sorted(int(x) for x in (logs / "runs.log").read_text().split())
    assert runs == [0, 1, 1, 2, 3]  # only the killed shard ran twice
    assert json.loads((store.directory / "manifest.json").read_text())["complete"]
    np.testing.assert_array_equal(store.read(), local_gradients.read())
    assert (
        store.shard_path(1).read_bytes() == local_gradients.shard_path(1).read_bytes()
    )

    # Finished shards are never recomputed: a rerun dispatches nothing.
    extract_gradient_features(
        tiny_dir,
        suite.pool,
        tmp_path / "store",
        context=RunContext(executor=executor),
        **GRADIENTS,
    )
    assert len((logs / "runs.log").read_text().split()) == 5


# -- HARP ----------------------------------------------------------------------------


def _cache_files(cache):
    return sorted(p.name for p in (cache / "train-eval").glob("*.json"))


def test_harp_on_ray_selects_the_same_rows_as_locally(
    cluster, fast_harp, suite, tmp_path
):
    local = fast_harp(tmp_path / "local").fit(suite.pool, suite.target)
    on_ray = fast_harp(tmp_path / "ray", executor="ray").fit(suite.pool, suite.target)
    np.testing.assert_array_equal(on_ray.selection_.indices, local.selection_.indices)
    np.testing.assert_array_equal(on_ray.posterior_.mean, local.posterior_.mean)
    assert on_ray.rounds_ == local.rounds_
    for g, (effect, var) in local.measured_.items():
        np.testing.assert_array_equal(on_ray.measured_[g][0], effect)
        np.testing.assert_array_equal(on_ray.measured_[g][1], var)
    # Same cache entries as the local run; every call counted once, here.
    assert _cache_files(tmp_path / "ray") == _cache_files(tmp_path / "local")
    calls = len(local.measured_) + len(local.oracle_["replicated_leaves"])
    assert on_ray.oracle_["calls"] == local.oracle_["calls"] == calls
    assert on_ray.oracle_["cache_hits"] == 0
    assert ray.is_initialized()  # a joined session is left running

    # Results of Ray tasks serve a local rerun from the cache.
    rerun = fast_harp(tmp_path / "ray").fit(suite.pool, suite.target)
    assert rerun.oracle_["calls"] == 0
    np.testing.assert_array_equal(rerun.selection_.indices, local.selection_.indices)
