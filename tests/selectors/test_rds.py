"""RDS+: hidden-state embeddings of the tiny model, the round-robin order, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.data import ExampleSet
from harp.features import HiddenStateFeatures, hidden_state_embeddings
from harp.models import load_model
from harp.nn.encode import encode_examples, format_prompt
from harp.selectors import RDSSelector, make_selector
from harp.selectors.rds import round_robin

ROWS = [
    {"prompt": "What is 2 plus 2?", "response": "4", "domain": "math"},
    {"prompt": "hi", "response": "a much longer response than the others, by far"},
    {"prompt": "Name a colour.", "response": "blue", "domain": "art"},
    {"prompt": "x", "response": "y"},
]


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model(tiny_dir, context=RunContext(device="cpu"))


@pytest.fixture
def ctx(tmp_path):
    return RunContext(device="cpu", cache_dir=tmp_path / "cache")


def direct_embedding(model, tok, row: dict) -> np.ndarray:
    """One row alone, from the model's own hidden states, by the definition."""
    import torch

    enc = encode_examples(tok, ExampleSet.from_records([row]), max_length=512)
    ids = torch.tensor([enc.input_ids[0]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    h = out.hidden_states[-1][0].double().numpy()  # (T, width), the LM head's input
    weights = np.arange(1, len(h) + 1, dtype=np.float64)
    v = (weights / weights.sum()) @ h
    return v / np.linalg.norm(v)


def test_row_is_read_as_finetuning_reads_it(loaded):
    model, tok = loaded
    enc = encode_examples(tok, ExampleSet.from_records(ROWS[:1]), max_length=512)
    text = tok.decode(enc.input_ids[0])
    assert format_prompt(ROWS[0]["prompt"]) + ROWS[0]["response"] in text
    assert enc.input_ids[0][-1] == tok.eos_token_id


def test_embeddings_equal_the_direct_computation(loaded):
    model, tok = loaded
    # Rows of very different lengths in one batch: three of them are padded.
    batch = hidden_state_embeddings(model, tok, ExampleSet.from_records(ROWS))
    assert batch.shape == (len(ROWS), model.config.hidden_size)
    assert batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    for i, row in enumerate(ROWS):
        np.testing.assert_allclose(
            batch[i], direct_embedding(model, tok, row), atol=2e-6
        )
        alone = hidden_state_embeddings(model, tok, ExampleSet.from_records([row]))
        np.testing.assert_allclose(batch[i], alone[0], atol=2e-6)


def test_batch_size_changes_nothing_but_rounding(loaded):
    model, tok = loaded
    rows = ExampleSet.from_records(ROWS)
    a = hidden_state_embeddings(model, tok, rows, batch_size=1)
    b = hidden_state_embeddings(model, tok, rows, batch_size=3)
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_store_is_cached_and_keyed_by_its_settings(loaded, tiny_dir, ctx):
    model, tok = loaded
    rows = ExampleSet.from_records(ROWS)
    store = HiddenStateFeatures().extract(rows, ctx, model_dir=tiny_dir)
    assert store.directory.name.startswith("hidden-")
    assert store.spec["pooling"] == "position-weighted-mean"
    np.testing.assert_allclose(
        store.read(), hidden_state_embeddings(model, tok, rows), atol=2e-6
    )
    shards = {p.name: p.stat().st_mtime_ns for p in store.directory.glob("shard-*")}
    again = HiddenStateFeatures(batch_size=2).extract(rows, ctx, model_dir=tiny_dir)
    assert again.directory == store.directory  # batch size is not part of the key
    assert {
        p.name: p.stat().st_mtime_ns for p in store.directory.glob("shard-*")
    } == shards
    other = HiddenStateFeatures(max_length=16).extract(rows, ctx, model_dir=tiny_dir)
    assert other.directory != store.directory


# -- the round-robin order -------------------------------------------------------------


def brute_force(scores: np.ndarray, budget: int) -> list[int]:
    """Each column in turn takes its best free row (highest score, then lowest row)."""
    n, n_cols = scores.shape
    picked: list[int] = []
    while len(picked) < min(budget, n):
        for j in range(n_cols):
            if len(picked) == min(budget, n):
                break
            free = [i for i in range(n) if i not in picked]
            picked.append(max(free, key=lambda i: (scores[i, j], -i)))
    return picked


def test_round_robin_on_a_hand_made_case():
    scores = np.array(
        [
            [0.9, 0.95],
            [0.8, 0.1],
            [0.1, 0.9],
            [0.7, 0.3],
            [0.2, 0.6],
            [0.8, 0.1],
        ]
    )
    idx, owners = round_robin(scores, 6)
    # A takes 0; B's best (0) is taken, so 2; A: 1 and 5 tie at 0.8, 1 first; B: 4;
    # A: 5; B: 3.
    assert idx.tolist() == [0, 2, 1, 4, 5, 3]
    assert owners.tolist() == [0, 1, 0, 1, 0, 1]
    assert idx.tolist() == brute_force(scores, 6)
    assert round_robin(scores, 3)[0].tolist() == [0, 2, 1]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 14),
    n_cols=st.integers(1, 4),
)
def test_round_robin_matches_brute_force(data, n, n_cols):
    values = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, -0.5])  # many ties
    flat = data.draw(st.lists(values, min_size=n * n_cols, max_size=n * n_cols))
    scores = np.asarray(flat).reshape(n, n_cols)
    budget = data.draw(st.integers(1, n))
    idx, owners = round_robin(scores, budget)
    assert idx.tolist() == brute_force(scores, budget)
    assert len(idx) == budget == len(set(idx.tolist()))
    assert owners.tolist() == [k % n_cols for k in range(budget)]
    again, _ = round_robin(scores.copy(), budget)
    np.testing.assert_array_equal(again, idx)


class _Store:
    """A stand-in feature store over a fixed array."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x, dtype=np.float32)

    def read(self) -> np.ndarray:
        return self.x

    def iter_blocks(self, block_rows: int):
        for start in range(0, len(self.x), 2):  # small blocks: the stitching is tested
            yield start, self.x[start : start + 2]


class InjectedFeatures(HiddenStateFeatures):
    """Hidden-state features replaced by given vectors (keyed by the rows' ids)."""

    vectors: dict[str, np.ndarray] = {}

    def extract(self, examples, context, *, model_dir):
        return _Store(np.stack([self.vectors[e.id] for e in examples]))


def unit_with(a: float, b: float) -> np.ndarray:
    """A unit vector whose cosines to e1 and e2 are ``a`` and ``b``."""
    return np.array([a, b, np.sqrt(1.0 - a * a - b * b)])


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_selector_round_robins_over_target_domains(tiny_dir, ctx, aggregate):
    cos_a = [0.9, 0.6, 0.1, 0.5, 0.2, 0.6, 0.0]
    cos_b = [0.4, 0.1, 0.8, 0.3, 0.6, 0.1, 0.0]
    pool = ExampleSet.from_records(
        [{"prompt": f"p{i}", "response": "r"} for i in range(len(cos_a))]
    )
    target = ExampleSet.from_records(
        [
            {"prompt": "tb", "response": "r", "domain": "b"},
            {"prompt": "ta1", "response": "r", "domain": "a"},
            {"prompt": "ta2", "response": "r", "domain": "a"},
        ]
    )
    vectors = {e.id: unit_with(a, b) for e, a, b in zip(pool, cos_a, cos_b)}
    e1, e2, e3 = np.eye(3)
    # a's second row points away from every pool row: it moves a's mean, not its max.
    vectors.update({target[0].id: e2, target[1].id: e1, target[2].id: -e3})
    InjectedFeatures.vectors = vectors
    sel = RDSSelector(
        budget=5,
        model=str(tiny_dir),
        features=InjectedFeatures(),
        aggregate=aggregate,
        context=ctx,
    ).fit(pool, target)
    x = np.stack([vectors[e.id] for e in pool])
    cos = x @ np.stack([e2, e1, -e3]).T  # columns: b, a1, a2
    if aggregate == "max":
        expected = np.stack([cos[:, 1:].max(axis=1), cos[:, 0]], axis=1)
    else:
        expected = np.stack([cos[:, 1:].mean(axis=1), cos[:, 0]], axis=1)
    assert sel.domains_ == ("a", "b")  # sorted: a picks first
    np.testing.assert_allclose(sel.domain_scores_, expected, atol=1e-6)
    order = brute_force(expected, 5)
    assert sel.ranking.tolist() == order
    assert sel.picked_by_.tolist() == [0, 1, 0, 1, 0]
    np.testing.assert_allclose(sel.gains, expected[order, [0, 1, 0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(sel.selection_.scores, expected.max(axis=1), atol=1e-6)
    if aggregate == "max":
        assert order == [0, 2, 1, 4, 5]


# -- the selector on the tiny model ----------------------------------------------------


def test_needs_a_target(tiny_dir, ctx):
    with pytest.raises(ParameterError, match="needs a target"):
        RDSSelector(budget=2, model=str(tiny_dir), context=ctx).fit(ROWS)


def test_fit_on_the_tiny_model_is_deterministic(tiny_dir, ctx, make_pool, make_rows):
    pool, _ = make_pool({"math": 8, "cooking": 8, "code": 4}, seed=1)
    target = make_rows("math", 3, seed=7) + make_rows("code", 2, seed=8)
    params = dict(budget=9, model=str(tiny_dir), max_length=64, context=ctx)
    first = make_selector("rds", **params).select(pool, target)
    again = make_selector("rds", **params).select(pool, target)
    assert first == again and first.fingerprint == again.fingerprint
    assert len(first) == 9 and len(set(first.indices.tolist())) == 9
    assert first.cost.rows_scored == len(pool) + len(target)
    assert first.params["features__max_length"] == 64


def test_cli_select_rds_with_a_local_model(tiny_dir, tmp_path):
    from harp.app.cli import app
    from harp.data.synthetic import make_skills_suite

    files = make_skills_suite(n_pool=40, n_target_per_domain=3, n_pretrain=10).save(
        tmp_path / "data"
    )
    out = tmp_path / "rds.jsonl"
    args = [
        "select",
        "--pool",
        str(files["pool"]),
        "--target",
        str(files["target"]),
        "--method",
        "rds",
        "--model",
        str(tiny_dir),
        "--budget",
        "8",
        "-p",
        "max_length=64",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "rds.jsonl.meta.json").read_text())
    assert meta["method"] == "rds" and len(meta["indices"]) == 8
    assert len(set(meta["indices"])) == 8
    assert meta["params"]["model"] == str(tiny_dir)
    assert len(out.read_text().splitlines()) == 8
    assert list((tmp_path / "cache" / "features").glob("hidden-*"))
