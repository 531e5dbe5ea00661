"""The one train-and-score utility: finetune the base model on rows, score the target.

:class:`TrainEvalUtility` is harp's ``ModelUtility`` (pyDVL's name for "the model and
the scorer, as a function of the training subset"): ``utility(rows)`` finetunes a
fresh LoRA adapter (or a fresh copy, for full finetuning) of the base model on
``rows`` and returns the :class:`~harp.training.evaluate.EvalReport` of the target.
HARP's oracle, ``harp bench``, ``harp demo`` and ``harp evaluate`` all go through it,
so there is one fingerprint policy for a finetune-and-score result:

    model content · target content · rows content · training recipe · evaluation
    settings · dtype

(never the device, the cache folder or the progress display). Every result is kept
in ``context.cache_dir/train-eval`` as one JSON file per key, written atomically, so
a rerun, a crashed run, or another method that asks for the same subset repeats no
finished call. The utility counts the calls it ran and the ones it answered from
the cache, and can map subsets over an executor.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.artifact import JsonCache
from harp.core.context import RunContext
from harp.core.errors import NumericalError, ParameterError
from harp.core.hashing import fingerprint, stable_json
from harp.core.progress import ProgressBar
from harp.core.records import ExampleSet
from harp.execution import forget_worker_cached, worker_cached
from harp.training.config import EvalConfig, TrainConfig
from harp.training.evaluate import (
    EvalReport,
    evaluate,
    evaluate_stacked,
    response_losses,
)

__all__ = ["CallResult", "TrainEvalUtility", "evaluate_subset"]

log = logging.getLogger(__name__)

#: Cache folder (under ``context.cache_dir``) of every train-and-score result.
CACHE_FOLDER = "train-eval"

#: One stack of LoRA calls holds up to this many times ``adapters_at_once`` adapters
#: (the waiting ones take the slots of those that end): every adapter's weights stay
#: on the device until its stack ends, and few stacks keep short runs beside long
#: ones.
STACK_ROUNDS = 4


@dataclass(frozen=True)
class CallResult:
    """One answered call of a :class:`TrainEvalUtility`.

    Attributes
    ----------
    report : EvalReport
        Scores of the finetuned model on the target (per-item values included).
    seconds : float
        Wall time of the call (of the original call for a cache hit).
    cached : bool
        Whether it was read from the cache.
    key : str
        The cache key.
    """

    report: EvalReport
    seconds: float
    cached: bool
    key: str


def _run_call(
    utility: TrainEvalUtility, task: tuple[ExampleSet, int | None]
) -> CallResult:
    """One call in a worker (a task of :meth:`TrainEvalUtility.map`): rows and the
    recipe seed to train them with (None: the recipe's own).

    It runs on a copy of the utility, so a worker's counters never change the
    driver's: the driver counts the call from the result. The worker keeps the
    loaded base for its next call (a LoRA call leaves the base as it found it).
    """
    context = utility.context
    key = (
        f"train-eval:{utility.model_dir}:{context.device_name}:{context.dtype_name}:"
        f"{utility.trust_remote_code}:{context.allow_pickle}"
    )
    if utility.train_config.method == "lora":  # full finetuning loads fresh copies
        utility._loaded = worker_cached(key, utility._load_base)
    rows, seed = task
    try:
        return utility.call(rows, seed=seed)
    finally:
        if utility._loaded is None:  # a failed call: the base may be damaged
            forget_worker_cached(key)


class TrainEvalUtility:
    """Finetune the base model on a subset and score the target; cached and counted.

    Parameters
    ----------
    model : str or Path
        The base model folder. It is loaded once, on ``context``'s device and dtype;
        every LoRA call attaches a fresh adapter to it and removes it afterwards.
    target : ExampleSet
        Target rows; their ``domain`` splits the scores.
    train_config : TrainConfig or None, default None
        The one finetuning recipe of every call (None: :class:`TrainConfig`
        defaults).
    eval_config : EvalConfig or None, default None
        How the target is scored (None: :class:`EvalConfig` defaults). Metrics left
        unnamed are fixed for ``target`` here (:meth:`EvalConfig.for_target`), so
        :attr:`eval_config` and the cache key always name them.
    context : RunContext or None, default None
        Device, dtype, cache folder and progress display.
    cache : bool, default True
        Keep results in ``context.cache_dir/train-eval`` and answer repeated calls
        from there.
    trust_remote_code : bool, default False
        Allow the model folder's own Python code.

    Attributes
    ----------
    calls : int
        Finetune-and-score calls run (cache hits not counted).
    hits : int
        Calls answered from the cache.
    seconds : float
        Wall time of the calls run.

    Examples
    --------
    >>> utility = TrainEvalUtility("./my-model", target)  # doctest: +SKIP
    >>> utility.base_report.average("loss")  # doctest: +SKIP
    >>> tuned = utility(pool.subset(selection.indices))  # doctest: +SKIP
    >>> utility.calls, utility.hits  # doctest: +SKIP
    (1, 0)
    """

    def __init__(
        self,
        model: str | Path,
        target: ExampleSet,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
        *,
        context: RunContext | None = None,
        cache: bool = True,
        trust_remote_code: bool = False,
    ) -> None:
        from harp.models.loading import model_fingerprint

        train_config = TrainConfig() if train_config is None else train_config
        eval_config = EvalConfig() if eval_config is None else eval_config
        if not isinstance(train_config, TrainConfig):
            raise ParameterError(
                f"train_config must be a TrainConfig, got {type(train_config).__name__}"
            )
        if not isinstance(eval_config, EvalConfig):
            raise ParameterError(
                f"eval_config must be an EvalConfig, got {type(eval_config).__name__}"
            )
        if len(target) == 0:
            raise ParameterError("target is empty; scoring needs at least one row")
        self.model_dir = Path(model).expanduser()
        self.target = target
        self.train_config = train_config
        self.eval_config = eval_config.for_target(target)  # refuses what it lacks
        self.context = RunContext() if context is None else context
        self.trust_remote_code = trust_remote_code
        self.model_key = model_fingerprint(self.model_dir)  # checks the folder
        self.cache = JsonCache(self.context.cache_dir / CACHE_FOLDER) if cache else None
        self.calls = 0
        self.hits = 0
        self.seconds = 0.0
        self._target_key = target.content_hash()
        self._base: EvalReport | None = None
        self._loaded: tuple[Any, Any] | None = None

    # -- what a result depends on -----------------------------------------------------
    def _scoring(self) -> dict[str, Any]:
        return {
            "model": self.model_key,
            "target": self._target_key,
            "eval": self.eval_config.to_dict(),
            # bf16 and fp32 runs are different results; the device is not.
            "dtype": self.context.dtype_name,
        }

    def recipe(self, seed: int | None = None) -> TrainConfig:
        """The training recipe of a call: ``train_config``, with ``seed`` if given.

        Another seed is another draw of the recipe's own randomness (LoRA
        initialisation, batch order, dropout) for the same rows: HARP measures a
        leaf twice that way to estimate how much a call's result owes to it.
        """
        if seed is None or seed == self.train_config.seed:
            return self.train_config
        return dataclasses.replace(self.train_config, seed=seed)

    def key(self, rows: ExampleSet, seed: int | None = None) -> str:
        """The cache key of a call on ``rows`` (the base model's for no rows)."""
        if len(rows) == 0:
            return fingerprint(
                "train-eval-base", content=stable_json(self._scoring()), params={}
            )
        content = {
            **self._scoring(),
            "train": self.recipe(seed).to_dict(),
            "rows": rows.content_hash(),
        }
        return fingerprint("train-eval", content=stable_json(content), params={})

    def is_cached(self, rows: ExampleSet, seed: int | None = None) -> bool:
        """Whether a call on ``rows`` would be answered from the cache."""
        return self.cache is not None and self.key(rows, seed) in self.cache

    # -- the model -------------------------------------------------------------------
    def _load_base(self) -> tuple[Any, Any]:
        from harp.models.loading import load_model

        return load_model(
            self.model_dir,
            context=self.context,
            trust_remote_code=self.trust_remote_code,
        )

    def _model(self) -> tuple[Any, Any]:
        """The base model and tokenizer, loaded once per process."""
        if self._loaded is None:
            self._loaded = self._load_base()
        return self._loaded

    def _finetuned(
        self, rows: ExampleSet, description: str, recipe: TrainConfig
    ) -> tuple[Any, Any, Any]:
        """``(tuned model, tokenizer, release)``: call ``release()`` when done.

        LoRA trains a fresh adapter on the loaded base and ``release`` removes it
        (the base weights never change); full finetuning trains a fresh copy loaded
        from the folder.
        """
        from harp.training.finetune import finetune

        if recipe.method == "lora":
            base, tokenizer = self._model()
            try:
                tuned = finetune(
                    base,
                    tokenizer,
                    rows,
                    recipe,
                    progress=self.context.progress,
                    description=description,
                )
            except BaseException:
                # The adapter may be half attached: reload a clean base next time.
                self._loaded = None
                raise
            return tuned, tokenizer, tuned.unload

        model, tokenizer = self._load_base()  # a fresh copy: full finetuning
        tuned = finetune(
            model,
            tokenizer,
            rows,
            recipe,
            progress=self.context.progress,
            description=description,
        )
        return tuned, tokenizer, lambda: None

    # -- scores -----------------------------------------------------------------------
    def _score(self, model: Any, tokenizer: Any) -> EvalReport:
        """The target report of ``model`` as it is now."""
        return evaluate(
            model,
            tokenizer,
            self.target,
            self.eval_config,
            progress=self.context.progress,
        )

    @property
    def base_report(self) -> EvalReport:
        """The report of the untouched base model (computed once, cached)."""
        if self._base is None:
            self._base = self.call(ExampleSet(())).report
        return self._base

    def call(self, rows: ExampleSet, *, seed: int | None = None) -> CallResult:
        """Finetune on ``rows`` (or read the cached result); the report and its facts.

        No rows means the base model. ``seed`` replaces the recipe's seed
        (:meth:`recipe`). Counters are updated: ``calls`` for a call run, ``hits``
        for one answered from the cache.
        """
        key = self.key(rows, seed)
        return self._cached(key, rows) or self._run(key, rows, seed)

    def _run(self, key: str, rows: ExampleSet, seed: int | None) -> CallResult:
        """Run the call ``key`` (known not to be cached), count and keep it."""
        start = time.perf_counter()
        if len(rows) == 0:
            model, tokenizer = self._model()
            report = self._score(model, tokenizer)
        else:
            recipe = self.recipe(seed)
            tuned, tokenizer, release = self._finetuned(
                rows, f"finetuning ({recipe.method})", recipe
            )
            train_seconds = time.perf_counter() - start
            try:
                report = self._score(tuned, tokenizer)
            finally:
                release()
            report.meta["train_seconds"] = train_seconds
            report.meta["train_rows"] = len(rows)
        return self._record(key, rows, report, time.perf_counter() - start)

    def _cached(self, key: str, rows: ExampleSet) -> CallResult | None:
        """The cached result of ``key`` (counted as a hit), or None."""
        hit = None if self.cache is None else self.cache.get(key)
        if hit is None or "report" not in hit:
            return None
        self.hits += len(rows) > 0
        return CallResult(
            EvalReport.from_dict(hit["report"]), float(hit["seconds"]), True, key
        )

    def _record(
        self, key: str, rows: ExampleSet, report: EvalReport, seconds: float
    ) -> CallResult:
        """Count a call that ran here and keep its result in the cache."""
        if len(rows):
            self.calls += 1
            self.seconds += seconds
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "report": report.to_dict(include_items=True),
                    "seconds": seconds,
                    "rows": len(rows),
                },
            )
        return CallResult(report, seconds, False, key)

    def _calls_stacked(
        self, calls: Sequence[tuple[str, ExampleSet, int | None]], slots: int
    ) -> list[CallResult]:
        """Uncached LoRA calls ``(key, rows, seed)`` trained in one stack
        (:func:`finetune_stacked`), at most ``slots`` adapters at a time; what is
        left is split in two when the device runs out of memory.

        A call is scored (:func:`evaluate_stacked`) and kept in the cache as soon as
        its run ends, while the others train: a crash loses only the calls still
        training. A call's ``seconds`` is its share of the stacked steps it took
        part in and its own scoring.
        """
        from harp.nn.loop import is_out_of_memory
        from harp.training.finetune import finetune_stacked

        if len(calls) == 1:
            return [self._run(*calls[0])]
        keys, subsets, seeds = zip(*calls)
        base, tokenizer = self._model()
        done: dict[int, CallResult] = {}

        def score(adapters: Any, ended: list[int], train_seconds: list[float]) -> None:
            """Score and keep the calls whose runs just ended."""
            start = time.perf_counter()
            reports = evaluate_stacked(
                base,
                adapters,
                tokenizer,
                self.target,
                self.eval_config,
                progress=False,
                at_once=slots,
                which=ended,
            )
            score_share = (time.perf_counter() - start) / len(ended)
            for k, report, trained in zip(ended, reports, train_seconds):
                report.meta["train_seconds"] = trained
                report.meta["train_rows"] = len(subsets[k])
                report.meta["trained_with"] = len(subsets)
                done[k] = self._record(
                    keys[k], subsets[k], report, trained + score_share
                )

        try:
            adapters = finetune_stacked(
                base,
                tokenizer,
                subsets,
                self.train_config,
                seeds=seeds,
                slots=slots,
                on_done=score,
                progress=self.context.progress,
                description=f"finetuning {len(subsets)} adapters, {slots} at once",
            )
        except BaseException as exc:
            if not is_out_of_memory(exc):
                self._loaded = None  # peft may have left the base half changed
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            left = [k for k in range(len(subsets)) if k not in done]
            half = len(left) // 2
            fewer = max(1, min(slots // 2, half))
            log.warning(
                "out of memory training %d adapters, %d at once; %d at once instead "
                "(set adapters_at_once to choose)",
                len(left),
                slots,
                fewer,
            )
            for part in (left[:half], left[half:]):
                if part:
                    results = self._calls_stacked([calls[k] for k in part], fewer)
                    done.update(zip(part, results))
        else:
            adapters.remove()
        return [done[k] for k in range(len(subsets))]

    def __call__(self, rows: ExampleSet) -> EvalReport:
        """The target report after finetuning on ``rows`` (the base's for no rows)."""
        return self.call(rows).report

    def map(
        self,
        subsets: Sequence[ExampleSet],
        executor: Any = None,
        *,
        seeds: Sequence[int | None] | None = None,
        desc: str = "train-evaluate calls",
    ) -> list[CallResult]:
        """Answer several calls; the uncached ones run as tasks of ``executor``.

        Cached subsets are read here; the others are mapped over ``executor`` (a
        :class:`harp.execution.Executor`; None, or one that would run them in this
        process, runs them here, one after another, on the model loaded here),
        each task writing its result to the shared cache. Results come back in
        input order and are counted as if run here, so the outcome never depends on
        where the calls ran. ``seeds`` gives each subset's recipe seed
        (:meth:`recipe`; None, or a None entry: the recipe's own), so one map can
        hold a subset and its replicate.
        """
        seeds = [None] * len(subsets) if seeds is None else list(seeds)
        if len(seeds) != len(subsets):
            raise ParameterError(
                f"seeds: {len(seeds)} seeds for {len(subsets)} subsets; expected one "
                "per subset"
            )
        # Each cache entry is read once; a subset asked twice runs once (the second
        # is read from the cache below).
        keys = [self.key(rows, seed) for rows, seed in zip(subsets, seeds)]
        answered: dict[int, CallResult] = {}
        todo: list[int] = []
        seen: set[str] = set()
        for i, key in enumerate(keys):
            if key in seen:
                continue
            seen.add(key)
            cached = self._cached(key, subsets[i])
            if cached is None:
                todo.append(i)
            else:
                answered[i] = cached
        if todo and executor is not None and not executor.runs_here(len(todo)):
            self.base_report  # noqa: B018 - scored once here, not once per task
            results = executor.map(
                functools.partial(_run_call, self._for_worker()),
                [(subsets[i], seeds[i]) for i in todo],
                desc=desc,
            )
            for i, result in zip(todo, results):
                if result.cached:  # another process measured it meanwhile
                    self.hits += 1
                else:
                    self.calls += 1
                    self.seconds += result.seconds
                answered[i] = result
        here = [i for i in todo if i not in answered]
        together = self.context.adapters_at_once_count
        if self.train_config.method != "lora":
            together = 1  # full finetuning trains whole copies
        # Run here: one call at a time, or stacks of calls (any seeds) that train
        # `together` adapters at once, the largest subsets first so that runs of
        # like length share a stack and a slot whose run ends takes the next.
        if together > 1:
            here.sort(key=lambda i: -len(subsets[i]))
        size = 1 if together == 1 else together * STACK_ROUNDS
        with ProgressBar(False, desc, len(here), unit="call") as bar:
            for first in range(0, len(here), size):
                chunk = here[first : first + size]
                stacked = self._calls_stacked(
                    [(keys[i], subsets[i], seeds[i]) for i in chunk], together
                )
                answered.update(zip(chunk, stacked))
                bar.advance(len(chunk))
        # Repeats of a subset: from the cache now (or run again without a cache).
        return [
            answered.get(i) or self._cached(key, rows) or self._run(key, rows, seed)
            for i, (key, rows, seed) in enumerate(zip(keys, subsets, seeds))
        ]

    def finetuned_losses(
        self, train: ExampleSet, rows: ExampleSet, *, description: str = ""
    ) -> tuple[np.ndarray, float]:
        """Each row's response loss under the base finetuned on ``train``.

        One finetune with the utility's recipe, then one forward pass over ``rows``
        (HARP's *target fit*: ``train`` is the target, ``rows`` the pool). Cached by
        model, recipe, dtype and both sets' content; not counted as a call.

        Returns
        -------
        losses : ndarray of shape (len(rows),)
            Mean negative log-likelihood of each row's response tokens.
        seconds : float
            What the fit took (when it ran; read from the cache otherwise).

        Raises
        ------
        NumericalError
            When a loss is not finite (names the rows).
        """
        content = {
            "model": self.model_key,
            "train": self.train_config.to_dict(),
            "dtype": self.context.dtype_name,
            "fit": train.content_hash(),
            "rows": rows.content_hash(),
        }
        key = fingerprint("train-losses", content=stable_json(content), params={})
        hit = None if self.cache is None else self.cache.get(key)
        if hit is not None and len(hit.get("losses", ())) == len(rows):
            return np.asarray(hit["losses"], dtype=np.float64), float(hit["seconds"])
        start = time.perf_counter()
        tuned, tokenizer, release = self._finetuned(
            train, description or "finetuning on the fit rows", self.train_config
        )
        try:
            losses = response_losses(
                tuned, tokenizer, rows, progress=self.context.progress
            )
        finally:
            release()
        losses = np.asarray(losses, dtype=np.float64)
        if not np.isfinite(losses).all():
            bad = np.flatnonzero(~np.isfinite(losses))[:5]
            raise NumericalError(
                "the loss after finetuning is not finite for rows "
                f"{', '.join(rows.ids[i] for i in bad)}; check those rows for empty "
                "responses after truncation"
            )
        seconds = time.perf_counter() - start
        if self.cache is not None:
            self.cache.put(key, {"losses": losses.tolist(), "seconds": seconds})
        return losses, seconds

    # -- workers ----------------------------------------------------------------------
    def _for_worker(self) -> TrainEvalUtility:
        """A copy to ship to a worker: no loaded model, no executor, fresh counters."""
        import copy

        clone = copy.copy(self)
        clone._loaded = None
        clone.context = self.context.for_worker()
        clone.calls = clone.hits = 0
        clone.seconds = 0.0
        return clone

    def __getstate__(self) -> dict[str, Any]:
        # A loaded model does not travel to another process: it reloads there.
        return {**self.__dict__, "_loaded": None}


def evaluate_subset(
    model: str | Path,
    target: ExampleSet,
    train: ExampleSet | None = None,
    *,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    context: RunContext | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on ``target`` per domain; with ``train``, also after finetuning.

    ``harp evaluate`` as a library call (through :class:`TrainEvalUtility`, so the
    result is cached like every other finetune-and-score).

    Parameters
    ----------
    model : str or Path
        A local Hugging Face causal-LM folder.
    target : ExampleSet
        Target rows; their ``domain`` splits the scores.
    train : ExampleSet, optional
        Rows to finetune on (LoRA by default). Without it only the base is scored.
    train_config, eval_config : TrainConfig, EvalConfig or None
        The recipe and the scoring (None: defaults).
    context : RunContext or None, default None
        Device, dtype, cache folder and progress display.
    trust_remote_code : bool, default False
        Allow the model folder's own Python code.

    Returns
    -------
    dict
        ``{"model", "base": report, "tuned": report or None, "train_rows",
        "train_config", "eval_config", "context", "seconds"}`` where each report is
        :meth:`harp.training.EvalReport.to_dict` (per-domain mean, variance, n,
        stderr).
    """
    start = time.perf_counter()
    utility = TrainEvalUtility(
        model,
        target,
        train_config,
        eval_config,
        context=context,
        trust_remote_code=trust_remote_code,
    )
    base = utility.base_report
    tuned = None if train is None or len(train) == 0 else utility(train)
    return {
        "model": str(model),
        "base": base.to_dict(),
        "tuned": None if tuned is None else tuned.to_dict(),
        "train_rows": 0 if train is None else len(train),
        "train_config": utility.train_config.to_dict(),
        "eval_config": utility.eval_config.to_dict(),
        "context": utility.context.describe(),
        "seconds": round(time.perf_counter() - start, 2),
    }
