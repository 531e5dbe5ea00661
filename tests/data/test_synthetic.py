"""The skills suite: sizes, ground truth, determinism, and that the truth is hidden."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harp.core.errors import ParameterError
from harp.data import load_examples
from harp.data.synthetic import HARMFUL_KINDS, TASKS, make_skills_suite


@pytest.fixture(scope="module")
def suite():
    return make_skills_suite(n_pool=400, n_target_per_domain=40, n_pretrain=300, seed=3)


def test_sizes_and_domains(suite):
    assert len(suite.pool) == 400
    assert suite.target.domains == ("cipher", "count", "shift")
    assert all(len(v) == 40 for v in suite.target.by_domain().values())
    assert len(suite.pretrain) == 300
    assert len(suite.truth) == len(suite.pool)


def test_kind_shares_follow_the_fractions(suite):
    kinds = suite.kinds
    assert np.sum(kinds == "helpful") == 140
    assert np.sum(kinds == "wrong-answer") == 48
    assert np.sum(kinds == "wrong-format") == 32
    assert np.sum(kinds == "near-duplicate") == 40
    assert np.sum(kinds == "off-target") == 140
    assert suite.harmful_mask.sum() == 80


def test_rows_are_right_or_wrong_as_labelled(suite):
    """Helpful rows follow their task's rule; every wrong answer breaks it."""
    regenerate = {
        "cipher": lambda w: "".join(
            "qwertyuiopasdfghjklzxcvbnm"[ord(c) - 97] for c in w
        ),
        "shift": lambda w: "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in w),
        "count": lambda w: str(w.count("a")),
        "sort": lambda w: "".join(sorted(w)),
    }
    for ex, truth in zip(suite.pool, suite.truth):
        if truth["task"] not in regenerate:
            continue
        payload = ex.prompt.split(": ", 1)[1].strip()
        right = regenerate[truth["task"]](payload)
        if truth["kind"] in ("helpful", "near-duplicate"):
            assert ex.response == right, (ex, truth)
        elif truth["kind"] in HARMFUL_KINDS:
            assert ex.response != right, (ex, truth)


def test_target_prompts_never_leak_into_pool_or_pretraining(suite):
    target_prompts = {e.prompt for e in suite.target}
    assert not target_prompts & {e.prompt for e in suite.pool}
    assert not target_prompts & {e.prompt for e in suite.pretrain}


def test_pool_rows_do_not_carry_the_truth(suite):
    for row in suite.pool.rows:
        assert set(row) == {"prompt", "response"}


def test_same_seed_same_suite_other_seed_other_suite():
    a = make_skills_suite(n_pool=200, n_target_per_domain=10, n_pretrain=50, seed=0)
    b = make_skills_suite(n_pool=200, n_target_per_domain=10, n_pretrain=50, seed=0)
    c = make_skills_suite(n_pool=200, n_target_per_domain=10, n_pretrain=50, seed=1)
    assert a.pool.content_hash() == b.pool.content_hash()
    assert a.truth == b.truth
    assert a.pool.content_hash() != c.pool.content_hash()


def test_target_does_not_depend_on_pool_size():
    a = make_skills_suite(n_pool=200, n_target_per_domain=10, n_pretrain=50)
    b = make_skills_suite(n_pool=900, n_target_per_domain=10, n_pretrain=50)
    assert a.target.content_hash() == b.target.content_hash()


def test_save_writes_loadable_files(suite, tmp_path):
    paths = suite.save(tmp_path)
    pool = load_examples(paths["pool"])
    target = load_examples(paths["target"])
    assert pool.ids == suite.pool.ids
    assert target.domains == suite.target.domains
    truth = json.loads(paths["truth"].read_text())
    assert [r["id"] for r in truth["rows"]] == list(pool.ids)
    assert truth["params"]["seed"] == 3


def test_kind_fractions(suite):
    harmful = np.flatnonzero(suite.harmful_mask)
    fr = suite.kind_fractions(harmful)
    assert fr["wrong-answer"] + fr["wrong-format"] == pytest.approx(1.0)
    assert suite.kind_fractions([])["helpful"] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_tasks=("nope",)), "unknown task(s) nope"),
        (dict(target_tasks=("copy",)), "both a target task and an off-target task"),
        (
            dict(helpful_fraction=0.9, wrong_answer_fraction=0.2),
            "add up to more than 1",
        ),
        (dict(wrong_format_fraction=-0.1), "must be in [0, 1]"),
        (dict(n_pool=0), "n_pool must be at least 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ParameterError, match=None) as info:
        make_skills_suite(**kwargs)
    assert message in str(info.value)


def test_every_task_makes_distinct_examples():
    rng = np.random.default_rng(0)
    for name, task in TASKS.items():
        prompts = {task.make(rng)[0] for _ in range(50)}
        assert len(prompts) > 10, name
