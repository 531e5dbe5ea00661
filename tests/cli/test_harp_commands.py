"""`harp select --method harp-c --evals N` and `harp inspect` on a tiny model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harp.app.cli import app
from harp.data.synthetic import make_skills_suite

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    suite = make_skills_suite(n_pool=120, n_target_per_domain=5, n_pretrain=10)
    return suite.save(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def harp_run(files, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sub.jsonl"
    result = runner.invoke(
        app,
        [
            "select",
            "--method",
            "harp-e",
            "--pool",
            str(files["pool"]),
            "--target",
            str(files["target"]),
            "--model",
            str(tiny_dir),
            "--budget",
            "40",
            "--evals",
            "4",
            "--out",
            str(out),
            *("-p", "encoder=tfidf", "-p", "leaf_size=10", "-p", "train_steps=2"),
            *("-p", "bootstrap=10", "--cache-dir", str(out.parent / "cache")),
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_select_writes_the_tree_into_the_sidecar(harp_run):
    meta = json.loads(harp_run.with_name("sub.jsonl.meta.json").read_text())
    diag = meta["diagnostics"]
    assert diag["kind"] == "harp" and diag["method"] == "harp-e"
    # 6 calls: 4 leaves (--evals 4), two of them again (training noise).
    assert sum(x["measured"] for x in diag["leaves"]) == 4
    assert len(diag["oracle"]["replicated_leaves"]) == 2
    assert meta["cost"]["train_eval_calls"] == 6
    chosen_rows = sum(x["size"] for x in diag["leaves"] if x["chosen"])
    assert len(meta["indices"]) == min(40, chosen_rows)


def test_inspect_shows_every_leaf(harp_run):
    result = runner.invoke(app, ["inspect", str(harp_run)])
    assert result.exit_code == 0, result.output
    meta = json.loads(harp_run.with_name("sub.jsonl.meta.json").read_text())
    n_leaves = len(meta["diagnostics"]["leaves"])
    assert result.output.count(" leaf ") == n_leaves
    assert result.output.count("  measured ") == 4
    assert "training noise sd per domain" in result.output
    # Every leaf shows its median target-fit loss (the default weight is on).
    assert result.output.count("  fit ") == n_leaves
    assert "harp-e:" in result.output and "best prefix" in result.output
    # The sidecar itself and --json work too.
    raw = runner.invoke(app, ["inspect", str(harp_run) + ".meta.json", "--json"])
    assert raw.exit_code == 0
    assert json.loads(raw.output)["kind"] == "harp"


def test_inspect_of_a_missing_or_non_harp_run_is_one_clean_line(files, tmp_path):
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2
    assert "no such run" in missing.output and "Traceback" not in missing.output
    out = tmp_path / "random.jsonl"
    ok = runner.invoke(
        app,
        ["select", "--pool", str(files["pool"]), "--out", str(out), "--budget", "5"],
    )
    assert ok.exit_code == 0, ok.output
    other = runner.invoke(app, ["inspect", str(out)])
    assert other.exit_code == 2
    assert "holds no HARP tree" in other.output


def test_evals_on_a_method_without_calls_is_refused(files, tmp_path):
    result = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(files["pool"]),
            "--out",
            str(tmp_path / "x.jsonl"),
            "--evals",
            "5",
        ],
    )
    assert result.exit_code == 2
    assert "makes no train-evaluate calls" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_select_spice_online_schedule_from_the_cli(files, tiny_dir, tmp_path):
    out = tmp_path / "spice.jsonl"
    result = runner.invoke(
        app,
        [
            "select",
            "--method",
            "spice",
            "--schedule",
            "online",
            "--pool",
            str(files["pool"]),
            "--model",
            str(tiny_dir),
            "--budget",
            "12",
            "--out",
            str(out),
            *("-p", "dim=32", "-p", "pool_size=20", "-p", "picks_per_pool=4"),
            *("-p", "train_every=1", "-p", "warmup_epochs=1.0"),
            *("--cache-dir", str(tmp_path / "cache")),
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_name("spice.jsonl.meta.json").read_text())
    assert len(meta["ids"]) == 12 and meta["params"]["schedule"] == "online"
    assert meta["diagnostics"]["kind"] == "logdet"
    assert len(meta["diagnostics"]["gains"]) == 12
    bad = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(files["pool"]),
            "--out",
            str(tmp_path / "r.jsonl"),
            "--schedule",
            "online",
        ],
    )
    assert bad.exit_code == 2 and "has no schedule" in bad.output


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(leaves="not a list"),
        lambda d: d.update(leaves=[1, 2]),
    ],
    ids=["leaves-a-string", "leaves-of-integers"],
)
def test_inspect_of_hand_edited_diagnostics_is_one_clean_line(harp_run, damage):
    meta_path = harp_run.with_name(harp_run.name + ".meta.json")
    meta = json.loads(meta_path.read_text())
    damage(meta["diagnostics"])
    edited = harp_run.with_name("edited.jsonl")
    edited.write_bytes(harp_run.read_bytes())
    edited.with_name("edited.jsonl.meta.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["inspect", str(edited)])
    assert result.exit_code == 2, result.output
    assert "malformed" in result.output and "Traceback" not in result.output


def test_bench_refuses_a_bad_method_value_before_any_work(tmp_path, monkeypatch):
    from harp.bench import harness

    def no_work(*args, **kwargs):
        raise AssertionError("the suite was prepared before the values were checked")

    monkeypatch.setattr(harness, "prepare_suite", no_work)
    result = runner.invoke(
        app,
        ["bench", "--methods", "random,harp-c", "--evals", "-3", "--size", "40"]
        + ["--out", str(tmp_path / "b")],
    )
    assert result.exit_code == 2, result.output
    assert "evals=-3 is not allowed" in result.output


def test_bench_model_path_is_relative_to_where_the_user_is(
    tmp_path, tiny_dir, monkeypatch
):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        ["bench", "--model", "mymodel", "--methods", "random", "--budgets", "5"]
        + ["--seeds", "0", "--size", "40", "--target-rows", "3", "--out", "b"],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "b" / "bench-config.json").read_text())
    assert str(tmp_path / "mymodel") in json.dumps(config)
