"""Tests of :func:`harp.data.load_examples` and ``detect_format``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from _helpers import needs_shared, shared, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harp.core.errors import DataError
from harp.data import (
    DEFAULT_DOMAIN,
    ExampleSet,
    content_id,
    load_examples,
    loaders,
)
from harp.data.loaders import detect_format


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def raises_data_error(path, *, line=None, field=None, match=None, **kwargs):
    """Load ``path`` expecting a DataError; check where it points and its text."""
    with pytest.raises(DataError) as info:
        load_examples(path, **kwargs)
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    assert err.field == field
    text = str(err)
    assert text.startswith(str(path) if line is None else f"{path}:{line}")
    if field is not None:
        assert f"field {field!r}" in text
    if match is not None:
        assert match in text, text
    return err


# --------------------------------------------------------------------------- real data


@needs_shared
def test_gsm8k_train_and_test():
    train = load_examples(shared("gsm8k/train.jsonl"))
    assert len(train) == 7473
    assert (train.format, train.schema) == ("jsonl", "gsm8k")
    first = train[0]
    assert first.prompt.startswith("Natalia sold clips to 48 of her friends")
    assert first.response.endswith("\n#### 72")  # the answer is kept whole
    assert first.domain == DEFAULT_DOMAIN
    assert first.line == 1 and first.source.endswith("train.jsonl:1")
    assert len(set(train.ids)) == len(train)
    assert train.rows[0] == json.loads(
        shared("gsm8k/train.jsonl").read_text(encoding="utf-8").split("\n")[0]
    )
    test = load_examples(shared("gsm8k/test.jsonl"))
    assert len(test) == 1319
    # Ids are stable across runs.
    assert load_examples(shared("gsm8k/test.jsonl")).ids == test.ids


@needs_shared
def test_alpaca_json_array():
    pool = load_examples(shared("alpaca_sample_1k/alpaca_data_1k.json"))
    assert (len(pool), pool.format, pool.schema) == (1000, "json", "alpaca")
    with_input = [i for i, r in enumerate(pool.rows) if r["input"].strip()]
    assert len(with_input) == 392
    i = with_input[0]
    row = pool.rows[i]
    assert pool[i].prompt == f"{row['instruction']}\n\n{row['input']}"
    assert pool[i].response == row["output"]
    j = next(k for k, r in enumerate(pool.rows) if not r["input"])
    assert pool[j].prompt == pool.rows[j]["instruction"]
    assert pool[i].line == i + 1  # record number in a JSON array


@needs_shared
def test_flan_cot_tsv():
    path = shared("flan_v2_cot/aqua_train.tsv")
    assert detect_format(path) == "flan-tsv"
    pool = load_examples(path)
    assert (len(pool), pool.format, pool.schema) == (2728, "flan-tsv", "flan-cot")
    assert pool.domains == ("aqua",)
    assert pool.columns == ("question", "answer", "rationale")
    first = pool[0]
    assert first.prompt.startswith("Rs. 5600 is divided into three parts")
    assert "\nOptions:\n(A) 300\n" in first.prompt and "\\n" not in first.prompt
    assert first.response == (
        "1/7:1/7:1/14 = 2:2:1\n1/5*5600 = 1120\n2240-1120 = 1120\nThe answer is (C)."
    )
    assert set(pool.rows[0]) == {"question", "answer", "rationale"}
    assert pool.rows[0]["answer"] == "(C)"


@needs_shared
def test_flan_folder_gets_domains_from_file_names():
    pool = load_examples(shared("flan_v2_cot"))
    assert pool.format == "dir"
    assert len(pool) == 33443
    assert pool.domains == (
        "aqua",
        "creak",
        "ecqa",
        "gsm8k",
        "qasc",
        "sensemaking",
        "strategyqa",
    )


@needs_shared
def test_t0_templates(tmp_path):
    names = [
        "ag_news_classify.jsonl",
        "adversarial_qa_dbert_answer_the_following_q.jsonl",
        "imdb_Movie_Expressed_Sentiment.jsonl",
    ]
    folder = tmp_path / "t0"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(shared(f"t0_train_50k/data_per_template/{name}"))
    one = load_examples(folder / names[0])
    assert one.schema == "prompt-completion"
    assert one[0].response == "Business"  # the trailing <|endoftext|> is removed
    assert one.rows[0]["completion"] == "Business<|endoftext|>"
    assert all(not e.response.endswith("<|endoftext|>") for e in one)
    pool = load_examples(folder)
    assert pool.format == "dir"
    assert pool.domains == tuple(sorted(Path(n).stem for n in names))
    assert len(pool) == sum(len(load_examples(folder / n)) for n in names)
    assert pool[0].source.startswith(str(folder / sorted(names)[0]))


@needs_shared
def test_t0_folder_with_empty_completions_is_reported():
    # Seven trec templates of the real T0 sample have only "<|endoftext|>" as
    # completion: the folder cannot load, and the error says where.
    folder = shared("t0_train_50k/data_per_template")
    with pytest.raises(DataError, match="response is empty") as info:
        load_examples(folder)
    assert info.value.path.endswith("trec_fine_grained_open.jsonl")
    assert (info.value.line, info.value.field) == (1, "completion")


@needs_shared
def test_unknown_folder_layout_lists_its_content():
    folder = shared("t0_train_50k")
    err = raises_data_error(folder, match="unknown layout")
    assert "data_per_template" in str(err)


# --------------------------------------------------------------------------- schemas


def test_chat_messages_rendering(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "thanks"},  # after the last assistant: dropped
    ]
    pool = load_examples(write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}]))
    assert pool.schema == "chat"
    assert pool[0].prompt == (
        "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: 2+2?"
    )
    assert pool[0].response == "4"


def test_sharegpt_conversations_and_content_parts(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "Name a colour."},
                {"from": "gpt", "value": "Blue."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Say hi"}]},
                {"role": "assistant", "content": "hi"},
            ]
        },
    ]
    pool = load_examples(write_jsonl(tmp_path / "s.jsonl", rows))
    assert [e.prompt for e in pool] == ["User: Name a colour.", "User: Say hi"]
    assert [e.response for e in pool] == ["Blue.", "hi"]
    assert pool.schema == "mixed"


def test_chat_without_assistant_turn(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [user("a"), assistant("b")]},
            {"messages": [{"role": "user", "content": "only a question"}]},
        ],
    )
    raises_data_error(path, line=2, field="messages", match="no assistant turn")


def test_chat_turn_with_bad_content(tmp_path):
    row = {"messages": [user(3), assistant("b")]}
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    raises_data_error(
        path, line=1, field="messages[0].content", match="must be a string"
    )


def test_dolly_context_and_category(tmp_path):
    row = {
        "instruction": "Summarise.",
        "context": "A long text.",
        "response": "Short.",
        "category": "summarization",
    }
    pool = load_examples(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert pool.schema == "dolly"
    assert pool[0].prompt == "Summarise.\n\nA long text."
    assert pool[0].response == "Short."
    assert pool[0].domain == "summarization"


@pytest.mark.parametrize(
    ("row", "schema", "prompt", "response"),
    [
        (
            {"prompt": "p", "completion": "c<|endoftext|>"},
            "prompt-completion",
            "p",
            "c",
        ),
        ({"prompt": "p", "response": "r"}, "prompt-response", "p", "r"),
        ({"inputs": "i", "targets": "t"}, "inputs-targets", "i", "t"),
        ({"question": "q", "answer": "a\n#### 3"}, "gsm8k", "q", "a\n#### 3"),
        (
            {"question": "q", "answer": "yes", "rationale": "because"},
            "flan-cot",
            "q",
            "because\nThe answer is yes.",
        ),
        (
            {"question": "q", "answer": "It is 4.", "rationale": ""},
            "flan-cot",
            "q",
            "The answer is It is 4.",
        ),
    ],
)
def test_flat_schemas(tmp_path, row, schema, prompt, response):
    pool = load_examples(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert (pool.schema, pool[0].prompt, pool[0].response) == (schema, prompt, response)


def test_domain_from_domain_task_or_field(tmp_path):
    rows = [
        {"prompt": "a", "response": "b", "domain": "math"},
        {"prompt": "c", "response": "d", "task": "code"},
        {"prompt": "e", "response": "f", "subject": "bio"},
        {"prompt": "g", "response": "h"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pool = load_examples(path)
    assert [e.domain for e in pool] == ["math", "code", "default", "default"]
    with pytest.raises(DataError, match="named by domain_field") as info:
        load_examples(path, domain_field="subject")
    assert (info.value.line, info.value.field) == (1, "subject")
    rows = [dict(r, subject=s) for r, s in zip(rows, ["x", "y", "bio", ""])]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    assert [e.domain for e in load_examples(path, domain_field="subject")] == [
        "x",
        "y",
        "bio",
        "default",
    ]


def test_explicit_field_mapping(tmp_path):
    rows = [
        {"q": "What is 2+2?", "a": "4", "id": 7},
        {"q": "Capital of France?", "a": "Paris"},
    ]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    raises_data_error(path, line=1, match="unrecognised schema")
    pool = load_examples(path, prompt_field="q", response_field="a")
    assert pool.schema == "custom"
    assert [(e.prompt, e.response) for e in pool] == [
        ("What is 2+2?", "4"),
        ("Capital of France?", "Paris"),
    ]
    assert pool[0].id == "7"
    assert pool[1].id == content_id("Capital of France?", "Paris")
    err = raises_data_error(
        path, line=1, field="question", prompt_field="question", response_field="a"
    )
    assert "'q'" in str(err) and "'a'" in str(err)  # lists the fields present


def test_one_explicit_field_overrides_the_detected_schema(tmp_path):
    row = {"instruction": "Translate.", "input": "bonjour", "output": "hello"}
    pool = load_examples(write_jsonl(tmp_path / "a.jsonl", [row]), prompt_field="input")
    assert (pool[0].prompt, pool[0].response) == ("bonjour", "hello")


# --------------------------------------------------------------------------- formats


ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "domain": "math"},
    {"instruction": "Reverse", "input": "a, b", "output": "b ,a", "domain": "text"},
    {"instruction": 'Say "hi"\ntwice', "input": "", "output": "hi\nhi", "domain": "t"},
]


def _as_csv(path: Path, rows: list[dict], delimiter: str) -> Path:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _as_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _expected(rows=ROWS):
    out = []
    for r in rows:
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        out.append((content_id(prompt, r["output"]), prompt, r["output"], r["domain"]))
    return out


def _records(pool: ExampleSet):
    return [(e.id, e.prompt, e.response, e.domain) for e in pool]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "tsv", "ndjson"])
def test_formats_give_the_same_examples_and_ids(tmp_path, kind):
    path = tmp_path / f"pool.{kind}"
    if kind in ("jsonl", "ndjson"):
        write_jsonl(path, ROWS)
    elif kind == "json":
        path.write_text(json.dumps(ROWS), encoding="utf-8")
    elif kind == "parquet":
        _as_parquet(path, ROWS)
    else:
        _as_csv(path, ROWS, "," if kind == "csv" else "\t")
    pool = load_examples(path)
    assert pool.format == {"ndjson": "jsonl"}.get(kind, kind)
    assert pool.schema == "alpaca"
    assert _records(pool) == _expected()
    if kind in ("csv", "tsv", "parquet"):
        assert pool.columns == ("instruction", "input", "output", "domain")
    if kind in ("csv", "tsv"):
        assert pool.rows[1] == {k: str(v) for k, v in ROWS[1].items()}
        # The third row spans two physical lines: it starts on line 4.
        assert [e.line for e in pool] == [2, 3, 4]


def test_hf_save_to_disk_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    assert detect_format(folder) == "hf-disk"
    pool = load_examples(folder)
    assert (pool.format, pool.schema) == ("hf-disk", "alpaca")
    assert _records(pool) == _expected()
    assert pool.columns == ("instruction", "input", "output", "domain")
    # Without the datasets package, the *.arrow files are read with pyarrow.
    monkeypatch.setattr(loaders, "_import_datasets", lambda: None)
    assert _records(load_examples(folder)) == _expected()


def test_hf_dataset_dict_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS[:2]),
            "test": datasets.Dataset.from_list(ROWS[2:]),
        }
    ).save_to_disk(str(folder))
    assert _records(load_examples(folder)) == _expected()[:2]
    nofolder = tmp_path / "dd2"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(ROWS)}).save_to_disk(
        str(nofolder)
    )
    raises_data_error(nofolder, match="splits [validation]")


def test_json_object_holding_rows_and_jsonl_named_json(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": ROWS}), encoding="utf-8")
    assert _records(load_examples(path)) == _expected()
    path = tmp_path / "lines.json"
    path.write_text("\n" + "\n\n".join(json.dumps(r) for r in ROWS), "utf-8")
    pool = load_examples(path)
    assert (pool.format, _records(pool)) == ("jsonl", _expected())
    assert [e.line for e in pool] == [2, 4, 6]
    path = tmp_path / "nolist.json"
    path.write_text(json.dumps({"a": 1}), encoding="utf-8")
    raises_data_error(path, match="holds no list of rows")


def test_tabular_nulls_do_not_decide_the_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = {"messages": [user("Hi"), assistant("Hello")]}
    rows = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5", "messages": None},
        {"instruction": None, "input": None, "output": None, **chat},
    ]
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    pool = load_examples(path)
    assert pool.schema == "mixed"
    assert [(e.prompt, e.response) for e in pool] == [
        ("Add 2 and 3.", "5"),
        ("User: Hi", "Hello"),
    ]


def test_detect_format(tmp_path):
    header_tsv = _as_csv(tmp_path / "h.tsv", ROWS, "\t")
    assert detect_format(header_tsv) == "tsv"
    flan = tmp_path / "x_train.tsv"
    flan.write_text("Is 2 even?\\nThink.\tyes\t2 = 2 * 1.\n", encoding="utf-8")
    assert detect_format(flan) == "flan-tsv"
    pool = load_examples(flan)
    assert (pool[0].prompt, pool[0].domain) == ("Is 2 even?\nThink.", "x")
    noext = write_jsonl(tmp_path / "pool.txt", ROWS)
    assert detect_format(noext) == "jsonl"
    assert detect_format(_as_parquet(tmp_path / "p.bin", ROWS)) == "parquet"
    (tmp_path / "arr.dat").write_text(json.dumps(ROWS), encoding="utf-8")
    assert detect_format(tmp_path / "arr.dat") == "json"
    (tmp_path / "notes.md").write_text("# hello\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_format(tmp_path / "notes.md")
    # format= overrides detection.
    assert _records(load_examples(noext, format="jsonl")) == _expected()
    assert load_examples(header_tsv, format="tsv").schema == "alpaca"
    with pytest.raises(DataError, match="unknown format"):
        load_examples(noext, format="xml")


def test_folder_of_files_uses_stems_as_domains(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    write_jsonl(folder / "b_math.jsonl", [{"prompt": "1+1", "response": "2"}])
    _as_csv(folder / "a_code_train.csv", [{"prompt": "def", "response": "f"}], ",")
    (folder / "README.md").write_text("ignored", encoding="utf-8")
    pool = load_examples(folder)
    assert pool.format == "dir"
    assert [e.domain for e in pool] == ["a_code", "b_math"]
    assert pool.schema == "prompt-response"


def test_bom_and_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    body = "\n".join(json.dumps(r) for r in ROWS[:2])
    path.write_bytes(b"\xef\xbb\xbf" + f"\n  \n{body}\r\n\n".encode())
    pool = load_examples(path)
    assert [e.line for e in pool] == [3, 4]
    assert _records(pool) == _expected()[:2]


def test_duplicate_rows_get_numbered_ids(tmp_path):
    row = {"prompt": "p", "response": "r"}
    pool = load_examples(write_jsonl(tmp_path / "d.jsonl", [row, row, row]))
    base = content_id("p", "r")
    assert pool.ids == (base, f"{base}#2", f"{base}#3")


def test_large_jsonl_loads_fast(tmp_path):
    path = tmp_path / "big.jsonl"
    line = '{{"instruction": "Task {0} do it", "input": "", "output": "Answer {0}"}}\n'
    path.write_text("".join(line.format(i) for i in range(100_000)), encoding="utf-8")
    start = time.perf_counter()
    pool = load_examples(path)
    elapsed = time.perf_counter() - start
    assert len(pool) == 100_000
    assert elapsed < 15, f"100k rows took {elapsed:.1f} s"


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    raises_data_error(tmp_path / "nope.jsonl", match="no such file")


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", \n', "utf-8")
    raises_data_error(path, line=2, match="malformed JSON")


def test_row_not_an_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n[1, 2]\n', encoding="utf-8")
    raises_data_error(path, line=2, match="is a JSON array, not an object")
    path = tmp_path / "bad.json"
    path.write_text('[{"prompt": "a", "response": "b"}, "x"]', encoding="utf-8")
    raises_data_error(path, line=2, match="is a JSON string, not an object")


def test_missing_field(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d"}],
    )
    err = raises_data_error(
        path, line=2, field="output", match="missing field 'output'"
    )
    assert "'instruction', 'input'" in str(err)  # the fields the row has
    assert "--prompt-field" in str(err)


@pytest.mark.parametrize("value", [5, ["a", "b"], None])
def test_wrong_type(tmp_path, value):
    path = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "a", "output": value}])
    raises_data_error(path, line=1, field="output")


def test_empty_prompt_and_response(tmp_path):
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [{"question": "q", "answer": "a"}, {"question": "q2", "answer": " \n\t"}],
    )
    raises_data_error(path, line=2, field="answer", match="response is empty")
    path = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "", "completion": "x"}])
    raises_data_error(path, line=1, field="prompt", match="prompt is empty")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.jsonl", ""),
        ("w.jsonl", "\n  \n"),
        ("e.json", "[]"),
        ("e.csv", ""),
        ("h.csv", "prompt,response\n"),
        ("e.tsv", ""),
    ],
)
def test_no_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    raises_data_error(path, match="the file has no rows")


def test_non_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = b'{"prompt": "a", "response": "b"}\n'
    path.write_bytes(good + b'{"prompt": "caf\xe9", "response": "b"}\n')
    err = raises_data_error(path, line=2, match="not valid UTF-8")
    offset = len(good) + len(b'{"prompt": "caf')
    assert f"byte offset {offset}" in str(err)
    assert "re-encode" in str(err)


def test_duplicate_explicit_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "ids.jsonl",
        [
            {"id": "a", "prompt": "p", "response": "r"},
            {"id": "b", "prompt": "p", "response": "r"},
            {"id": "a", "prompt": "x", "response": "y"},
        ],
    )
    err = raises_data_error(path, line=3, field="id", match="duplicate id 'a'")
    assert f"{path}:1" in str(err)  # names the other line too


def test_ids_are_strings_or_ints(tmp_path):
    row = {"id": [1], "prompt": "p", "response": "r"}
    path = write_jsonl(tmp_path / "ids.jsonl", [row])
    raises_data_error(path, line=1, field="id", match="string or an integer")


def test_over_long_row(tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "p", "response": "x" * 50}])
    raises_data_error(
        path,
        line=1,
        field="response",
        match="row is 51 characters; the limit is 50 (max_chars)",
        max_chars=50,
    )
    assert len(load_examples(path, max_chars=None)) == 1


def test_wrong_column_count(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,response\na,b\nc,d,e\n", encoding="utf-8")
    raises_data_error(path, line=3, match="the row has 3 columns; the header has 2")
    path = tmp_path / "bad_train.tsv"
    path.write_text("q one\ta\tr\nq two\ta\n", encoding="utf-8")
    raises_data_error(path, line=2, match="has 2 tab-separated columns")


def test_unrecognised_schema(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"foo": "a", "bar": "b"}])
    err = raises_data_error(path, line=1, match="unrecognised schema")
    assert "'foo', 'bar'" in str(err) and "--response-field" in str(err)


@pytest.mark.parametrize(
    "line",
    ["[" * 100_000, '{"prompt": ' + "9" * 5000 + ', "response": "r"}', "NaN"],
)
def test_json_that_python_cannot_parse(tmp_path, line):
    path = tmp_path / "odd.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    raises_data_error(path, line=1)


def test_domain_must_be_a_label(tmp_path):
    row = {"prompt": "p", "response": "r", "domain": ["x"]}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    raises_data_error(path, line=1, field="domain", match="must be a string label")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    raises_data_error(path, match="cannot read the Parquet file")


def test_input_is_not_modified(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    load_examples(path)
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


# --------------------------------------------------------------------------- fuzzing


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "prompt",
                    "response",
                    "id",
                    "domain",
                    "messages",
                    "role",
                    "content",
                    "instruction",
                    "output",
                    "input",
                    "question",
                    "answer",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)
_lines = st.lists(
    st.one_of(
        _json_values.map(json.dumps),
        st.text(max_size=20),
        st.just('{"prompt": "p", "response": "r"}'),
    ),
    max_size=6,
).map(lambda lines: "\n".join(lines).encode("utf-8"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200) | _lines)
def test_fuzz_jsonl_gives_a_set_or_a_data_error(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz.jsonl"
    path.write_bytes(data)
    try:
        pool = load_examples(path)
    except DataError:
        return
    assert isinstance(pool, ExampleSet) and len(pool) >= 1


# ----------------------------------------------------------------- on_invalid="skip"


def test_on_invalid_skip_leaves_out_bad_rows_with_one_warning(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "t0.jsonl",
        [
            {"prompt": "a", "completion": "x<|endoftext|>"},
            {"prompt": "b", "completion": "<|endoftext|>"},  # empty after stripping
            {"prompt": "c", "completion": "   "},
            {"prompt": "d", "completion": "y"},
        ],
    )
    with pytest.raises(DataError, match="response is empty") as err:
        load_examples(path)
    assert err.value.line == 2
    with caplog.at_level("WARNING", logger="harp.data.loaders"):
        pool = load_examples(path, on_invalid="skip")
    assert [e.prompt for e in pool] == ["a", "d"]
    assert [e.line for e in pool] == [1, 4]
    assert len(pool.rows) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "skipped 2 invalid row(s)" in warnings[0] and "t0.jsonl" in warnings[0]


def test_on_invalid_skip_counts_per_file_in_a_folder(tmp_path, caplog):
    folder = tmp_path / "d"
    folder.mkdir()
    write_jsonl(
        folder / "a.jsonl",
        [{"prompt": "p", "response": ""}] * 3 + [{"prompt": "q", "response": "r"}],
    )
    write_jsonl(folder / "b.jsonl", [{"prompt": "s", "response": "t"}])
    with caplog.at_level("WARNING", logger="harp.data.loaders"):
        pool = load_examples(folder, on_invalid="skip")
    assert len(pool) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "a.jsonl: skipped 3 invalid" in warnings[0]


def test_on_invalid_skip_keeps_file_level_errors(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(DataError, match="malformed JSON"):
        load_examples(bad_json, on_invalid="skip")
    all_bad = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "a", "response": ""}])
    with pytest.raises(DataError, match="no rows"):
        load_examples(all_bad, on_invalid="skip")
    with pytest.raises(Exception, match="on_invalid='ignore' is not allowed"):
        load_examples(all_bad, on_invalid="ignore")


def test_on_invalid_default_is_unchanged_and_ids_stay_stable(tmp_path):
    rows = [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": "y"}]
    path = write_jsonl(tmp_path / "ok.jsonl", rows)
    assert load_examples(path).ids == load_examples(path, on_invalid="skip").ids


@needs_shared
def test_on_invalid_skip_on_t0_templates_with_empty_completions(caplog):
    # Some T0 templates (trec_*) have only empty completions: with "skip" they are
    # counted in one warning, then refused as having no rows.
    file = shared("t0_train_50k/data_per_template/trec_trec1.jsonl")
    with pytest.raises(DataError, match="response is empty"):
        load_examples(file)
    n_lines = sum(1 for line in file.read_text().splitlines() if line.strip())
    with caplog.at_level("WARNING", logger="harp.data.loaders"):
        with pytest.raises(DataError, match="no rows"):
            load_examples(file, on_invalid="skip")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"skipped {n_lines} invalid" in warnings[0]
    good = shared("t0_train_50k/data_per_template/trec_trec1.jsonl").with_name(
        "ag_news_classify.jsonl"
    )
    if good.exists():
        assert len(load_examples(good, on_invalid="skip")) == len(load_examples(good))
