"""The train-and-score utility: cached by one key, counted, clean between calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.data import ExampleSet
from harp.execution import LocalExecutor
from harp.models import load_model
from harp.training import (
    EvalConfig,
    TrainConfig,
    TrainEvalUtility,
    evaluate,
    evaluate_subset,
    finetune,
)
from harp.training.evaluate import response_losses

WORDS = ["abcd", "bcda", "cdab", "dabc", "abdc", "badc", "cadb", "dcba"]
TRAIN = TrainConfig(steps=3, batch_size=4, lr=1e-2)
EVAL = EvalConfig(max_new_tokens=4, batch_size=8)


def _rows(n, offset=0):
    return ExampleSet.from_records(
        [
            {"prompt": f"rev {w}", "response": w[::-1], "domain": d}
            for d, w in zip(["x", "y"] * n, (WORDS * 4)[offset : offset + n])
        ]
    )


def _utility(tiny_dir, cache_dir, **kwargs):
    return TrainEvalUtility(
        tiny_dir,
        _rows(6, offset=8),
        kwargs.pop("train", TRAIN),
        kwargs.pop("evaluation", EVAL),
        context=RunContext(cache_dir=cache_dir, device="cpu"),
        **kwargs,
    )


def test_a_call_is_a_fresh_finetune_of_the_base(tiny_dir, tmp_path):
    utility = _utility(tiny_dir, tmp_path, cache=False)
    first = utility(_rows(8))
    second = utility(_rows(8))  # the adapter of the first call is gone
    assert second.scores == first.scores
    assert utility.calls == 2 and utility.hits == 0
    # ... and both equal a finetune of a freshly loaded base, scored by hand.
    model, tok = load_model(tiny_dir)
    by_hand = evaluate(finetune(model, tok, _rows(8), TRAIN), tok, _rows(6, 8), EVAL)
    assert by_hand.scores == first.scores
    # The loaded base is back to its own weights between calls.
    base, _ = utility._model()
    fresh, _ = load_model(tiny_dir)
    assert not any("lora" in n for n, _ in base.named_parameters())
    for (name, p), (_, q) in zip(base.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), name
    assert first.meta["train_rows"] == 8 and first.meta["train_seconds"] > 0


def test_results_are_cached_and_counted(tiny_dir, tmp_path):
    utility = _utility(tiny_dir, tmp_path)
    base = utility.base_report
    tuned = utility(_rows(8))
    assert (utility.calls, utility.hits) == (1, 0)
    again = _utility(tiny_dir, tmp_path)
    assert again(_rows(8)).scores == tuned.scores
    assert again.base_report.scores == base.scores
    assert (again.calls, again.hits) == (0, 1)
    assert again.is_cached(_rows(8)) and not again.is_cached(_rows(4))
    assert again(ExampleSet(())).scores == base.scores  # no rows: the base model


def test_the_key_is_what_the_result_depends_on(tiny_dir, tmp_path):
    rows = _rows(8)
    key = _utility(tiny_dir, tmp_path).key(rows)
    # Where it runs and where it caches are not part of it ...
    elsewhere = TrainEvalUtility(
        tiny_dir,
        _rows(6, offset=8),
        TRAIN,
        EVAL,
        context=RunContext(cache_dir=tmp_path / "other", progress=True),
    )
    assert elsewhere.key(rows) == key
    # ... the recipe, the scoring, the rows and the dtype are.
    reseeded = TrainConfig(**{**TRAIN.to_dict(), "seed": 1})
    assert _utility(tiny_dir, tmp_path, train=reseeded).key(rows) != key
    loss_only = EvalConfig(metrics=("loss",))
    assert _utility(tiny_dir, tmp_path, evaluation=loss_only).key(rows) != key
    assert _utility(tiny_dir, tmp_path).key(_rows(7)) != key
    bf16 = TrainEvalUtility(
        tiny_dir,
        _rows(6, offset=8),
        TRAIN,
        EVAL,
        context=RunContext(cache_dir=tmp_path, dtype="bf16"),
    )
    assert bf16.key(rows) != key


def test_map_over_an_executor_equals_calls_here(tiny_dir, tmp_path):
    subsets = [_rows(4), _rows(4, offset=4), _rows(6)]
    here = _utility(tiny_dir, tmp_path / "a", cache=True)
    expected = [here(s).scores for s in subsets]
    pooled = _utility(tiny_dir, tmp_path / "b")
    pooled(subsets[0])  # one is cached before the map
    with LocalExecutor(workers=2) as executor:
        results = pooled.map(subsets, executor)
    assert [r.report.scores for r in results] == expected
    assert [r.cached for r in results] == [True, False, False]
    assert (pooled.calls, pooled.hits) == (3, 1)


def test_a_seed_is_the_recipe_with_that_seed(tiny_dir, tmp_path):
    """``seed=`` is the utility of the reseeded recipe: same key, same result, one
    cache, in a call, in a map here and in a map over an executor."""
    rows = _rows(8)
    utility = _utility(tiny_dir, tmp_path)
    reseeded = TrainConfig(**{**TRAIN.to_dict(), "seed": 5})
    other = _utility(tiny_dir, tmp_path, train=reseeded)
    assert utility.recipe(5) == reseeded and utility.recipe() is TRAIN
    assert utility.recipe(TRAIN.seed) is TRAIN
    assert utility.key(rows, seed=5) == other.key(rows) != utility.key(rows)
    first = utility.call(rows, seed=5)
    assert not first.cached and utility.calls == 1
    assert other.call(rows).cached  # the reseeded utility reads that entry
    # It is another training run: another result than the recipe's own seed.
    assert utility(rows).scores != first.report.scores
    assert utility.is_cached(rows, seed=5) and not utility.is_cached(rows, seed=6)
    # One map holds subsets of both seeds (and one stack trains them together).
    subsets = [_rows(4), _rows(4, offset=4), _rows(4)]
    seeds = [5, 5, None]
    expected = [other(s).scores for s in subsets[:2]] + [utility(subsets[2]).scores]
    here = _utility(tiny_dir, tmp_path / "here")
    mapped = here.map(subsets, seeds=seeds)
    assert [r.report.scores for r in mapped] == expected
    assert here.calls == 3
    stacked = _stacking(tiny_dir, tmp_path / "stacked", 3)
    alone = _stacking(tiny_dir, tmp_path / "alone", 1)
    want = [
        alone.call(s, seed=k).report.average("loss").mean
        for s, k in zip(subsets, seeds)
    ]
    got = stacked.map(subsets, seeds=seeds)
    assert [r.report.average("loss").mean for r in got] == pytest.approx(want, rel=1e-4)
    assert [r.report.meta.get("trained_with") for r in got] == [3, 3, 3]
    with LocalExecutor(workers=2) as executor:
        pooled = _utility(tiny_dir, tmp_path / "pool").map(
            subsets, executor, seeds=seeds
        )
    assert [r.report.scores for r in pooled] == expected
    with pytest.raises(ParameterError, match="one per subset"):
        here.map(subsets, seeds=[5])


def _stacking(tiny_dir, cache_dir, together):
    return TrainEvalUtility(
        tiny_dir,
        _rows(6, offset=8),
        TrainConfig(epochs=2, batch_size=4, lr=1e-2),
        EvalConfig(metrics=("loss",)),
        context=RunContext(cache_dir=cache_dir, adapters_at_once=together),
    )


def test_map_trains_adapters_together_as_calls_one_at_a_time(tiny_dir, tmp_path):
    subsets = [_rows(4), _rows(5, offset=4), _rows(8), _rows(3, offset=2)]
    alone = _stacking(tiny_dir, tmp_path / "alone", 1)
    expected = [alone(s).average("loss").mean for s in subsets]
    together = _stacking(tiny_dir, tmp_path / "together", 3)
    together(subsets[1])  # cached before the map
    results = together.map([*subsets, subsets[0]])  # the first asked twice
    got = [r.report.average("loss").mean for r in results]
    assert got == pytest.approx([*expected, expected[0]], rel=1e-4)
    assert [r.cached for r in results] == [False, True, False, False, True]
    assert (together.calls, together.hits) == (4, 2)
    # Three uncached calls, at most three at a time: one stack of 3.
    assert [r.report.meta.get("trained_with") for r in results[:4]] == [3, None, 3, 3]
    # Each result is in the cache under its own key, as a call would put it.
    again = _stacking(tiny_dir, tmp_path / "together", 1)
    assert [again(s).average("loss").mean for s in subsets] == got[:4]
    assert again.calls == 0
    # The base model is left without hooks or adapters.
    base, _ = together._model()
    assert not any(m._forward_hooks for m in base.modules())


def test_map_hashes_each_subset_once_and_reads_each_entry_once(
    tiny_dir, tmp_path, monkeypatch
):
    """A key is computed once per subset (stacked and single runs reuse it), and a
    cache entry is read once before its call runs (a repeat reads it once more)."""
    utility = _stacking(tiny_dir, tmp_path, 2)
    utility.base_report  # noqa: B018 - not part of the count
    subsets = [_rows(4), _rows(5, offset=4), _rows(3, offset=2), _rows(4)]
    hashed, reads = [], []
    real_key, real_get = utility.key, utility.cache.get
    monkeypatch.setattr(
        utility, "key", lambda rows, seed=None: hashed.append(1) or real_key(rows, seed)
    )
    monkeypatch.setattr(
        utility.cache, "get", lambda key: reads.append(key) or real_get(key)
    )
    results = utility.map(subsets, seeds=[None, None, 7, None])
    assert len(hashed) == len(subsets)
    assert len(reads) == 3 + 1 and reads[-1] == reads[0]
    assert [r.cached for r in results] == [False, False, False, True]
    # One stack of all three (any seeds), two adapters training at a time.
    assert [r.report.meta.get("trained_with") for r in results[:3]] == [3, 3, 3]
    assert results[3].report.scores == results[0].report.scores
    assert (utility.calls, utility.hits) == (3, 1)


def test_out_of_memory_halves_the_adapters_trained_together(
    tiny_dir, tmp_path, monkeypatch, caplog
):
    import importlib

    finetune_module = importlib.import_module("harp.training.finetune")
    real = finetune_module.finetune_stacked
    sizes = []

    def finetune_stacked(model, tokenizer, trains, *args, **kwargs):
        sizes.append(len(trains))
        if len(trains) > 2:  # this device holds two adapters at most
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")
        return real(model, tokenizer, trains, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune_stacked", finetune_stacked)
    subsets = [_rows(4), _rows(5, offset=4), _rows(8), _rows(3, offset=2)]
    utility = _stacking(tiny_dir, tmp_path / "a", 4)
    with caplog.at_level("WARNING"):
        results = utility.map(subsets)
    assert sizes == [4, 2, 2]
    assert "out of memory training 4 adapters, 4 at once; 2 at once" in caplog.text
    alone = _stacking(tiny_dir, tmp_path / "b", 1)
    expected = [alone(s).average("loss").mean for s in subsets]
    assert [r.report.average("loss").mean for r in results] == pytest.approx(
        expected, rel=1e-4
    )


def test_a_crash_in_a_stack_keeps_the_calls_whose_runs_had_ended(tiny_dir, tmp_path):
    """Calls are scored and cached as their runs end: an interrupt while the longest
    run still trains loses that call only, and the rerun trains it alone."""
    from transformers import PreTrainedModel

    # 2 epochs of batch 4: 16 rows train 8 steps, 3 and 4 rows 2 steps each; with
    # two slots the short runs train one after the other beside the long one and
    # end at steps 2 and 4.
    subsets = [_rows(3, offset=2), _rows(16), _rows(4, offset=4)]
    forwards = []

    def crash_at_the_sixth_step(module, args):
        if module.training and isinstance(module, PreTrainedModel):
            if module.get_output_embeddings() is not None:
                forwards.append(1)
                if len(forwards) == 6:
                    raise KeyboardInterrupt

    utility = _stacking(tiny_dir, tmp_path, 2)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        crash_at_the_sixth_step
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            utility.map(subsets)
    finally:
        hook.remove()
    assert len(forwards) == 6  # the long run was two steps short of its end
    assert [utility.is_cached(s) for s in subsets] == [True, False, True]
    again = _stacking(tiny_dir, tmp_path, 2)
    results = again.map(subsets)
    assert [r.cached for r in results] == [True, False, True]
    assert (again.calls, again.hits) == (1, 2)
    # Each result is its call's own: the same as trained one at a time.
    alone = _stacking(tiny_dir, tmp_path / "alone", 1)
    expected = [alone(s).average("loss").mean for s in subsets]
    got = [r.report.average("loss").mean for r in results]
    assert got == pytest.approx(expected, rel=1e-4)
    assert all(r.seconds > 0 for r in results)


def test_full_finetuning_loads_a_fresh_copy(tiny_dir, tmp_path):
    full = TrainConfig(method="full", steps=2, batch_size=4, lr=1e-3)
    utility = _utility(tiny_dir, tmp_path, train=full, cache=False)
    first = utility(_rows(8))
    assert utility(_rows(8)).scores == first.scores


def test_finetuned_losses_are_the_fit_then_a_forward_pass(tiny_dir, tmp_path):
    utility = _utility(tiny_dir, tmp_path)
    losses, seconds = utility.finetuned_losses(_rows(8), _rows(6, offset=8))
    model, tok = load_model(tiny_dir)
    expected = response_losses(finetune(model, tok, _rows(8), TRAIN), tok, _rows(6, 8))
    np.testing.assert_array_equal(losses, expected)
    again, cached_seconds = _utility(tiny_dir, tmp_path).finetuned_losses(
        _rows(8), _rows(6, offset=8)
    )
    np.testing.assert_array_equal(again, losses)
    assert cached_seconds == seconds and utility.calls == 0


def test_evaluate_subset_reports_base_and_tuned(tiny_dir, tmp_path):
    context = RunContext(cache_dir=tmp_path, device="cpu")
    result = evaluate_subset(
        tiny_dir, _rows(6, 8), _rows(8), train_config=TRAIN, context=context
    )
    assert set(result["base"]["scores"]) == {"x", "y"}
    assert result["tuned"]["scores"]["x"]["loss"]["n"] == 3
    assert result["context"]["device"] == "cpu" and result["train_rows"] == 8
    alone = evaluate_subset(tiny_dir, _rows(6, 8), context=context)
    assert alone["tuned"] is None and alone["base"] == result["base"]


def test_bad_arguments(tiny_dir, tmp_path):
    with pytest.raises(ParameterError, match="TrainConfig"):
        _utility(tiny_dir, tmp_path, train={"steps": 1})
    with pytest.raises(ParameterError, match="EvalConfig"):
        _utility(tiny_dir, tmp_path, evaluation="loss")
    with pytest.raises(ParameterError, match="target is empty"):
        TrainEvalUtility(tiny_dir, ExampleSet(()))


def test_a_worker_loads_the_base_once_for_its_calls(tiny_dir, tmp_path, monkeypatch):
    """A kept pool's worker reuses its base: the same scores, one load."""
    import harp.models.loading as loading
    from harp.training import utility as utility_module

    expected = [
        _utility(tiny_dir, tmp_path / "here", cache=False)(s).scores
        for s in (_rows(4), _rows(6))
    ]
    loads = []
    real = loading.load_model

    def counting(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", counting)
    from harp.execution import executor as executor_module

    monkeypatch.setattr(executor_module, "_WORKER_MODEL", {})
    shipped = _utility(tiny_dir, tmp_path / "w", cache=False)._for_worker()
    got = [
        utility_module._run_call(copy, (rows, None)).report.scores
        for copy, rows in ((shipped, _rows(4)), (shipped._for_worker(), _rows(6)))
    ]
    assert got == expected
    assert len(loads) == 1
