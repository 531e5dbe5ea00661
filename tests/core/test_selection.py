"""The Selection result type: validation, immutability, equality, save/load, export."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from harp.core.errors import DataError
from harp.selectors import Cost, Selection


def make(**overrides) -> Selection:
    fields = dict(
        indices=np.array([3, 0, 4]),
        ids=("d", "a", "e"),
        scores=np.array([0.5, np.nan, -1.0, 2.0, 1.5]),
        gains=np.array([2.0, 0.5, np.nan]),
        budget=3,
        n_pool=5,
        method="toy",
        params={"budget": 3, "seed": 0, "alpha": 0.1},
        seed=0,
        cost=Cost(wall_seconds=1.25, rows_scored=5),
        fingerprint="abc123",
    )
    fields.update(overrides)
    return Selection(**fields)


def test_basic_views():
    sel = make()
    assert len(sel) == 3
    assert sel.indices.dtype == np.int64 and sel.scores.dtype == np.float64
    np.testing.assert_array_equal(sel.mask, [True, False, False, True, True])
    d = sel.to_dict()
    assert d["n_selected"] == 3 and d["indices"] == [3, 0, 4]
    assert d["scores"][1] is None and d["gains"][2] is None  # NaN -> null
    json.dumps(d, allow_nan=False)  # strictly JSON


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"indices": np.array([0, 0, 1])}, "unique"),
        ({"indices": np.array([[0, 1, 2]])}, "1-d"),
        ({"indices": np.array([0, 1, 5])}, "out of range"),
        ({"indices": np.array([-1, 1, 2])}, "out of range"),
        ({"scores": np.zeros(4)}, r"shape \(5,\)"),
        ({"gains": np.zeros(2)}, "one entry per pick"),
        ({"ids": ("a", "b")}, "one entry per pick"),
    ],
)
def test_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_empty_selection_is_allowed():
    sel = make(indices=np.array([], dtype=np.int64), ids=(), gains=np.array([]))
    assert len(sel) == 0 and not sel.mask.any()


def test_immutable():
    sel = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.method = "other"
    for arr in (sel.indices, sel.scores, sel.gains):
        with pytest.raises(ValueError):
            arr[0] = 1
    assert isinstance(sel.ids, tuple)


def test_copies_its_inputs():
    indices = np.array([3, 0, 4])
    scores = np.array([0.5, 0.1, -1.0, 2.0, 1.5])
    sel = make(indices=indices, scores=scores)
    indices[0] = 1
    scores[:] = 0
    assert sel.indices.tolist() == [3, 0, 4]
    assert sel.scores[3] == 2.0
    assert indices.flags.writeable  # the caller's arrays are not frozen


def test_equality_ignores_cost_only():
    a = make()
    b = make(cost=Cost(wall_seconds=99.0, device="cuda"))
    assert a == b and a.digest() == b.digest()
    assert a != make(indices=np.array([0, 3, 4]))  # order is the ranking
    assert a != make(scores=np.array([0.5, np.nan, -1.0, 2.0, 1.0]))
    assert a != make(seed=1)
    assert a != make(fingerprint="other")
    assert a != make(params={"budget": 3})
    assert a.digest() != make(indices=np.array([0, 3, 4])).digest()
    assert (a == "not a selection") is False


def test_nan_scores_compare_equal():
    assert make() == make()  # NaN entries are equal through to_dict


def test_digest_is_stable_text():
    d = make().digest()
    assert isinstance(d, str) and len(d) == 32
    assert d == make().digest()


def test_save_load_round_trip(tmp_path):
    sel = make()
    path = tmp_path / "out" / "selection.json"
    sel.save(path, extra={"harp_version": "0.1.0"})
    data = json.loads(path.read_text())
    assert data["harp_version"] == "0.1.0" and data["method"] == "toy"
    again = Selection.load(path)
    assert again == sel
    assert again.cost == sel.cost
    np.testing.assert_array_equal(again.scores, sel.scores)
    np.testing.assert_array_equal(again.gains, sel.gains)
    assert again.ids == sel.ids and again.params == sel.params
    assert [p.name for p in path.parent.iterdir()] == ["selection.json"]  # no temp left


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "selection.json"
    make().save(path)
    make(seed=5).save(path)
    assert Selection.load(path).seed == 5


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"indices": [0]}', '{"indices": "x", "ids": []}']
)
def test_load_rejects_other_files(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match="not a harp selection file") as info:
        Selection.load(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match="not a harp selection file"):
        Selection.load(tmp_path / "missing.json")


def test_to_dataframe():
    df = make().to_dataframe()
    assert list(df.columns) == ["rank", "index", "id", "score", "gain"]
    assert df["rank"].tolist() == [0, 1, 2]
    assert df["index"].tolist() == [3, 0, 4]
    assert df["id"].tolist() == ["d", "a", "e"]
    assert df["score"].tolist() == [2.0, 0.5, 1.5]
    assert df["gain"].tolist()[:2] == [2.0, 0.5] and np.isnan(df["gain"].iloc[2])


def test_cost_to_dict():
    assert Cost(rows_scored=3).to_dict() == {
        "wall_seconds": 0.0,
        "train_eval_calls": 0,
        "gradient_passes": 0,
        "rows_scored": 3,
        "device": "cpu",
    }
