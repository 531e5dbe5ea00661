"""Several LoRA adapters trained in one batched forward equal the single finetunes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harp.core.errors import ModelError, NumericalError, ParameterError
from harp.data import ExampleSet
from harp.models import load_model, stacked_lora
from harp.training import (
    EvalConfig,
    TrainConfig,
    evaluate,
    finetune,
    finetune_stacked,
)

WORDS = ["abcd", "bcda", "cdab", "dabc", "abdc", "badc", "cadb", "dcba"]


def _rows(n, *, offset=0, domain="rev"):
    words = (WORDS * 8)[offset : offset + n]
    return ExampleSet.from_records(
        [
            {
                "prompt": f"rev: {w}" + "x" * (i % 3),
                "response": w[::-1],
                "domain": domain,
            }
            for i, w in enumerate(words)
        ]
    )


def _lora_weights(tuned):
    """Adapter weights of a peft model in parameter order: [A, B] per layer."""
    return [p.detach().clone() for n, p in tuned.named_parameters() if "lora_" in n]


def _single(tiny_dir, rows, config):
    base, tok = load_model(tiny_dir)
    tuned = finetune(base, tok, rows, config)
    return _lora_weights(tuned), tuned, tok


CONFIG = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=3, max_grad_norm=1.0)


def test_one_stacked_adapter_is_the_single_finetune_bit_for_bit(tiny_dir):
    rows = _rows(10)
    expected, _, _ = _single(tiny_dir, rows, CONFIG)
    base, tok = load_model(tiny_dir)
    adapters = finetune_stacked(base, tok, [rows], CONFIG)
    got = [t.detach() for t in adapters.parameters(0)]
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_stacked_adapters_equal_their_single_finetunes(tiny_dir):
    # Different sizes: different step counts (one set is smaller than a batch).
    sets = [_rows(10), _rows(3, offset=2), _rows(7, offset=5)]
    base, tok = load_model(tiny_dir)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    adapters = finetune_stacked(base, tok, sets, CONFIG)
    for k, rows in enumerate(sets):
        expected, _, _ = _single(tiny_dir, rows, CONFIG)
        got = [t.detach() for t in adapters.parameters(k)]
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The adapters differ from each other: each learned its own rows.
    assert not torch.equal(adapters.parameters(0)[1], adapters.parameters(1)[1])
    adapters.remove()
    after = dict(base.named_parameters())
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_stacked_adapter_scores_as_its_single_finetune(tiny_dir):
    sets = [_rows(8), _rows(8, offset=4)]
    target = _rows(6, offset=9, domain="t")
    evaluation = EvalConfig(metrics=("loss",))
    base, tok = load_model(tiny_dir)
    untouched = evaluate(base, tok, target, evaluation).average("loss").mean
    with finetune_stacked(base, tok, sets, CONFIG) as adapters:
        stacked = []
        for k in range(len(sets)):
            adapters.use(k)
            stacked.append(evaluate(base, tok, target, evaluation).average("loss").mean)
    for k, rows in enumerate(sets):
        _, tuned, tok1 = _single(tiny_dir, rows, CONFIG)
        single = evaluate(tuned, tok1, target, evaluation).average("loss").mean
        assert stacked[k] == pytest.approx(single, rel=1e-4)
    # Removed: the base scores as before.
    assert evaluate(base, tok, target, evaluation).average("loss").mean == untouched


def test_stacked_groups_see_only_their_own_adapter():
    from harp.nn import StackedAdapters

    layer = torch.nn.Linear(4, 3)
    a = torch.randn(2, 4)
    adapters = StackedAdapters({layer: (a, torch.zeros(3, 2))}, count=2, scaling=0.5)
    with torch.no_grad():
        adapters.parameters(1)[1].fill_(1.0)  # adapter 1's B: ones; adapter 0's: 0
    x = torch.randn(4, 5, 4)
    plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    adapters.train_groups([0, 1])
    out = layer(x)
    torch.testing.assert_close(out[:2], plain[:2])
    delta = (x[2:] @ a.T) @ torch.ones(3, 2).T * 0.5
    torch.testing.assert_close(out[2:], plain[2:] + delta)
    adapters.use(1)
    torch.testing.assert_close(layer(x), plain + (x @ a.T) @ torch.ones(3, 2).T * 0.5)
    with pytest.raises(ParameterError, match="equal groups"):
        adapters.train_groups([0, 1])
        layer(torch.randn(3, 5, 4))
    with pytest.raises(ParameterError, match="does not exist"):
        adapters.use(2)
    adapters.remove()
    torch.testing.assert_close(layer(x), plain)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_stacked_finetuning_refuses_what_it_cannot_do(tiny_dir):
    base, tok = load_model(tiny_dir)
    with pytest.raises(ParameterError, match="LoRA"):
        finetune_stacked(base, tok, [_rows(4)], TrainConfig(method="full", steps=1))
    with pytest.raises(ParameterError, match="empty"):
        finetune_stacked(base, tok, [_rows(4), ExampleSet(())], CONFIG)
    with pytest.raises(ParameterError, match="at least one"):
        finetune_stacked(base, tok, [], CONFIG)
    with pytest.raises(ModelError, match="linear layers only"):
        stacked_lora(base, 2, r=2, alpha=4, target_modules=("embed_tokens",))
    # A refusal leaves no hook behind: the base still computes what it did.
    ids = torch.tensor([tok("rev: abcd")["input_ids"]])
    fresh, _ = load_model(tiny_dir)
    torch.testing.assert_close(base(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_a_nan_loss_names_the_adapter_and_its_rows_and_removes_the_hooks(tiny_dir):
    base, tok = load_model(tiny_dir)
    layer = base.model.layers[0].self_attn.q_proj
    poison = tok.convert_tokens_to_ids("z")

    def nan_where_poisoned(module, args, out):  # the output layer stays finite
        return out.masked_fill((args[0] == poison)[..., None], float("nan"))

    base.model.embed_tokens.register_forward_hook(nan_where_poisoned)
    poisoned = ExampleSet.from_records(
        [{"prompt": "zzz", "response": "zz", "domain": "rev", "id": "bad-row"}]
    )
    with pytest.raises(NumericalError, match=r"adapter 1\).*bad-row"):
        finetune_stacked(base, tok, [_rows(4), poisoned], CONFIG)
    assert not layer._forward_hooks  # nothing left attached


def test_only_the_adapters_get_gradients_even_on_a_trainable_base(tiny_dir):
    from harp.nn import StackedRun, encode_examples, pad_token_id, train_stacked

    base, tok = load_model(tiny_dir)
    adapters = stacked_lora(base, 2, r=4, alpha=8)
    for p in base.parameters():  # a base its owner left trainable
        p.requires_grad_(True)
    runs = []
    for rows in (_rows(6), _rows(5, offset=3)):
        enc = encode_examples(tok, rows, max_length=64)
        pairs = list(zip(enc.input_ids, enc.labels))
        runs.append(StackedRun(pairs, [rows[i].id for i in enc.indices], steps=2))
    with adapters:
        train_stacked(
            base,
            adapters,
            runs,
            pad_id=pad_token_id(tok),
            batch_size=4,
            lr=1e-2,
            warmup_ratio=0.0,
            schedule="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=0,
            progress=False,
            description="stacked",
        )
        assert all(p.grad is None for p in base.parameters())
        assert all(
            not torch.equal(b, torch.zeros_like(b))
            for b in adapters.parameters(1)[1::2]
        )


def test_in_bf16_a_stacked_adapter_scores_as_its_single_finetune(tiny_dir):
    # bf16 weights (a GPU's default): the stacked batch's other rows change the
    # rounding of the base's activations by a bf16 ulp, so the adapters agree to
    # bf16 precision (weights within a few %), and their target loss closely.
    from harp.core.context import RunContext

    bf16 = RunContext(device="cpu", dtype="bf16")
    target = _rows(6, offset=9, domain="t")
    evaluation = EvalConfig(metrics=("loss",))
    base, tok = load_model(tiny_dir, context=bf16)
    with finetune_stacked(base, tok, [_rows(10), _rows(3, offset=2)], CONFIG) as ad:
        ad.use(0)
        stacked = evaluate(base, tok, target, evaluation).average("loss").mean
        weights = [p.detach() for p in ad.parameters(0)]
    alone, tok = load_model(tiny_dir, context=bf16)
    tuned = finetune(alone, tok, _rows(10), CONFIG)
    single = evaluate(tuned, tok, target, evaluation).average("loss").mean
    assert stacked == pytest.approx(single, rel=1e-3)
    expected = _lora_weights(tuned)
    assert all(w.dtype == torch.float32 for w in weights)  # fp32 adapters
    for a, b in zip(weights, expected):
        assert float((a - b).norm()) <= 0.2 * float(b.norm()) + 1e-6


def test_stacked_scoring_equals_scoring_each_adapter_alone(tiny_dir):
    from harp.training import evaluate_stacked

    target = ExampleSet.from_records(
        [
            {
                "prompt": "rev: abcd",
                "response": "dcba",
                "domain": "t",
                "options": ["dcba", "abcd", "bacd"],
            },
            {
                "prompt": "rev: dabc",
                "response": "cbad",
                "domain": "t",
                "options": ["cbad", "dabc"],
            },
            {
                "prompt": "rev: cadb",
                "response": "bdac",
                "domain": "u",
                "options": ["bdac", "cadb", "x", "dd"],
            },
        ]
    )
    metrics = ("loss", "option_logprob", "option_accuracy", "exact_match")
    # batch_size 6 over 3 adapters: two rows per adapter per forward pass.
    config = EvalConfig(metrics=metrics, batch_size=6, max_new_tokens=5)
    base, tok = load_model(tiny_dir)
    with finetune_stacked(
        base, tok, [_rows(8), _rows(5, offset=3), _rows(3)], CONFIG
    ) as ad:
        together = evaluate_stacked(base, ad, tok, target, config)
        alone = []
        for k in range(3):
            ad.use(k)
            alone.append(evaluate(base, tok, target, config))
    assert len(together) == 3
    for a, b in zip(together, alone):
        for domain in ("t", "u"):
            for metric in metrics:
                np.testing.assert_allclose(
                    a.item_values(domain, metric),
                    b.item_values(domain, metric),
                    rtol=1e-5,
                    atol=1e-6,
                )
        assert a.predictions == b.predictions
    # The adapters were told apart: their target losses differ.
    losses = [r.average("loss").mean for r in together]
    assert len(set(losses)) == 3


# -- stacks of any seeds, with fewer slots than runs ---------------------------------


def _reseeded(seed):
    return TrainConfig(**{**CONFIG.to_dict(), "seed": seed})


def test_one_slot_trains_each_run_alone_bit_for_bit_with_its_own_seed(tiny_dir):
    sets = [_rows(10), _rows(3, offset=2), _rows(7, offset=5)]
    seeds = [3, 8, None]  # None: the recipe's own (3)
    base, tok = load_model(tiny_dir)
    with finetune_stacked(base, tok, sets, CONFIG, seeds=seeds, slots=1) as adapters:
        for k, (rows, seed) in enumerate(zip(sets, seeds)):
            recipe = CONFIG if seed is None else _reseeded(seed)
            expected, _, _ = _single(tiny_dir, rows, recipe)
            got = [t.detach() for t in adapters.parameters(k)]
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), k
    # Another seed is another start: adapters 0 and 1 began from different A.
    assert not torch.equal(adapters.parameters(0)[0], adapters.parameters(1)[0])


def test_runs_wait_for_a_free_slot_and_equal_their_single_finetunes(tiny_dir):
    from harp.nn import stack_schedule

    sets = [_rows(3, offset=2), _rows(12), _rows(7, offset=5), _rows(5, offset=1)]
    seeds = [4, 3, 4, 3]
    steps = [CONFIG.total_steps(len(s)) for s in sets]  # 2, 6, 4, 3
    base, tok = load_model(tiny_dir)
    passes = []
    handle = base.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    adapters = finetune_stacked(base, tok, sets, CONFIG, seeds=seeds, slots=2)
    handle.remove()
    starts = stack_schedule(steps, 2)
    # Two adapters train at a time: one forward per step of the stack, <= 2 groups.
    assert len(passes) == max(s + n for s, n in zip(starts, steps)) < sum(steps)
    assert max(passes) <= 2 * CONFIG.batch_size
    for k, (rows, seed) in enumerate(zip(sets, seeds)):
        expected, _, _ = _single(tiny_dir, rows, _reseeded(seed))
        got = [t.detach() for t in adapters.parameters(k)]
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    adapters.remove()


def test_scoring_some_adapters_at_a_time_equals_scoring_all_at_once(tiny_dir):
    from harp.training import evaluate_stacked

    target = _rows(5, offset=9, domain="t")
    config = EvalConfig(metrics=("loss",), batch_size=6)
    base, tok = load_model(tiny_dir)
    sets = [_rows(8), _rows(5, offset=3), _rows(3)]
    with finetune_stacked(base, tok, sets, CONFIG) as adapters:
        together = evaluate_stacked(base, adapters, tok, target, config)
        in_twos = evaluate_stacked(base, adapters, tok, target, config, at_once=2)
        chosen = evaluate_stacked(base, adapters, tok, target, config, which=[2, 0])
        with pytest.raises(ParameterError, match="at_once"):
            evaluate_stacked(base, adapters, tok, target, config, at_once=0)
    assert len(in_twos) == 3
    for a, b in zip(together + [together[2], together[0]], in_twos + chosen):
        np.testing.assert_allclose(
            a.item_values("t", "loss"), b.item_values("t", "loss"), rtol=1e-5
        )


def test_per_adapter_starts_must_match_in_layers_and_shapes(tiny_dir):
    from harp.nn import StackedAdapters

    one, two = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    start = {one: (torch.ones(2, 4), torch.zeros(3, 2))}
    with pytest.raises(ParameterError, match="one per adapter"):
        StackedAdapters([start, start], count=3, scaling=1.0)
    with pytest.raises(ParameterError, match="same layers"):
        StackedAdapters(
            [start, {two: (torch.ones(2, 4), torch.zeros(3, 2))}], count=2, scaling=1.0
        )
    with pytest.raises(ParameterError, match="same shapes"):
        StackedAdapters(
            [start, {one: (torch.ones(3, 4), torch.zeros(3, 3))}], count=2, scaling=1.0
        )
    assert not one._forward_hooks  # nothing attached by a refusal
    base, tok = load_model(tiny_dir)
    with pytest.raises(ParameterError, match="one each"):
        stacked_lora(base, 2, r=2, alpha=4, seeds=[1])
    with pytest.raises(ParameterError, match="one each"):
        finetune_stacked(base, tok, [_rows(4)], CONFIG, seeds=[1, 2])


def test_on_done_hears_of_each_run_as_it_ends_with_its_share_of_the_time(tiny_dir):
    from harp.training import evaluate_stacked

    sets = [_rows(3, offset=2), _rows(12), _rows(7, offset=5)]  # 2, 6, 4 steps
    target = _rows(5, offset=9, domain="t")
    scoring = EvalConfig(metrics=("loss",))
    base, tok = load_model(tiny_dir)
    heard, scored = [], {}

    def on_done(adapters, ended, seconds):
        heard.append((list(ended), list(seconds), base.training))
        # What a caller does: score the finished adapters while the others train.
        for k, report in zip(
            ended, evaluate_stacked(base, adapters, tok, target, scoring, which=ended)
        ):
            scored[k] = report.average("loss").mean

    with finetune_stacked(base, tok, sets, CONFIG, slots=2, on_done=on_done) as ad:
        weights = [[p.detach().clone() for p in ad.parameters(k)] for k in range(3)]
        after = [
            r.average("loss").mean
            for r in evaluate_stacked(base, ad, tok, target, scoring)
        ]
    # Two slots: 6 steps in one, 4 + 2 in the other; the 6- and the 2-step runs end
    # together.
    assert [ended for ended, _, _ in heard] == [[2], [0, 1]]
    assert all(s > 0 for _, seconds, _ in heard for s in seconds)
    assert all(training for _, _, training in heard)  # called mid-training
    # Scoring mid-stack disturbed nothing: the same weights as a stack without it,
    # and each adapter scored as it ended scores so after the stack too.
    plain, _ = load_model(tiny_dir)
    with finetune_stacked(plain, tok, sets, CONFIG, slots=2) as quiet:
        for k in range(3):
            assert all(
                torch.equal(a, b) for a, b in zip(weights[k], quiet.parameters(k))
            )
    assert [scored[k] for k in range(3)] == pytest.approx(after, rel=1e-6)
