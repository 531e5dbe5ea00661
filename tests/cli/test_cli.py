"""The command line: help texts, select end to end, config files, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from harp.app.cli import app

runner = CliRunner()


def _pool(tmp_path, n=40):
    path = tmp_path / "pool.jsonl"
    rows = [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)}
        if i % 2
        else {
            "instruction": f"Name colour number {i}.",
            "input": "",
            "output": f"blue {i}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _target(tmp_path):
    path = tmp_path / "target.jsonl"
    rows = [
        {"prompt": f"Add {i} and 3.", "response": str(i + 3), "domain": "math"}
        for i in range(5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "command", [[], ["select"], ["evaluate"], ["demo"], ["methods"]]
)
def test_help_of_every_subcommand(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def _commands():
    import typer.main

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_shows_square_brackets_and_wraps_whole_paragraphs(name):
    """rich read "harp-select[report]" as markup and printed "harp-select"; and a
    docstring's own line breaks, kept by typer, left one-word lines at 80 columns."""
    import re

    command = _commands()[name]
    raw = [command.callback.__doc__ or ""] + [p.help or "" for p in command.params]
    wide = runner.invoke(app, [name, "--help"], terminal_width=200).output
    for text in raw:
        for extra in re.findall(r"[\w.-]+\[[\w,-]+\]", text):
            assert extra in wide, extra
    narrow = runner.invoke(
        app, [name, "--help"], terminal_width=80, env={"COLUMNS": "80"}
    ).output
    about = narrow.split("Usage", 1)[1].split("\u256d", 1)[0]  # to the first panel
    paragraphs = [p.splitlines() for p in re.split(r"\n\s*\n", about)]
    for lines in paragraphs[1:]:
        lines = [line.strip() for line in lines if line.strip()]
        assert all(len(line) >= 60 for line in lines[:-1]), lines


def test_console_script_help_is_fast_and_imports_no_torch():
    code = (
        "import sys; from harp.app.cli import app; "
        "assert 'torch' not in sys.modules, 'torch imported by the CLI module'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "harp", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "select" in out.stdout


def test_select_writes_rows_in_pool_format_and_sidecar(tmp_path):
    pool, target = _pool(tmp_path), _target(tmp_path)
    out = tmp_path / "subset.jsonl"
    result = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(pool),
            "--target",
            str(target),
            "--method",
            "dsir",
            "--budget",
            "25%",
            "--seed",
            "0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10
    assert set(rows[0]) == {"instruction", "input", "output"}  # the pool's own schema
    meta = json.loads((tmp_path / "subset.jsonl.meta.json").read_text())
    assert meta["method"] == "dsir" and meta["seed"] == 0 and meta["budget"] == 10
    assert len(meta["indices"]) == 10 and len(meta["scores"]) == 40
    assert meta["environment"]["versions"]["harp-select"]
    assert meta["config"]["budget"] == "25%"
    assert meta["cost"]["wall_seconds"] >= 0
    pool_lines = pool.read_text().splitlines()
    assert [json.loads(pool_lines[i]) for i in meta["indices"]] == rows


def test_same_seed_gives_byte_identical_outputs(tmp_path):
    pool, target = _pool(tmp_path), _target(tmp_path)
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        out = tmp_path / name
        result = runner.invoke(
            app,
            [
                "select",
                "--pool",
                str(pool),
                "--target",
                str(target),
                "--method",
                "random",
                "--budget",
                "7",
                "--seed",
                "5",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_config_file_supplies_flags_and_cli_wins(tmp_path):
    pool = _pool(tmp_path)
    cfg = tmp_path / "select.yaml"
    cfg.write_text(
        f"pool: {pool}\nmethod: random\nbudget: 5\nseed: 2\n"
        f"out: {tmp_path / 'c.jsonl'}\n"
    )
    result = runner.invoke(app, ["select", "--config", str(cfg), "--budget", "3"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "c.jsonl.meta.json").read_text())
    assert meta["budget"] == 3 and meta["seed"] == 2


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("seed: abc", "key 'seed': Input should be a valid integer"),
        ("workers: 1.5", "key 'workers'"),
        ("budget: [1, 2]", "key 'budget' takes one value, not a YAML list"),
        ("method: {a: 1}", "key 'method' takes one value, not a YAML mapping"),
    ],
)
def test_config_value_of_the_wrong_type_names_the_file_and_key(
    tmp_path, text, fragment
):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"pool: x.jsonl\n{text}\n")
    result = runner.invoke(app, ["select", "--config", str(cfg)])
    assert result.exit_code == 2
    flat = " ".join(result.output.replace("│", " ").split())
    assert "bad.yaml" in flat and fragment in flat, flat


def test_config_param_may_be_a_mapping(tmp_path):
    pool = _pool(tmp_path)
    target = tmp_path / "target.jsonl"
    target.write_text("".join(pool.read_text().splitlines(True)[:5]))
    out = tmp_path / "o.jsonl"
    cfg = tmp_path / "select.yaml"
    cfg.write_text(
        f"pool: {pool}\ntarget: {target}\nmethod: dsir\nbudget: 4\n"
        f"param: {{num_buckets: 512}}\nout: {out}\n"
    )
    result = runner.invoke(app, ["select", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "o.jsonl.meta.json").read_text())
    assert meta["params"]["num_buckets"] == 512


def test_config_file_unknown_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("pool: x.jsonl\nbugdet: 5\n")
    result = runner.invoke(app, ["select", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "unknown key 'bugdet'" in result.output


@pytest.mark.parametrize(
    "budget, message",
    [
        ("0", "must be at least 1 row"),
        ("-3", "must be at least 1 row"),
        ("10%%", "cannot be read"),
        ("abc", "cannot be read"),
        ("41", "larger than the pool (40 rows)"),
    ],
)
def test_bad_budget_is_one_clean_line_and_no_output(tmp_path, budget, message):
    pool = _pool(tmp_path)
    out = tmp_path / "o.jsonl"
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--budget", budget, "--out", str(out)]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "o.jsonl.meta.json").exists()


def test_unknown_method_lists_the_available_ones(tmp_path):
    result = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(_pool(tmp_path)),
            "--method",
            "magic",
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert result.exit_code == 2
    assert "unknown method 'magic'" in result.output and "random" in result.output


def test_malformed_pool_names_file_and_line(tmp_path):
    pool = tmp_path / "bad.jsonl"
    pool.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", \n')
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output


def test_a_line_number_like_an_emoji_code_prints_verbatim(tmp_path):
    # rich reads ":100:" as the emoji code for 💯; harp's messages are not markup.
    pool = tmp_path / "p.jsonl"
    good = '{"prompt": "a", "response": "b"}\n'
    pool.write_text(good * 99 + '{"prompt": "c", \n')
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2
    assert "p.jsonl:100:" in result.output and "\U0001f4af" not in result.output


def test_an_error_quoting_square_brackets_prints_them(tmp_path):
    pool = _pool(tmp_path)
    result = runner.invoke(
        app,
        ["select", "--pool", str(pool), "--out", str(tmp_path / "o.jsonl")]
        + ["--method", "random", "--budget", "5", "--param", "foo[bar]"],
    )
    assert result.exit_code == 2
    assert "--param 'foo[bar]': expected KEY=VALUE" in result.output


def test_existing_output_needs_force_and_input_is_never_overwritten(tmp_path):
    pool = _pool(tmp_path)
    before = pool.read_bytes()
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    args = ["select", "--pool", str(pool), "--budget", "3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_text() == "keep me\n"
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--out", str(pool), "--force"]
    )
    assert result.exit_code == 2 and "input" in result.output
    assert pool.read_bytes() == before


def test_method_param_passthrough_and_unknown_param(tmp_path):
    pool, target = _pool(tmp_path), _target(tmp_path)
    ok = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(pool),
            "--target",
            str(target),
            "--method",
            "similarity",
            "-p",
            "encoder=tfidf",
            "--budget",
            "4",
            "--out",
            str(tmp_path / "s.jsonl"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    # The bare name reached the features component; the sidecar says so.
    assert meta["params"]["features__encoder"] == "tfidf"
    assert meta["params"]["features"] == "TextFeatures"
    assert meta["config"]["context"]["device"] == "cpu"
    assert meta["cost"]["device"] == "cpu"
    bad = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(pool),
            "-p",
            "nonsense=1",
            "--out",
            str(tmp_path / "t.jsonl"),
        ],
    )
    assert bad.exit_code == 2 and "no parameter 'nonsense'" in bad.output


def test_methods_lists_the_baselines():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ("random", "similarity", "cluster", "dsir"):
        assert name in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["select", "--pool", "POOL", "--out", "OUT", "--device", "cuda"],
        ["evaluate", "--model", "MODEL", "--target", "POOL", "--device", "cuda"],
        ["features", "--data", "POOL", "--out", "OUT", "--device", "cuda:0"],
        ["warmup", "--pool", "POOL", "--out", "OUT", "--device", "cuda"],
        ["bench", "--out", "OUT", "--device", "cuda"],
        ["demo", "--size", "tiny", "--out", "OUT", "--device", "cuda"],
    ],
    ids=["select", "evaluate", "features", "warmup", "bench", "demo"],
)
def test_device_cuda_without_a_gpu_is_one_clear_line(command, tmp_path, tiny_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    pool = _pool(tmp_path)
    args = [
        {"POOL": str(pool), "OUT": str(tmp_path / "out"), "MODEL": str(tiny_dir)}.get(
            a, a
        )
        for a in command
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "no CUDA device is available" in result.output
    assert "--device cpu" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_device_and_dtype_flags_are_checked(tmp_path):
    pool = _pool(tmp_path)
    out = tmp_path / "s.jsonl"
    bad = runner.invoke(
        app, ["select", "--pool", str(pool), "--out", str(out), "--device", "tpu"]
    )
    assert bad.exit_code == 2 and "device='tpu' is not allowed" in bad.output
    bad = runner.invoke(
        app, ["select", "--pool", str(pool), "--out", str(out), "--dtype", "fp8"]
    )
    assert bad.exit_code == 2 and "dtype='fp8' is not allowed" in bad.output
    ok = runner.invoke(
        app,
        ["select", "--pool", str(pool), "--out", str(out), "--device", "cpu"],
    )
    assert ok.exit_code == 0, ok.output
    assert "on cpu" in ok.output


@pytest.mark.parametrize(
    "kind, flags, named",
    [
        ("gradients", ["--encoder", "tfidf"], "--encoder only applies to --kind emb"),
        ("embeddings", ["--dim", "64"], "--dim only applies to --kind gradients"),
        (
            "embeddings",
            ["--model", "proxy", "--max-length", "64"],
            "--model, --max-length only apply to --kind gradients; drop them",
        ),
    ],
)
def test_features_refuses_a_flag_of_the_other_kind(tmp_path, kind, flags, named):
    pool = _pool(tmp_path)
    out = tmp_path / "store"
    args = ["features", "--data", str(pool), "--out", str(out), "--kind", kind]
    result = runner.invoke(app, [*args, *flags])
    assert result.exit_code == 2, result.output
    assert named in " ".join(result.output.split())
    assert not out.exists()
