"""Tests of the on-disk feature store: round trip, resume (also after SIGKILL),
damaged shards, refusals and streaming reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from harp.core.errors import DataError, HarpError, NumericalError, ParameterError
from harp.features.store import (
    FeatureStore,
    estimate_store_bytes,
    fill_store,
    format_bytes,
)

SPEC = {"extractor": "lora_grad", "model": "tiny-abc123", "proj_dim": 8, "seed": 0}
DIM = 8


def ids_for(n: int) -> list[str]:
    return [f"ex{i:04d}" for i in range(n)]


def rows(start: int, stop: int, dim: int = DIM) -> np.ndarray:
    """Deterministic rows: the same range always gives the same values."""
    rng = np.random.default_rng(start)
    return rng.standard_normal((stop - start, dim))


def full(n: int, dim: int = DIM) -> np.ndarray:
    return rows(0, n, dim) if n else np.zeros((0, dim))


def build(path, n=10, shard_rows=4, dtype="float32", spec=SPEC):
    store = FeatureStore.create(
        path, ids=ids_for(n), dim=DIM, dtype=dtype, spec=spec, shard_rows=shard_rows
    )
    data = np.concatenate([rows(*store.shard_range(k)) for k in range(store.n_shards)])
    return store, data


# ------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    store, data = build(tmp_path / "f", dtype=dtype)
    assert store.n_shards == 3
    assert [store.shard_range(k) for k in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert store.pending_shards() == [0, 1, 2]
    for k in store.pending_shards():
        start, stop = store.shard_range(k)
        store.write_shard(k, data[start:stop])
    store.finalize()

    opened = FeatureStore.open(tmp_path / "f", expect_spec=SPEC, expect_ids=ids_for(10))
    expected = data.astype(dtype).astype(np.float32)
    out = opened.read()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    assert opened.ids == ids_for(10)
    assert (opened.n_rows, opened.dim, opened.dtype) == (10, DIM, dtype)
    assert opened.spec == SPEC
    assert opened.fingerprint == store.fingerprint
    assert opened.complete and not opened.writable
    mm = opened.memmap(1)
    assert mm.shape == (4, DIM) and mm.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(mm, np.float32), expected[4:8])
    # selected rows, in the order asked, across shards; masks; negative indices
    np.testing.assert_array_equal(opened.read([9, 0, 5, 5]), expected[[9, 0, 5, 5]])
    np.testing.assert_array_equal(opened.read(slice(3, 7)), expected[3:7])
    mask = np.arange(10) % 3 == 0
    np.testing.assert_array_equal(opened.read(mask), expected[mask])
    np.testing.assert_array_equal(opened.read([-1]), expected[[9]])
    assert opened.read([]).shape == (0, DIM)
    with pytest.raises(ParameterError, match="out of range"):
        opened.read([10])

    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["n_rows"] == 10 and manifest["dim"] == DIM
    assert manifest["dtype"] == dtype and manifest["n_shards"] == 3
    assert manifest["row_ids"] == "ids.json"
    assert json.loads((tmp_path / "f" / "ids.json").read_text()) == ids_for(10)
    item = np.dtype(dtype).itemsize
    assert (tmp_path / "f" / "shard-00002.bin").stat().st_size == 2 * DIM * item
    marker = json.loads((tmp_path / "f" / "shard-00002.done").read_text())
    assert marker["rows"] == [8, 10] and len(marker["sha256"]) == 64
    opened.verify()


def test_manifest_written_at_creation_incomplete(tmp_path):
    store, _ = build(tmp_path / "f")
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["complete"] is False
    assert manifest["spec"] == SPEC
    assert manifest["fingerprint"] == store.fingerprint
    assert not store.complete


def test_fill_store_and_input_untouched(tmp_path):
    store, data = build(tmp_path / "f", dtype="float16")
    given = []

    def compute(k, start, stop):
        block = data[start:stop]
        given.append((block, block.copy()))
        return block

    before = data.copy()
    fill_store(store, compute)
    assert store.complete
    np.testing.assert_array_equal(data, before)
    for block, copy in given:
        np.testing.assert_array_equal(block, copy)
        assert block.dtype == np.float64


def test_empty_store(tmp_path):
    store = FeatureStore.create(tmp_path / "f", ids=[], dim=3, spec=SPEC)
    assert store.n_shards == 0 and store.pending_shards() == []
    fill_store(store, lambda k, a, b: pytest.fail("nothing to compute"))
    assert FeatureStore.open(tmp_path / "f").read().shape == (0, 3)


# ------------------------------------------------------------------------ resume


def test_resume_after_dropping_the_object(tmp_path):
    reference, data = build(tmp_path / "ref")
    fill_store(reference, lambda k, a, b: rows(a, b))

    store, _ = build(tmp_path / "f")
    for k in (0, 2):
        store.write_shard(k, rows(*store.shard_range(k)))
    del store  # "crash"

    again, _ = build(tmp_path / "f")
    assert again.pending_shards() == [1]
    calls = []

    def compute(k, start, stop):
        calls.append(k)
        return rows(start, stop)

    fill_store(again, compute)
    assert calls == [1]
    a = FeatureStore.open(tmp_path / "f").read()
    b = FeatureStore.open(tmp_path / "ref").read()
    np.testing.assert_array_equal(a, b)
    assert a.tobytes() == b.tobytes()


def test_reopen_keeps_existing_shard_rows(tmp_path):
    build(tmp_path / "f", shard_rows=4)
    again, _ = build(tmp_path / "f", shard_rows=3)
    assert again.shard_rows == 4 and again.n_shards == 3


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from harp.features.store import FeatureStore, fill_store

    path, log = sys.argv[1], sys.argv[2]

    def compute(k, start, stop):
        with open(log, "a") as handle:
            handle.write(f"{k}\\n")
        time.sleep(0.15)
        rng = np.random.default_rng(start)
        return rng.standard_normal((stop - start, 8))

    ids = [f"ex{i:04d}" for i in range(40)]
    spec = {"extractor": "lora_grad", "model": "tiny-abc123", "proj_dim": 8,
            "seed": 0}
    store = FeatureStore.create(path, ids=ids, dim=8, spec=spec, shard_rows=4)
    fill_store(store, compute)
    """
)


def test_sigkill_mid_run_then_resume(tmp_path):
    path, log = tmp_path / "f", tmp_path / "calls.log"
    script = tmp_path / "fill.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(log)])
    try:
        deadline = time.monotonic() + 30
        while len(list(path.glob("*.done"))) < 3:
            assert proc.poll() is None, "the filler finished before it was killed"
            assert time.monotonic() < deadline, "the filler made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    store, reference = build(path, n=40, shard_rows=4)
    pending = store.pending_shards()
    done = [k for k in range(store.n_shards) if k not in pending]
    assert len(done) >= 3 and pending, (done, pending)
    assert not store.complete
    mtimes = {k: (path / f"shard-{k:05d}.done").stat().st_mtime_ns for k in done}
    with pytest.raises(HarpError, match="incomplete"):
        FeatureStore.open(path)

    calls = []

    def compute(k, start, stop):
        calls.append(k)
        return rows(start, stop)

    fill_store(store, compute)
    assert calls == pending
    assert not set(calls) & set(done)
    killed_run = [int(x) for x in log.read_text().split()]
    # every shard was computed exactly once, except at most the one being
    # computed when the kill came (its data never reached a done marker)
    computed = killed_run + calls
    assert set(computed) == set(range(store.n_shards))
    assert len(computed) - store.n_shards <= 1
    for k, mtime in mtimes.items():
        assert (path / f"shard-{k:05d}.done").stat().st_mtime_ns == mtime
    out = FeatureStore.open(path).read()
    assert out.tobytes() == reference.astype(np.float32).tobytes()


def test_damaged_shards_are_recomputed(tmp_path):
    store, data = build(tmp_path / "f")
    fill_store(store, lambda k, a, b: rows(a, b))
    d = tmp_path / "f"
    # shard 1: truncated data, marker gone (a crash mid-write)
    (d / "shard-00001.done").unlink()
    with open(d / "shard-00001.bin", "r+b") as handle:
        handle.truncate(10)
    # shard 2: truncated although its marker exists
    with open(d / "shard-00002.bin", "r+b") as handle:
        handle.truncate(7)
    # shard 0: same size, other bytes: only a hash check sees it
    raw = bytearray((d / "shard-00000.bin").read_bytes())
    raw[0] ^= 0xFF
    (d / "shard-00000.bin").write_bytes(bytes(raw))

    again, _ = build(d)
    assert again.pending_shards() == [1, 2]
    assert again.pending_shards(verify=True) == [0, 1, 2]
    with pytest.raises(DataError, match="damaged"):
        again.verify()
    with pytest.raises(HarpError, match="cannot finalize"):
        again.finalize()
    calls = []

    def compute(k, start, stop):
        calls.append(k)
        return rows(start, stop)

    fill_store(again, compute)
    assert calls == [1, 2]
    again.write_shard(0, rows(0, 4), overwrite=True)
    again.finalize(verify=True)
    np.testing.assert_array_equal(FeatureStore.open(d).read(), data.astype(np.float32))


def test_rewriting_a_done_shard(tmp_path):
    store, data = build(tmp_path / "f")
    fill_store(store, lambda k, a, b: data[a:b])
    marker = tmp_path / "f" / "shard-00000.done"
    before = marker.stat().st_mtime_ns
    store.write_shard(0, data[0:4])  # identical: a no-op
    assert marker.stat().st_mtime_ns == before and store.complete
    with pytest.raises(HarpError, match="already written with other values"):
        store.write_shard(0, data[0:4] + 1)
    store.write_shard(0, data[0:4] + 1, overwrite=True)
    assert not store.complete  # changed after finalize: must be finalized again
    store.finalize()
    np.testing.assert_array_equal(
        FeatureStore.open(tmp_path / "f").read(0 + np.arange(4)),
        (data[0:4] + 1).astype(np.float32),
    )


# ---------------------------------------------------------------------- refusals


def test_other_spec_refused(tmp_path):
    build(tmp_path / "f")
    other = {**SPEC, "model": "tiny-fff999"}
    with pytest.raises(HarpError) as err:
        build(tmp_path / "f", spec=other)
    msg = str(err.value)
    assert 'was built with model="tiny-abc123"' in msg
    assert 'you asked for model="tiny-fff999"' in msg
    assert "use another --features directory or delete it" in msg
    assert "proj_dim" not in msg  # only what differs
    with pytest.raises(HarpError, match=r"checkpoint=<unset>.*checkpoint=200"):
        build(tmp_path / "f", spec={**SPEC, "checkpoint": 200})


def test_other_ids_refused(tmp_path):
    build(tmp_path / "f")
    with pytest.raises(HarpError, match="built with 10 example ids; you asked for 11"):
        build(tmp_path / "f", n=11)
    swapped = ids_for(10)
    swapped[3] = "other"
    with pytest.raises(HarpError, match="'ex0003' at row 3.*'other' at row 3"):
        FeatureStore.create(tmp_path / "f", ids=swapped, dim=DIM, spec=SPEC)


def test_other_dim_or_dtype_refused(tmp_path):
    build(tmp_path / "f")
    with pytest.raises(HarpError, match="built with dim=8; you asked for dim=4"):
        FeatureStore.create(tmp_path / "f", ids=ids_for(10), dim=4, spec=SPEC)
    with pytest.raises(HarpError, match="dtype=float32; you asked for dtype=float16"):
        build(tmp_path / "f", dtype="float16")


def test_open_checks_expectations(tmp_path):
    store, data = build(tmp_path / "f")
    fill_store(store, lambda k, a, b: data[a:b])
    with pytest.raises(HarpError, match="seed=0; you asked for seed=1"):
        FeatureStore.open(tmp_path / "f", expect_spec={**SPEC, "seed": 1})
    with pytest.raises(HarpError, match="10 example ids; you asked for 9"):
        FeatureStore.open(tmp_path / "f", expect_ids=ids_for(9))
    with pytest.raises(HarpError, match="read-only"):
        FeatureStore.open(tmp_path / "f").write_shard(0, data[:4])


def test_open_incomplete_refused(tmp_path):
    store, data = build(tmp_path / "f")
    store.write_shard(0, data[:4])
    with pytest.raises(HarpError, match=r"incomplete \(2 of 3 shards not written\)"):
        FeatureStore.open(tmp_path / "f")
    partial = FeatureStore.open(tmp_path / "f", allow_incomplete=True)
    np.testing.assert_array_equal(partial.read([1]), data[[1]].astype(np.float32))
    with pytest.raises(HarpError, match="shard 1 .* is not written"):
        partial.read()
    with pytest.raises(HarpError, match="not a feature store"):
        FeatureStore.open(tmp_path / "nothing")


def test_non_finite_rows_refused(tmp_path):
    store, data = build(tmp_path / "f")
    bad = data[4:8].copy()
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    with pytest.raises(NumericalError, match=r"shard 1 .*'ex0005', 'ex0007'"):
        store.write_shard(1, bad)
    assert not (tmp_path / "f" / "shard-00001.bin").exists()
    assert store.pending_shards() == [0, 1, 2]
    half, _ = build(tmp_path / "h", dtype="float16")
    big = data[:4].copy()
    big[2, 0] = 1e6
    with pytest.raises(NumericalError, match="too large for float16.*'ex0002'"):
        half.write_shard(0, big)


def test_bad_shapes_and_params_refused(tmp_path):
    store, data = build(tmp_path / "f")
    with pytest.raises(DataError, match=r"shape \(4, 8\)"):
        store.write_shard(0, data[:3])
    with pytest.raises(DataError, match="real numbers"):
        store.write_shard(0, data[:4].astype(complex))
    with pytest.raises(ParameterError, match="out of range"):
        store.shard_range(3)
    with pytest.raises(ParameterError, match="allowed: 'float16', 'float32'"):
        FeatureStore.create(tmp_path / "g", ids=["a"], dim=2, spec={}, dtype="int8")
    with pytest.raises(ParameterError, match="JSON"):
        FeatureStore.create(tmp_path / "g", ids=["a"], dim=2, spec={"x": object()})
    with pytest.raises(DataError, match="appears twice"):
        FeatureStore.create(tmp_path / "g", ids=["a", "a"], dim=2, spec={})


def test_non_store_directory_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(HarpError, match="not a feature store"):
        FeatureStore.create(d, ids=ids_for(3), dim=2, spec=SPEC)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    FeatureStore.create(empty, ids=ids_for(3), dim=2, spec=SPEC)  # empty is fine
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(HarpError, match="is a file"):
        FeatureStore.create(afile, ids=ids_for(3), dim=2, spec=SPEC)


# --------------------------------------------------------------------- streaming


def test_iter_blocks_crosses_shard_boundaries(tmp_path):
    store, data = build(tmp_path / "f", n=23, shard_rows=5)
    fill_store(store, lambda k, a, b: data[a:b])
    opened = FeatureStore.open(tmp_path / "f")
    blocks = list(opened.iter_blocks(3))
    assert [s for s, _ in blocks] == list(range(0, 23, 3))
    assert all(len(b) == 3 for _, b in blocks[:-1]) and len(blocks[-1][1]) == 2
    np.testing.assert_array_equal(
        np.concatenate([b for _, b in blocks]), data.astype(np.float32)
    )
    big = list(opened.iter_blocks(100))
    assert len(big) == 1 and big[0][0] == 0 and big[0][1].shape == (23, DIM)


def test_sizes():
    assert estimate_store_bytes(1000, 8192, "float16") == 16_384_000
    assert estimate_store_bytes(10, 4) == 160
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(int(3.1 * 2**30)) == "3.1 GiB"
    assert format_bytes(estimate_store_bytes(10**6, 8192, "float32")) == "30.5 GiB"
