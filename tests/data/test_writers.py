"""Tests of :func:`harp.data.write_rows`: formats, round trips, safety."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from _helpers import needs_shared, shared, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harp.core.errors import DataError, HarpError, ParameterError
from harp.data import Example, ExampleSet, load_examples, write_rows
from harp.data.writers import detect_format


def alpaca(instruction: str, input: str, output: str, domain: str) -> dict:
    return dict(instruction=instruction, input=input, output=output, domain=domain)


ROWS = [
    alpaca("Add 2 and 3.", "", "5", "math"),
    alpaca("Reverse", "abc, def", "fed ,cba", "text"),
    alpaca('Say "hi"\ttwice', "", "hi\nhi", "text"),
    alpaca("Add 2 and 3.", "", "5", "math"),  # an exact repeat of row 0
    alpaca("Name a prime.", "", "7", "math"),
]


def make_pool(tmp_path: Path, kind: str, rows: list[dict] = ROWS) -> Path:
    path = tmp_path / f"pool.{kind}"
    if kind == "jsonl":
        write_jsonl(path, rows)
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind in ("csv", "tsv"):
        with open(path, "w", encoding="utf-8", newline="") as handle:
            delimiter = "," if kind == "csv" else "\t"
            writer = csv.DictWriter(handle, list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    else:  # pragma: no cover - test helper misuse
        raise ValueError(kind)
    return path


def records(pool) -> list[tuple[str, str, str, str]]:
    return [(e.id, e.prompt, e.response, e.domain) for e in pool]


def assert_round_trip(
    pool: ExampleSet, idx: list[int], out: Path, **kwargs
) -> ExampleSet:
    written = write_rows(pool, idx, out, **kwargs)
    assert written == out and out.is_file()
    again = load_examples(out)
    assert records(again) == records(pool.subset(idx))
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    return again


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "tsv"])
def test_round_trip_in_the_pool_format(tmp_path, kind):
    pool = load_examples(make_pool(tmp_path, kind))
    idx = [4, 1, 3]  # the repeat (row 3, id "...#2") is written without its twin
    out = tmp_path / "out" / f"subset.{kind}"
    again = assert_round_trip(pool, idx, out)
    assert again.format == pool.format and again.schema == pool.schema
    assert detect_format(out) == pool.format
    if kind in ("csv", "tsv", "parquet"):
        # The pool's columns first; "id" is added only because of the repeat.
        assert again.columns[:4] == pool.columns
        assert again.columns[4:] == ("id",)


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_rows_are_echoed_unchanged(tmp_path, kind):
    pool = load_examples(make_pool(tmp_path, kind))
    out = tmp_path / f"subset.{kind}"
    write_rows(pool, [2, 0, 1], out)
    assert list(load_examples(out).rows) == [pool.rows[i] for i in (2, 0, 1)]


def test_jsonl_bytes_match_the_input_lines(tmp_path):
    path = make_pool(tmp_path, "jsonl")
    pool = load_examples(path)
    out = write_rows(pool, [0, 1, 2], tmp_path / "s.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert out.read_text(encoding="utf-8") == "".join(lines[:3])


@needs_shared
def test_flan_tsv_round_trip_is_byte_identical(tmp_path):
    path = shared("flan_v2_cot/aqua_train.tsv")
    pool = load_examples(path)
    out = tmp_path / "aqua_train.tsv"
    write_rows(pool, range(len(pool)), out)
    assert out.read_bytes() == path.read_bytes()
    sub = tmp_path / "sub" / "aqua_train.tsv"
    again = assert_round_trip(pool, [5, 2, 9], sub)
    assert again.format == "flan-tsv"


@needs_shared
def test_real_pools_round_trip_to_other_formats(tmp_path):
    gsm = load_examples(shared("gsm8k/test.jsonl"))
    idx = list(range(0, len(gsm), 97))
    for ext in ("parquet", "csv", "tsv", "json"):
        assert_round_trip(gsm, idx, tmp_path / f"gsm.{ext}")
    alpaca = load_examples(shared("alpaca_sample_1k/alpaca_data_1k.json"))
    assert_round_trip(alpaca, [999, 0, 500], tmp_path / "alpaca.json")
    assert_round_trip(alpaca, [3, 4], tmp_path / "alpaca.jsonl")


def test_extension_or_format_chooses_another_format(tmp_path):
    pool = load_examples(make_pool(tmp_path, "jsonl"))
    out = write_rows(pool, [0, 1], tmp_path / "s.parquet")
    assert out.read_bytes()[:4] == b"PAR1"
    assert records(load_examples(out)) == records(pool.subset([0, 1]))
    out = write_rows(pool, [0, 1], tmp_path / "s.data", format="csv")
    assert records(load_examples(out, format="csv")) == records(pool.subset([0, 1]))
    # An unknown extension keeps the pool's format.
    out = write_rows(pool, [1], tmp_path / "s.txt")
    assert detect_format(out) == "jsonl"
    with pytest.raises(ParameterError, match="cannot be written"):
        write_rows(pool, [1], tmp_path / "s.xml", format="xml")


def test_flan_pool_to_jsonl_keeps_domains(tmp_path):
    path = tmp_path / "qasc_train.tsv"
    text = "Q one?\\nOptions: a\tb\tWhy.\\nBecause.\nQ two?\tc\tSo.\n"
    path.write_text(text, "utf-8")
    pool = load_examples(path)
    assert pool.domains == ("qasc",)
    again = assert_round_trip(pool, [1, 0], tmp_path / "out.jsonl")
    assert again.rows[0] == {
        "question": "Q two?",
        "answer": "c",
        "rationale": "So.",
        "domain": "qasc",
    }
    assert_round_trip(pool, [0], tmp_path / "x" / "qasc_train.tsv")


def test_folder_pool_writes_jsonl_with_domains(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    write_jsonl(folder / "math.jsonl", [{"prompt": "1+1", "response": "2"}])
    write_jsonl(folder / "code.jsonl", [{"prompt": "d", "response": "f", "task": "x"}])
    pool = load_examples(folder)
    again = assert_round_trip(pool, [1, 0], tmp_path / "subset.out")
    assert again.format == "jsonl"
    assert again.rows[0] == {"prompt": "1+1", "response": "2", "domain": "math"}
    with pytest.raises(HarpError, match="onto an input"):
        write_rows(pool, [0], folder / "math.jsonl", force=True)


def test_hf_disk_pool_writes_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    pool = load_examples(folder)
    again = assert_round_trip(pool, [2, 0, 3], tmp_path / "s.jsonl")
    assert again.format == "jsonl"
    assert_round_trip(pool, [1, 4], tmp_path / "s.parquet")


def test_memory_pool_writes_prompt_response_jsonl(tmp_path):
    pool = ExampleSet.from_records(
        [
            {"prompt": "a", "response": "b", "domain": "x", "extra": 1},
            {"prompt": "c", "response": "d"},
        ]
    )
    out = write_rows(pool, [1, 0], tmp_path / "m.jsonl")
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert rows[1] == {"id": pool[0].id, "prompt": "a", "response": "b", "domain": "x"}
    assert records(load_examples(out)) == records(pool.subset([1, 0]))
    bare = ExampleSet((Example("e1", "p", "r", "d"),))
    assert_round_trip(bare, [0], tmp_path / "bare.csv")


def test_chat_pool_round_trips_through_parquet_and_csv(tmp_path):
    rows = [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Q{i}"},
                {"role": "assistant", "content": f"A{i}"},
            ],
        }
        for i in range(3)
    ]
    pool = load_examples(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert_round_trip(pool, [2, 0], tmp_path / "chat.parquet")
    assert_round_trip(pool, [1], tmp_path / "chat.csv")


def test_domain_field_pools_gain_a_domain(tmp_path):
    rows = [{"prompt": "p", "response": "r", "subject": "bio"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pool = load_examples(path, domain_field="subject")
    again = assert_round_trip(pool, [0], tmp_path / "o.jsonl")
    assert again.rows[0]["domain"] == "bio"


def test_repeats_out_of_order_keep_their_ids(tmp_path):
    row = {"prompt": "p", "response": "r"}
    pool = load_examples(write_jsonl(tmp_path / "p.jsonl", [row, row, row]))
    again = assert_round_trip(pool, [2, 0, 1], tmp_path / "o.jsonl")
    # The first row written is the pool's third copy: it must carry its id.
    assert again.rows[0]["id"] == pool[2].id
    # In pool order, nothing needs adding.
    again = assert_round_trip(pool, [0, 1], tmp_path / "o2.jsonl")
    assert list(again.rows) == [row, row]


def test_parquet_keeps_the_pool_column_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "typed.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "prompt": ["a", "b", "c"],
            "response": ["x", "y", "z"],
        }
    )
    pq.write_table(table, path)
    pool = load_examples(path)
    assert pool.ids == ("1", "2", "3")
    out = write_rows(pool, [2, 0], tmp_path / "o.parquet")
    assert pq.read_schema(out).field("id").type == pa.int32()
    assert records(load_examples(out)) == records(pool.subset([2, 0]))


# --------------------------------------------------------------------------- safety


def test_refuses_to_overwrite_without_force(tmp_path):
    pool = load_examples(make_pool(tmp_path, "jsonl"))
    out = tmp_path / "s.jsonl"
    out.write_text("keep me", encoding="utf-8")
    with pytest.raises(HarpError, match="exists already"):
        write_rows(pool, [0], out)
    assert out.read_text(encoding="utf-8") == "keep me"
    write_rows(pool, [0], out, force=True)
    assert records(load_examples(out)) == records(pool.subset([0]))


def test_refuses_to_write_onto_the_input(tmp_path):
    path = make_pool(tmp_path, "jsonl")
    pool = load_examples(path)
    before = path.read_bytes()
    for force in (False, True):
        with pytest.raises(HarpError, match="onto an input"):
            write_rows(pool, [0], path, force=force)
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "tsv"])
def test_input_bytes_and_mtime_unchanged(tmp_path, kind):
    path = make_pool(tmp_path, kind)
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    pool = load_examples(path)
    write_rows(pool, [1, 0], tmp_path / f"out.{kind}")
    write_rows(pool, [0], tmp_path / "other.jsonl")
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_bad_indices(tmp_path):
    pool = load_examples(make_pool(tmp_path, "jsonl"))
    with pytest.raises(ParameterError, match="out of range"):
        write_rows(pool, [0, 5], tmp_path / "a.jsonl")
    with pytest.raises(ParameterError, match="given twice"):
        write_rows(pool, [1, 1], tmp_path / "b.jsonl")
    assert not list(tmp_path.glob("[ab].jsonl"))


def test_failed_parquet_write_leaves_nothing(tmp_path):
    rows = [
        {"prompt": "a", "response": "b", "meta": 1},
        {"prompt": "c", "response": "d", "meta": "text"},
    ]
    pool = load_examples(write_jsonl(tmp_path / "p.jsonl", rows))
    with pytest.raises(DataError, match="cannot write these rows as Parquet"):
        write_rows(pool, [0, 1], tmp_path / "o.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_flan_tsv_refuses_what_it_cannot_hold(tmp_path):
    rows = [{"question": "a\tb", "answer": "c", "rationale": "r"}]
    pool = load_examples(write_jsonl(tmp_path / "p.jsonl", rows))
    with pytest.raises(DataError, match="holds a tab") as info:
        write_rows(pool, [0], tmp_path / "o.tsv", format="flan-tsv")
    assert info.value.field == "question"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "p", "response": "r"}])
    pool = load_examples(path)
    with pytest.raises(DataError, match="needs string fields question"):
        write_rows(pool, [0], tmp_path / "o.tsv", format="flan-tsv")


def test_same_ids_across_formats(tmp_path):
    ids = {
        kind: load_examples(make_pool(tmp_path, kind)).ids
        for kind in ("jsonl", "json", "parquet", "csv", "tsv")
    }
    assert len(set(ids.values())) == 1


# --------------------------------------------------------------------------- property

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"prompt": _text, "response": _text},
            optional={"domain": st.sampled_from(["a", "b"])},
        ),
        min_size=1,
        max_size=6,
    ),
    kind=st.sampled_from(["jsonl", "json", "csv", "tsv", "parquet"]),
    data=st.data(),
)
def test_write_then_load_round_trips(tmp_path_factory, rows, kind, data):
    base = tmp_path_factory.mktemp("rt")
    pool = load_examples(write_jsonl(base / "pool.jsonl", rows))
    idx = data.draw(st.permutations(range(len(rows))))
    idx = idx[: data.draw(st.integers(1, len(rows)))]
    out = write_rows(pool, idx, base / f"out.{kind}")
    assert records(load_examples(out)) == records(pool.subset(idx))
