"""The synthetic skills suite: a pool where we know which rows help and which hurt.

Several short string/arithmetic tasks that a character-level proxy model learns in
minutes on a CPU. Each task is a domain. The pool mixes

* ``helpful`` rows: correct examples of a target task;
* ``off-target`` rows: correct examples of tasks the target does not ask for (they cost
  budget and can interfere);
* ``wrong-answer`` rows: a target task's prompt with a *systematically* wrong answer
  (another cipher key, a shift by two, a count off by one) — they teach the wrong rule;
* ``wrong-format`` rows: the right answer wrapped in an off-format output, which breaks
  exact match;
* ``near-duplicate`` rows: copies of helpful rows differing only in whitespace/case of
  the instruction — they add nothing new.

The ground truth (kind and task of every pool row) lives in :attr:`SkillsSuite.truth`,
never in the pool rows themselves, so a selector cannot read it.

The base model is pretrained on :attr:`SkillsSuite.pretrain`: a few easy tasks (copy,
upper-case, double) that teach it the prompt format and to read the payload, and none
of the target tasks by default. Measured with the default proxy (0.86M parameters,
1,000 pretraining steps, LoRA r=16 for 150 steps): the base scores 0.00 exact match on
every target domain; 200 helpful rows lift the average to about 0.45, while 140
helpful rows plus 60 harmful ones reach only about 0.12 and 200 random rows about 0.19.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.errors import ParameterError
from harp.core.io import atomic_write_json, atomic_write_text
from harp.core.records import ExampleSet

__all__ = [
    "HARMFUL_KINDS",
    "KINDS",
    "SkillsSuite",
    "TASKS",
    "Task",
    "make_skills_suite",
]

LETTERS = string.ascii_lowercase
KINDS = ("helpful", "off-target", "wrong-answer", "wrong-format", "near-duplicate")
HARMFUL_KINDS = ("wrong-answer", "wrong-format")

# A fixed substitution key: the cipher task is the same for every seed (it is a skill,
# not noise). The "wrong" key is a different fixed permutation.
_CIPHER_KEY = dict(zip(LETTERS, "qwertyuiopasdfghjklzxcvbnm"))
_WRONG_CIPHER_KEY = dict(zip(LETTERS, "mnbvcxzlkjhgfdsapoiuytrewq"))


def _word(
    rng: np.random.Generator, low: int, high: int, alphabet: str = LETTERS
) -> str:
    n = int(rng.integers(low, high + 1))
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=n))


def _shift(word: str, k: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % 26] for c in word)


@dataclass(frozen=True)
class Task:
    """One skill: how to make a correct example and how to get it systematically wrong.

    Attributes
    ----------
    name : str
        Task (domain) name.
    make : callable
        ``make(rng) -> (prompt, answer)``: a fresh correct example.
    corrupt : callable
        ``corrupt(rng, prompt, answer) -> wrong answer`` following a wrong rule.
    """

    name: str
    make: Callable[[np.random.Generator], tuple[str, str]]
    corrupt: Callable[[np.random.Generator, str, str], str]


def _payload(prompt: str) -> str:
    return prompt.split(": ", 1)[1]


def _make_cipher(rng):
    w = _word(rng, 3, 5)
    return f"encode: {w}", "".join(_CIPHER_KEY[c] for c in w)


def _make_shift(rng):
    w = _word(rng, 3, 5)
    return f"shift: {w}", _shift(w, 1)


def _make_count(rng):
    w = _word(rng, 4, 8, "abc")
    return f"count a: {w}", str(w.count("a"))


def _make_sort(rng):
    w = _word(rng, 3, 4)
    return f"sort: {w}", "".join(sorted(w))


def _make_add(rng):
    a, b = (int(x) for x in rng.integers(0, 10, size=2))
    return f"add: {a}+{b}", str(a + b)


def _make_lookup(rng):
    keys = rng.choice(list("abcdefgh"), size=3, replace=False)
    vals = rng.integers(0, 10, size=3)
    q = int(rng.integers(0, 3))
    pairs = ",".join(f"{k}={v}" for k, v in zip(keys, vals))
    return f"find {keys[q]}: {pairs}", str(int(vals[q]))


def _make_copy(rng):
    w = _word(rng, 3, 6)
    return f"copy: {w}", w


def _make_upper(rng):
    w = _word(rng, 3, 6)
    return f"upper: {w}", w.upper()


def _make_reverse(rng):
    w = _word(rng, 3, 4)
    return f"reverse: {w}", w[::-1]


def _make_double(rng):
    w = _word(rng, 2, 4)
    return f"double: {w}", w + w


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "cipher",
            _make_cipher,
            lambda rng, p, a: "".join(_WRONG_CIPHER_KEY[c] for c in _payload(p)),
        ),
        Task("shift", _make_shift, lambda rng, p, a: _shift(_payload(p), 2)),
        Task("count", _make_count, lambda rng, p, a: str((int(a) + 1) % 10)),
        Task("sort", _make_sort, lambda rng, p, a: "".join(sorted(a, reverse=True))),
        Task("add", _make_add, lambda rng, p, a: str(int(a) + 1)),
        Task("lookup", _make_lookup, lambda rng, p, a: str((int(a) + 3) % 10)),
        Task("copy", _make_copy, lambda rng, p, a: a[::-1]),
        Task("upper", _make_upper, lambda rng, p, a: a.lower()),
        Task("reverse", _make_reverse, lambda rng, p, a: a),
        Task("double", _make_double, lambda rng, p, a: a[: len(a) // 2]),
    ]
}

# Off-format wrappers: the right content, in an output the target does not accept.
_WRONG_FORMATS: tuple[Callable[[str], str], ...] = (
    lambda a: f"answer is {a}!",
    lambda a: f"{a} {a}",
    lambda a: f"<{a}>",
    lambda a: " ".join(a),
)


@dataclass(frozen=True)
class SkillsSuite:
    """A generated pool, target and pretraining corpus with the ground truth.

    Attributes
    ----------
    pool : ExampleSet
        Candidate rows (``prompt``, ``response`` only — no labels).
    target : ExampleSet
        Evaluation rows of the target tasks, ``domain`` = task name.
    pretrain : ExampleSet
        Corpus the base proxy model is pretrained on.
    truth : tuple of dict
        Per pool row (pool order): ``{"id", "kind", "task"}``.
    params : dict
        The generator's arguments (for the metadata sidecar).
    """

    pool: ExampleSet
    target: ExampleSet
    pretrain: ExampleSet
    truth: tuple[dict[str, str], ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> np.ndarray:
        """Kind of every pool row, as an array of str."""
        return np.array([t["kind"] for t in self.truth])

    @property
    def tasks(self) -> np.ndarray:
        """Task of every pool row, as an array of str."""
        return np.array([t["task"] for t in self.truth])

    @property
    def harmful_mask(self) -> np.ndarray:
        """True for pool rows that teach a wrong rule or format."""
        return np.isin(self.kinds, HARMFUL_KINDS)

    def kind_fractions(self, indices: Sequence[int]) -> dict[str, float]:
        """Share of each kind among the pool rows at ``indices`` (0.0 if absent)."""
        idx = np.asarray(indices, dtype=np.int64)
        kinds = self.kinds[idx] if len(idx) else np.array([], dtype=str)
        n = max(len(idx), 1)
        return {k: float(np.sum(kinds == k)) / n for k in KINDS}

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``pool``, ``target``, ``pretrain`` (``.jsonl``) and ``truth.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("pool", "target", "pretrain"):
            rows = getattr(self, name).rows
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            paths[name] = directory / f"{name}.jsonl"
            atomic_write_text(paths[name], text)
        paths["truth"] = directory / "truth.json"
        atomic_write_json(
            paths["truth"], {"params": self.params, "rows": list(self.truth)}
        )
        return paths


def _check_tasks(names: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ParameterError(
            f"{what}: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}"
        )
    return names


def make_skills_suite(
    *,
    n_pool: int = 2000,
    target_tasks: Sequence[str] = ("cipher", "shift", "count"),
    off_target_tasks: Sequence[str] = (
        "copy",
        "upper",
        "double",
        "reverse",
        "sort",
        "add",
    ),
    pretrain_tasks: Sequence[str] = ("copy", "upper", "double"),
    n_target_per_domain: int = 200,
    helpful_fraction: float = 0.35,
    wrong_answer_fraction: float = 0.12,
    wrong_format_fraction: float = 0.08,
    near_duplicate_fraction: float = 0.10,
    n_pretrain: int = 6000,
    pretrain_target_share: float = 0.0,
    seed: int = 0,
) -> SkillsSuite:
    """Generate the skills suite.

    Parameters
    ----------
    n_pool : int, default=2000
        Pool rows.
    target_tasks : sequence of str, default=("cipher", "shift", "count")
        Tasks the target asks for; each is one target domain.
    off_target_tasks : sequence of str
        Tasks whose rows fill the rest of the pool.
    pretrain_tasks : sequence of str, default=("copy", "upper", "double")
        Tasks of the base model's pretraining corpus. Keep it to about three tasks of
        the same shape: the 0.86M proxy learns no task of a larger mixture in 1,000
        steps.
    n_target_per_domain : int, default=200
        Target rows per domain (a few hundred keep evaluation noise to a few points).
    helpful_fraction, wrong_answer_fraction : float
        Shares of the pool (see the module docstring for the kinds).
    wrong_format_fraction, near_duplicate_fraction : float
        Shares of the pool; the rest is off-target.
    n_pretrain : int, default=6000
        Rows of the base model's pretraining corpus.
    pretrain_target_share : float, default=0.0
        Share of the pretraining corpus drawn from the target tasks (0: the base never
        sees them, so every gain comes from the finetuning data).
    seed : int, default=0
        Seed; the same arguments give the same suite byte for byte.

    Returns
    -------
    SkillsSuite

    Examples
    --------
    >>> suite = make_skills_suite(n_pool=100, n_target_per_domain=5, n_pretrain=50)
    >>> len(suite.pool), suite.target.domains
    (100, ('cipher', 'count', 'shift'))
    >>> sorted(set(suite.kinds)) == sorted(
    ...     ["helpful", "off-target", "wrong-answer", "wrong-format", "near-duplicate"])
    True
    """
    target_tasks = _check_tasks(target_tasks, "target_tasks")
    off_target_tasks = _check_tasks(off_target_tasks, "off_target_tasks")
    pretrain_tasks = _check_tasks(pretrain_tasks, "pretrain_tasks")
    if not pretrain_tasks and pretrain_target_share < 1:
        raise ParameterError("pretrain_tasks is empty; give at least one task")
    if not target_tasks:
        raise ParameterError("target_tasks: give at least one task")
    if set(target_tasks) & set(off_target_tasks):
        raise ParameterError(
            "a task cannot be both a target task and an off-target task"
        )
    fractions = {
        "helpful": helpful_fraction,
        "wrong-answer": wrong_answer_fraction,
        "wrong-format": wrong_format_fraction,
        "near-duplicate": near_duplicate_fraction,
    }
    for name, value in fractions.items():
        if not 0 <= value <= 1:
            raise ParameterError(f"{name} fraction must be in [0, 1], got {value!r}")
    if sum(fractions.values()) > 1 + 1e-9:
        raise ParameterError("the kind fractions add up to more than 1")
    if not off_target_tasks and sum(fractions.values()) < 1 - 1e-9:
        raise ParameterError(
            "off_target_tasks is empty but the fractions leave room for it"
        )
    for name, value in (
        ("n_pool", n_pool),
        ("n_target_per_domain", n_target_per_domain),
    ):
        if value < 1:
            raise ParameterError(f"{name} must be at least 1, got {value!r}")
    params = {
        "n_pool": n_pool,
        "target_tasks": list(target_tasks),
        "off_target_tasks": list(off_target_tasks),
        "pretrain_tasks": list(pretrain_tasks),
        "n_target_per_domain": n_target_per_domain,
        **{f"{k.replace('-', '_')}_fraction": v for k, v in fractions.items()},
        "n_pretrain": n_pretrain,
        "pretrain_target_share": pretrain_target_share,
        "seed": seed,
    }

    # Independent streams, so changing the pool size does not change the target rows.
    pool_rng, target_rng, pretrain_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )

    # The target is drawn first and its prompts are kept out of pool and pretraining,
    # so that no method is rewarded for finding exact copies of the test items.
    target_rows: list[dict[str, Any]] = []
    held_out: set[str] = set()
    for task in target_tasks:
        seen: set[str] = set()
        for _ in range(100 * n_target_per_domain):
            if len(seen) == n_target_per_domain:
                break
            prompt, answer = TASKS[task].make(target_rng)
            if prompt not in seen:
                seen.add(prompt)
                target_rows.append(
                    {"prompt": prompt, "response": answer, "domain": task}
                )
        held_out |= seen

    def fresh(task: str, rng: np.random.Generator) -> tuple[str, str]:
        for _ in range(50):
            prompt, answer = TASKS[task].make(rng)
            if prompt not in held_out:
                return prompt, answer
        return (
            prompt,
            answer,
        )  # tiny task spaces (add): allow overlap, don't loop forever

    counts = {k: int(round(v * n_pool)) for k, v in fractions.items()}
    counts["off-target"] = n_pool - sum(counts.values())
    if counts["off-target"] < 0:
        counts["helpful"] += counts["off-target"]
        counts["off-target"] = 0

    rows: list[tuple[dict[str, Any], dict[str, str]]] = []
    helpful: list[tuple[str, str, str]] = []
    for i in range(counts["helpful"]):
        task = target_tasks[i % len(target_tasks)]
        prompt, answer = fresh(task, pool_rng)
        helpful.append((task, prompt, answer))
        rows.append(
            ({"prompt": prompt, "response": answer}, {"kind": "helpful", "task": task})
        )
    for i in range(counts["off-target"]):
        task = off_target_tasks[i % len(off_target_tasks)]
        prompt, answer = fresh(task, pool_rng)
        rows.append(
            (
                {"prompt": prompt, "response": answer},
                {"kind": "off-target", "task": task},
            )
        )
    for i in range(counts["wrong-answer"]):
        task = target_tasks[i % len(target_tasks)]
        prompt, answer = fresh(task, pool_rng)
        wrong = TASKS[task].corrupt(pool_rng, prompt, answer)
        rows.append(
            (
                {"prompt": prompt, "response": wrong},
                {"kind": "wrong-answer", "task": task},
            )
        )
    for i in range(counts["wrong-format"]):
        task = target_tasks[i % len(target_tasks)]
        prompt, answer = fresh(task, pool_rng)
        start = int(pool_rng.integers(len(_WRONG_FORMATS)))
        # The first wrapper (in a seeded rotation) that really changes the text: spacing
        # out a one-character answer would leave it correct.
        wrapped = next(
            w(answer)
            for k in range(len(_WRONG_FORMATS))
            if (w := _WRONG_FORMATS[(start + k) % len(_WRONG_FORMATS)])(answer)
            != answer
        )
        rows.append(
            (
                {"prompt": prompt, "response": wrapped},
                {"kind": "wrong-format", "task": task},
            )
        )
    for i in range(counts["near-duplicate"]):
        if not helpful:
            break
        # A few helpful rows are copied many times: a redundant cluster, as scraped
        # instruction sets have, which a diversity-blind method over-selects.
        task, prompt, answer = helpful[
            int(pool_rng.integers(0, max(1, len(helpful) // 10)))
        ]
        head, tail = prompt.split(": ", 1)
        variants = (
            f"{head}:  {tail}",
            f"{head.capitalize()}: {tail}",
            f"{head}: {tail} ",
            f" {head}: {tail}",
            f"{head.upper()}: {tail}",
        )
        variant = variants[i % len(variants)]
        rows.append(
            (
                {"prompt": variant, "response": answer},
                {"kind": "near-duplicate", "task": task},
            )
        )

    order = pool_rng.permutation(len(rows))
    pool_records = [rows[i][0] for i in order]
    pool = ExampleSet.from_records(pool_records, source="skills:pool")
    truth = tuple({"id": ex.id, **rows[i][1]} for ex, i in zip(pool.examples, order))
    target = ExampleSet.from_records(target_rows, source="skills:target")

    pretrain_records = []
    n_target_share = int(round(pretrain_target_share * n_pretrain))
    for i in range(n_pretrain):
        if i < n_target_share:
            task = target_tasks[i % len(target_tasks)]
        else:
            task = pretrain_tasks[i % len(pretrain_tasks)]
        prompt, answer = fresh(task, pretrain_rng)
        pretrain_records.append({"prompt": prompt, "response": answer, "domain": task})
    perm = pretrain_rng.permutation(len(pretrain_records))
    pretrain = ExampleSet.from_records(
        [pretrain_records[i] for i in perm], source="skills:pretrain"
    )
    return SkillsSuite(
        pool=pool, target=target, pretrain=pretrain, truth=truth, params=params
    )
