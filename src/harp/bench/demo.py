"""``harp demo``: the whole pipeline on the synthetic skills suite, in minutes on a CPU.

Steps: generate the suite → build and pretrain the proxy (cached) → score the base →
for each method select, finetune the proxy on the selection and score the target →
reference rows (full pool, the known-helpful rows, the helpful rows plus the harmful
ones) → a table. Every finished step is cached under ``out_dir`` by a fingerprint of
its inputs, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harp._utils.cache import JsonCache
from harp._utils.hashing import fingerprint, stable_json
from harp._utils.io import atomic_write_json, atomic_write_text
from harp.bench._steps import ensure_proxy, proxy_fingerprint
from harp.errors import ParameterError

__all__ = ["DemoConfig", "run_demo", "ensure_proxy"]

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Everything ``harp demo`` does, in one place (the presets fill it in).

    Parameters
    ----------
    out_dir : Path
        Folder for the generated data, the proxy model, the cache and the results.
    seed : int
        Seed of the suite, the model, the selections and the finetuning.
    methods : list of str or None
        Methods to compare; None means every registered method that needs no model,
        plus HARP-C and HARP-E.
    budget : str
        Rows each method may select (count, fraction or percentage of the pool).
    suite : dict
        Arguments of :func:`harp.data.synthetic.make_skills_suite`.
    pretrain : dict
        Arguments of :func:`harp.models.pretrain_proxy` (steps, batch_size, lr).
    train : dict
        Fields of :class:`harp.training.TrainConfig` for every finetune.
    references : bool
        Add the reference rows (base, full pool, known-helpful, helpful + harmful).
    """

    out_dir: Path = Path("harp-runs/demo")
    seed: int = 0
    methods: list[str] | None = None
    budget: str = "10%"
    suite: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    references: bool = True

    @classmethod
    def preset(cls, size: str = "default", **overrides: Any) -> "DemoConfig":
        """The ``default`` (a few minutes) or ``tiny`` (under a minute) configuration.

        ``None`` values in ``overrides`` keep the preset's value.
        """
        presets = {
            # Calibrated on 2 CPU cores: pretraining ~80 s, one finetune + evaluation of
            # 600 target rows ~9 s.
            "default": dict(
                suite=dict(n_pool=2000, n_target_per_domain=200, n_pretrain=6000),
                pretrain=dict(steps=1000, batch_size=32),
                train=dict(),
                budget="10%",
            ),
            "tiny": dict(
                suite=dict(n_pool=300, n_target_per_domain=30, n_pretrain=600),
                pretrain=dict(steps=40, batch_size=16),
                train=dict(steps=8, batch_size=8),
                budget="10%",
            ),
        }
        if size not in presets:
            raise ParameterError(
                f"size={size!r} is not allowed; expected one of default, tiny"
            )
        values: dict[str, Any] = dict(presets[size])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "out_dir" in values:
            values["out_dir"] = Path(values["out_dir"])
        return cls(**values)


#: Model-based methods the demo runs by default: HARP measures leaves on the demo's
#: own proxy (13 train-evaluate calls of a few seconds each); the gradient methods'
#: warm-ups would double the demo's time, so they are opt-in (``--methods``).
DEMO_MODEL_METHODS = ("harp-c", "harp-e")


def _default_methods() -> list[str]:
    from harp.selectors import available_methods, get_selector_class

    free = [m for m in available_methods() if not get_selector_class(m).uses_model]
    return free + list(DEMO_MODEL_METHODS)


def _report_row(
    name: str, kind: str, indices, suite, tuned, base, seconds
) -> dict[str, Any]:
    rows = np.asarray(indices, dtype=np.int64)
    fractions = suite.kind_fractions(rows)
    return {
        "name": name,
        "kind": kind,
        "n_selected": int(len(rows)),
        "harmful_fraction": fractions["wrong-answer"] + fractions["wrong-format"],
        "helpful_fraction": fractions["helpful"],
        "kind_fractions": fractions,
        "report": tuned.to_dict(),
        "exact_match": {
            d: tuned.estimate(d, "exact_match").to_dict() for d in tuned.domains
        },
        "average_exact_match": tuned.average("exact_match").to_dict(),
        "average_loss": tuned.average("loss").to_dict(),
        "delta_vs_base": tuned.average("exact_match").mean
        - base.average("exact_match").mean,
        **seconds,
    }


def run_demo(config: DemoConfig, *, progress: bool = False) -> dict[str, Any]:
    """Run the demo described by ``config``; return the results (also written to disk).

    Returns
    -------
    dict
        ``rows`` (one per method and reference: rows selected, harmful share, exact
        match per domain with stderr, average, selection and finetune seconds),
        ``base`` (the base model's scores), ``domains``, ``config`` and ``paths``
        (``json`` and ``markdown`` result files).
    """
    from harp.api import select
    from harp.data.synthetic import make_skills_suite
    from harp.training import EvalConfig, EvalReport, TrainConfig, finetune_and_evaluate

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = config.methods if config.methods is not None else _default_methods()
    from harp.selectors import get_selector_class

    for m in methods:
        get_selector_class(m)  # unknown names fail before any work

    t0 = time.perf_counter()
    suite = make_skills_suite(seed=config.seed, **config.suite)
    suite.save(out_dir / "data")
    log.info(
        "skills suite: pool %d rows (%d harmful), target %d rows in %s -> %s",
        len(suite.pool),
        int(suite.harmful_mask.sum()),
        len(suite.target),
        ", ".join(suite.target.domains),
        out_dir / "data",
    )
    proxy_dir = ensure_proxy(
        suite.pretrain,
        out_dir / "proxy",
        seed=config.seed,
        pretrain=config.pretrain,
        progress=progress,
    )
    proxy_key = proxy_fingerprint(proxy_dir)
    train_config = TrainConfig(seed=config.seed, **config.train)
    eval_config = EvalConfig(seed=config.seed)
    cache = JsonCache(out_dir / "cache")
    common = {
        "proxy": proxy_key,
        "target": suite.target.content_hash(),
        "train": train_config.to_dict(),
        "eval": eval_config.to_dict(),
    }

    base_key = fingerprint("demo-base", content=stable_json(common), params={})
    cached = cache.get(base_key)
    if cached is None:
        from harp.models import load_model
        from harp.training import evaluate

        log.info("scoring the base model on the target")
        model, tokenizer = load_model(proxy_dir)
        base_report = evaluate(
            model, tokenizer, suite.target, eval_config, progress=progress
        )
        cache.put(base_key, base_report.to_dict(include_items=True))
    else:
        base_report = EvalReport.from_dict(cached)

    def train_and_score(name: str, indices) -> tuple[EvalReport, float]:
        subset = suite.pool.subset(indices)
        key = fingerprint(
            "demo-finetune",
            content=stable_json({**common, "rows": subset.content_hash()}),
            params={},
        )
        hit = cache.get(key)
        if hit is not None:
            return EvalReport.from_dict(hit["report"]), hit["seconds"]
        start = time.perf_counter()
        tuned, _ = finetune_and_evaluate(
            proxy_dir,
            subset,
            suite.target,
            train_config,
            eval_config,
            base_report=base_report,
            progress=progress,
        )
        seconds = time.perf_counter() - start
        cache.put(
            key,
            {
                "name": name,
                "report": tuned.to_dict(include_items=True),
                "seconds": seconds,
            },
        )
        return tuned, seconds

    from harp.bench.harness import method_settings

    rows: list[dict[str, Any]] = []
    for method in methods:
        log.info("selecting with %s, then finetuning and scoring", method)
        sel_key = fingerprint(
            "demo-select",
            content=suite.pool.content_hash() + suite.target.content_hash(),
            # Every setting, defaults included: a changed default selects again.
            params={
                "method": method,
                "budget": config.budget,
                "settings": method_settings(method, {}),
            },
            seed=config.seed,
        )
        hit = cache.get(sel_key)
        if hit is None:
            # Model-based methods work on the demo's own proxy (the model that is then
            # finetuned), with their warm-ups and feature stores cached beside it.
            extra = (
                {"model": str(proxy_dir), "cache_dir": str(out_dir / "model-cache")}
                if get_selector_class(method).uses_model
                else {}
            )
            selection = select(
                suite.pool,
                suite.target,
                method=method,
                budget=config.budget,
                seed=config.seed,
                **extra,
            )
            hit = {
                "indices": selection.indices.tolist(),
                "seconds": selection.cost.wall_seconds,
            }
            cache.put(sel_key, hit)
        tuned, train_seconds = train_and_score(method, hit["indices"])
        rows.append(
            _report_row(
                method,
                "method",
                hit["indices"],
                suite,
                tuned,
                base_report,
                {"select_seconds": hit["seconds"], "train_eval_seconds": train_seconds},
            )
        )

    references: list[dict[str, Any]] = []
    if config.references:
        kinds = suite.kinds
        helpful = np.flatnonzero(kinds == "helpful")
        harmful = np.flatnonzero(suite.harmful_mask)
        for name, idx in (
            ("full pool", np.arange(len(suite.pool))),
            ("helpful only", helpful),
            ("helpful+harmful", np.sort(np.concatenate([helpful, harmful]))),
        ):
            log.info("reference: finetuning on %s (%d rows)", name, len(idx))
            tuned, train_seconds = train_and_score(name, idx)
            references.append(
                _report_row(
                    name,
                    "reference",
                    idx,
                    suite,
                    tuned,
                    base_report,
                    {"select_seconds": 0.0, "train_eval_seconds": train_seconds},
                )
            )

    result = {
        "domains": list(base_report.domains),
        "base": {
            "exact_match": {
                d: base_report.estimate(d, "exact_match").to_dict()
                for d in base_report.domains
            },
            "average_exact_match": base_report.average("exact_match").to_dict(),
            "average_loss": base_report.average("loss").to_dict(),
        },
        "rows": rows,
        "references": references,
        "config": _jsonable(dataclasses.asdict(config)),
        "suite": suite.params,
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    atomic_write_json(json_path, result)
    from harp.bench.tables import demo_markdown

    atomic_write_text(md_path, demo_markdown(result))
    result["paths"] = {"json": str(json_path), "markdown": str(md_path)}
    return result


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
