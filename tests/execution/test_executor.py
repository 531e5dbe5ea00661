"""Executors without Ray: order, retries, errors; shards and HARP rounds through one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from harp.core.context import RunContext
from harp.core.errors import DataError, HarpError, ParameterError
from harp.data.synthetic import make_skills_suite
from harp.execution import Executor, LocalExecutor, RayExecutor, make_executor
from harp.features import FeatureStore, extract_gradient_features

# -- task functions (module level: a process pool pickles them by reference) -------


def square(x):
    return x * x


def harp_error(x):
    if x == 2:
        raise DataError(f"row {x} is bad")
    return x


class Flaky:
    """Fails with RuntimeError the first ``fails`` times per item (or per ``{item:
    times}``), in-process."""

    def __init__(self, fails):
        self.fails = fails
        self.calls: dict[int, int] = {}

    def __call__(self, x):
        self.calls[x] = self.calls.get(x, 0) + 1
        fails = self.fails.get(x, 0) if isinstance(self.fails, dict) else self.fails
        if self.calls[x] <= fails:
            raise RuntimeError(f"transient failure on {x}")
        return -x


def worker_pid(_):
    return os.getpid()


def sleep_then_pid(seconds):
    import time

    time.sleep(seconds)
    return os.getpid()


def die_once(job):
    """Kill this worker process the first time ``job`` runs (a marker file says)."""
    marker, x = job
    if x == 1 and not Path(marker).exists():
        Path(marker).write_text("died")
        os._exit(1)
    return x + 100


# -- LocalExecutor -------------------------------------------------------------------


def test_in_process_map_keeps_order_and_calls_in_place():
    ex = LocalExecutor()
    assert ex.n_workers == 1 and ex.name == "local"
    seen = []
    # A closure works: nothing is pickled in-process.
    assert ex.map(lambda x: seen.append(x) or x * 10, [3, 1, 2]) == [30, 10, 20]
    assert seen == [3, 1, 2]
    assert ex.map(square, []) == []


def test_harp_error_propagates_unchanged_without_retry():
    flaky_calls = []

    def fn(x):
        flaky_calls.append(x)
        return harp_error(x)

    with pytest.raises(DataError, match="row 2 is bad"):
        LocalExecutor(max_retries=3).map(fn, [1, 2, 3])
    assert flaky_calls == [1, 2]  # no retry of a HarpError, and nothing after it


def test_other_failures_are_retried_then_reported_with_the_item():
    flaky = Flaky(fails=2)
    assert LocalExecutor(max_retries=2).map(flaky, [5, 6]) == [-5, -6]
    assert flaky.calls == {5: 3, 6: 3}

    flaky = Flaky(fails={4: 1, 7: 5})
    with pytest.raises(HarpError, match=r"my tasks: item 1 \(7\) failed after 2 "):
        LocalExecutor(max_retries=1).map(flaky, [4, 7], desc="my tasks")
    assert flaky.calls == {4: 2, 7: 2}
    with pytest.raises(HarpError) as info:
        LocalExecutor().map(Flaky(fails=1), [8])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_process_pool_keeps_order_and_propagates_harp_errors():
    ex = LocalExecutor(workers=2)
    assert ex.n_workers == 2
    assert ex.map(square, range(7)) == [x * x for x in range(7)]
    with pytest.raises(DataError, match="row 2 is bad"):
        ex.map(harp_error, [0, 1, 2, 3])


def test_process_pool_retries_a_killed_worker(tmp_path):
    marker = str(tmp_path / "died")
    jobs = [(marker, x) for x in range(3)]
    assert LocalExecutor(workers=2, max_retries=1).map(die_once, jobs) == [
        100,
        101,
        102,
    ]
    assert Path(marker).exists()
    Path(marker).unlink()
    # The dead worker breaks the pool: the first item still running is reported.
    with pytest.raises(HarpError, match=r"item \d \(.*\) failed after 1 attempt"):
        LocalExecutor(workers=2).map(die_once, jobs)


def test_process_pool_is_kept_across_maps_until_shutdown(tmp_path):
    """HARP's rounds and a bench's finetunes reuse the workers (torch imported once)."""
    with LocalExecutor(workers=2) as ex:
        first = set(ex.map(worker_pid, range(6)))
        assert set(ex.map(worker_pid, range(6))) <= first and os.getpid() not in first
        with pytest.raises(DataError):  # a task's error leaves the pool usable
            ex.map(harp_error, [0, 1, 2, 3])
        assert ex.map(square, [3, 4]) == [9, 16]
        marker = str(tmp_path / "died")
        with pytest.raises(HarpError, match="failed after 1 attempt"):
            ex.map(die_once, [(marker, x) for x in range(3)])
        # The killed worker broke that pool: the next map starts a new one.
        assert ex.map(die_once, [(marker, x) for x in range(3)]) == [100, 101, 102]
        ex.shutdown()
        assert not first & set(ex.map(worker_pid, range(4)))
        # One task runs here: a worker would give it fewer threads than this process.
        assert ex.runs_here(1) and not ex.runs_here(2)
        assert ex.map(worker_pid, [0]) == [os.getpid()]
    assert LocalExecutor().runs_here(5)


def test_an_interrupt_stops_the_running_tasks_at_once():
    """Ctrl-C while workers finetune: the map stops now, not after the tasks."""
    import signal
    import threading
    import time

    ex = LocalExecutor(workers=2)
    workers = set(ex.map(worker_pid, range(4)))
    # Python's own Ctrl-C handler, whatever this process inherited: a shell runs a
    # background job ("pytest &") with SIGINT ignored, and then nothing arrives.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ex.map(sleep_then_pid, [60, 60, 60])
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert time.monotonic() - start < 15
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in workers):
        time.sleep(0.1)
    assert not any(_running(p) for p in workers)
    assert ex.map(square, [2, 3]) == [4, 9]  # a new pool for the next map
    ex.shutdown()


def _running(pid):
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def test_bad_arguments_are_parameter_errors():
    with pytest.raises(ParameterError, match="workers=0"):
        LocalExecutor(workers=0)
    with pytest.raises(ParameterError, match="max_retries=-1"):
        LocalExecutor(max_retries=-1)


# -- make_executor -------------------------------------------------------------------


def test_make_executor_by_name_or_instance():
    assert isinstance(make_executor(), LocalExecutor)
    assert make_executor("local", workers=3).n_workers == 3
    ex = LocalExecutor(workers=2)
    assert make_executor(ex) is ex
    with pytest.raises(ParameterError, match="not an instance"):
        make_executor(ex, workers=2)
    with pytest.raises(ParameterError, match="'dask' is not allowed"):
        make_executor("dask")
    with pytest.raises(ParameterError, match="Ray options"):
        make_executor("local", gpus_per_task=1)


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(HarpError, match=r"pip install 'harp-select\[ray\]'"):
        RayExecutor()
    with pytest.raises(HarpError, match="harp-select"):
        make_executor("ray")


def test_importing_harp_execution_does_not_import_ray():
    import subprocess

    code = "import harp.execution, harp.selectors, sys; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# -- through an executor: feature shards and HARP rounds ----------------------------


@pytest.fixture(scope="module")
def suite():
    return make_skills_suite(n_pool=60, n_target_per_domain=4, n_pretrain=10)


def test_sharded_gradients_through_a_process_pool_equal_local(
    tiny_dir, suite, tmp_path
):
    kw = dict(dim=32, shard_rows=16, batch_size=4)
    local = extract_gradient_features(tiny_dir, suite.pool, tmp_path / "a", **kw)
    pooled = extract_gradient_features(
        tiny_dir,
        suite.pool,
        tmp_path / "b",
        context=RunContext(executor=LocalExecutor(workers=2, threads_per_task=1)),
        **kw,
    )
    assert pooled.n_shards == 4 and pooled.complete
    assert local.directory.name == pooled.directory.name
    np.testing.assert_array_equal(pooled.read(), local.read())
    for k in range(local.n_shards):
        assert pooled.shard_path(k).read_bytes() == local.shard_path(k).read_bytes()


class Recording(Executor):
    """In-process executor that records what it was asked to run."""

    name = "recording"

    def __init__(self):
        self.batches: list[list] = []

    @property
    def n_workers(self):
        return 1

    def map(self, fn, items, *, desc=""):
        items = list(items)
        self.batches.append(items)
        return [fn(item) for item in items]


def test_resumed_store_maps_only_the_pending_shards(tiny_dir, suite, tmp_path):
    kw = dict(dim=16, shard_rows=16, batch_size=4)
    full = extract_gradient_features(tiny_dir, suite.pool, tmp_path, **kw)
    reference = full.read()
    # Undo shard 2 and the completion, as a crash would leave it.
    (full.directory / "shard-00002.done").unlink()
    manifest = full.directory / "manifest.json"
    manifest.write_text(
        json.dumps({**json.loads(manifest.read_text()), "complete": False})
    )
    done = {p.name: p.stat().st_mtime_ns for p in full.directory.glob("*.done")}

    rec = Recording()
    again = extract_gradient_features(
        tiny_dir, suite.pool, tmp_path, context=RunContext(executor=rec), **kw
    )
    assert [job["shard"] for job in rec.batches[0]] == [2]
    np.testing.assert_array_equal(again.read(), reference)
    for name, mtime in done.items():
        assert (full.directory / name).stat().st_mtime_ns == mtime, f"{name} redone"
    # Complete: nothing is mapped at all.
    extract_gradient_features(
        tiny_dir, suite.pool, tmp_path, context=RunContext(executor=rec), **kw
    )
    assert len(rec.batches) == 1
    assert FeatureStore.open(again.directory).complete


def _cache_files(cache):
    return sorted(p.name for p in (cache / "train-eval").glob("*.json"))


def test_harp_rounds_through_an_executor_select_the_same_rows(
    fast_harp, suite, tmp_path
):
    local = fast_harp(tmp_path / "a").fit(suite.pool, suite.target)
    rec = Recording()
    mapped = fast_harp(tmp_path / "b", executor=rec).fit(suite.pool, suite.target)
    np.testing.assert_array_equal(mapped.selection_.indices, local.selection_.indices)
    np.testing.assert_array_equal(mapped.posterior_.mean, local.posterior_.mean)
    # How the work ran is not part of the result (the cache folders differ here).
    assert "context" not in mapped.selection_.params
    assert mapped.selection_.params == local.selection_.params
    # One map per round, with that round's leaves (the first also with two of
    # them again, the replicates); calls counted once each.
    replicated = local.oracle_["replicated_leaves"]
    sizes = [len(r) for r in local.rounds_]
    assert [len(b) for b in rec.batches] == [sizes[0] + len(replicated), *sizes[1:]]
    assert mapped.oracle_["replicated_leaves"] == replicated
    calls = len(local.measured_) + len(replicated)
    assert mapped.oracle_["calls"] == local.oracle_["calls"] == calls
    assert mapped.oracle_["cache_hits"] == 0
    keys = sorted(p.name for p in (tmp_path / "a" / "train-eval").glob("*.json"))
    assert keys == sorted(
        p.name for p in (tmp_path / "b" / "train-eval").glob("*.json")
    )

    # A rerun maps nothing: every leaf is a cache hit read here.
    rerun = fast_harp(tmp_path / "b", executor="local").fit(suite.pool, suite.target)
    assert rerun.oracle_["calls"] == 0
    assert rerun.oracle_["cache_hits"] == calls
    np.testing.assert_array_equal(rerun.selection_.indices, local.selection_.indices)
    # Where the calls ran is not part of the fingerprint.
    plain = fast_harp(tmp_path / "b").fit(suite.pool, suite.target)
    assert plain.selection_.fingerprint == rerun.selection_.fingerprint
    assert plain.selection_.fingerprint == mapped.selection_.fingerprint


def test_harp_executor_parameter_is_checked(fast_harp, suite, tmp_path):
    with pytest.raises(ParameterError, match="executor"):
        fast_harp(tmp_path, executor="dask").fit(suite.pool, suite.target)


# -- the command line ----------------------------------------------------------------


def test_cli_features_and_select_take_executor_flags(tiny_dir, suite, tmp_path):
    from typer.testing import CliRunner

    from harp.app.cli import app

    runner = CliRunner()
    files = suite.save(tmp_path / "data")
    for command in ("features", "select"):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        for flag in ("--executor", "--workers", "--ray-address", "--gpus-per-task"):
            assert flag in text, (command, flag)
    base = ["features", "--kind", "gradients", "--model", str(tiny_dir)]
    base += ["--data", str(files["pool"]), "--dim", "16", "--batch-size", "4"]
    ok = runner.invoke(
        app, [*base, "--out", str(tmp_path / "f"), "--executor", "local"]
    )
    assert ok.exit_code == 0, ok.output
    (store_dir,) = (tmp_path / "f").glob("gradients-*")
    assert FeatureStore.open(store_dir).n_rows == len(suite.pool)

    bad = runner.invoke(
        app, [*base, "--out", str(tmp_path / "g"), "--gpus-per-task", "1"]
    )
    assert bad.exit_code == 2 and "--executor ray" in bad.output
    bad = runner.invoke(
        app, [*base, "--out", str(tmp_path / "g"), "--executor", "dask"]
    )
    assert bad.exit_code == 2 and "'dask' is not allowed" in bad.output
    # Ray shows a task only the GPUs it reserved: the device flags must agree.
    ray = [*base, "--out", str(tmp_path / "g"), "--executor", "ray"]
    bad = runner.invoke(app, [*ray, "--device", "cuda"])
    assert bad.exit_code == 2 and "needs --gpus-per-task" in bad.output
    bad = runner.invoke(app, [*ray, "--device", "cuda:1", "--gpus-per-task", "1"])
    assert bad.exit_code == 2 and "use --device cuda" in bad.output
    sel = ["select", "--pool", str(files["pool"]), "--method", "random"]
    bad = runner.invoke(
        app, [*sel, "--out", str(tmp_path / "s.jsonl"), "--workers", "2"]
    )
    assert bad.exit_code == 2 and "no tasks to run in parallel" in bad.output
