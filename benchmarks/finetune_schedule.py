"""A bench's finetunes in stacks per seed against one stack with slots, side by side.

On a GPU harp trains several small LoRA finetunes in one batched forward
(:func:`harp.training.finetune_stacked`, ``adapters_at_once`` = 8 by default): a step
of a small model is paid in kernel launches, so K adapters cost little more than
one. A stack used to hold the calls of one recipe seed, 8 at a time, all starting
together: a stack holding a full-data reference (750 steps in the realtext suite)
ran 750 steps while its 38- and 75-step selections sat done. Now one stack holds
the calls of every seed, at most 8 training at once, a waiting call taking the slot
of one that ends (:func:`harp.nn.stack_schedule`).

This script builds the calls of a bench shaped like the realtext suite (per seed: a
full-data reference, one without a tenth of the rows, and ``--methods`` selections
at 5% and 10% of the pool) and runs them both ways in one process, printing the
training forward passes (the launches a GPU pays: the same on any device), the wall
time and its ratio, and the largest difference of a call's target loss between the
two ways (floating-point rounding: the stacks differ). ::

    python benchmarks/finetune_schedule.py        # CPU: a narrow 30-layer model
    python benchmarks/finetune_schedule.py --model DIR --device cuda --epochs 3 \
        --pool 2000                                # the realtext bench's sizes

The default model has SmolLM2-135M's depth (30 layers) at a width of 64, so that a
CPU spends its time on what a GPU's host spends it on, the operations of a step;
its rows are short synthetic ones. On the CPU the stacks' arithmetic is a larger
share than on a GPU (each adapter's AdamW runs tensor by tensor there).
"""

from __future__ import annotations

import argparse
import random
import string
import tempfile
import time
from pathlib import Path
from typing import Any


def _rows(n: int, seed: int, domain: str) -> Any:
    """``n`` short rows: reverse a random word."""
    from harp.data import ExampleSet

    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(n)]
    return ExampleSet.from_records(
        [
            {"prompt": f"reverse: {w}", "response": w[::-1], "domain": domain}
            for w in words
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: a narrow 30-layer one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--pool", type=int, default=400, help="pool rows")
    parser.add_argument("--methods", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--at-once", type=int, default=8, help="adapters_at_once")
    parser.add_argument("--target", type=int, default=64, help="target rows")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        _compare(args, Path(scratch))


def _compare(args: argparse.Namespace, scratch: Path) -> None:
    """Build the calls and run them both ways (``scratch``: the model, the cache)."""
    import torch
    from transformers import PreTrainedModel

    from harp.core.context import RunContext
    from harp.models import ProxyConfig, build_proxy, load_model, save_model
    from harp.training import (
        EvalConfig,
        TrainConfig,
        TrainEvalUtility,
        evaluate_stacked,
        finetune_stacked,
    )

    model_dir = Path(args.model) if args.model else scratch / "model"
    if not args.model:
        shape = ProxyConfig(
            hidden_size=64, num_layers=30, num_heads=4, num_kv_heads=2,
            intermediate_size=128,
        )  # fmt: skip
        save_model(*build_proxy(shape, seed=0), model_dir)
    context = RunContext(
        device=args.device,
        dtype=args.dtype,
        cache_dir=scratch / "cache",
        adapters_at_once=args.at_once,
    )
    recipe = TrainConfig(
        epochs=args.epochs, batch_size=8, lr=2e-4, lora_r=16, lora_alpha=32,
        lora_target_modules=("all-linear",), seed=0,
    )  # fmt: skip
    evaluation = EvalConfig(metrics=("loss",), batch_size=64)
    pool = _rows(args.pool, 1, "pool")
    target = _rows(args.target, 2, "target")
    # The bench's order: per seed, the references, then each method's budgets.
    subsets, seeds = [], []
    for seed in range(args.seeds):
        rng = random.Random(100 + seed)
        sizes = [args.pool, args.pool * 9 // 10]
        sizes += [args.pool * b // 100 for _ in range(args.methods) for b in (5, 10)]
        for size in sizes:
            subsets.append(pool.subset(sorted(rng.sample(range(args.pool), size))))
            seeds.append(seed)
    steps = [recipe.total_steps(len(s)) for s in subsets]

    passes = [0]

    def count(module: Any, args: Any) -> None:
        """A training forward of a whole causal LM (this one, or the utility's)."""
        if module.training and isinstance(module, PreTrainedModel):
            passes[0] += module.get_output_embeddings() is not None

    torch.nn.modules.module.register_module_forward_pre_hook(count)

    def per_seed() -> list[float]:
        """Stacks of one seed, ``at_once`` calls each, all starting together (the
        model loaded here, as the utility loads its own)."""
        base, tok = load_model(model_dir, context=context)
        losses = []
        for seed in range(args.seeds):
            mine = [s for s, k in zip(subsets, seeds) if k == seed]
            reseeded = TrainConfig(**{**recipe.to_dict(), "seed": seed})
            for first in range(0, len(mine), args.at_once):
                chunk = mine[first : first + args.at_once]
                with finetune_stacked(base, tok, chunk, reseeded) as adapters:
                    reports = evaluate_stacked(base, adapters, tok, target, evaluation)
                losses += [r.average("loss").mean for r in reports]
        return losses

    def one_stack() -> list[float]:
        """The utility's map: every seed in one stack, ``at_once`` slots."""
        utility = TrainEvalUtility(
            model_dir, target, recipe, evaluation, context=context, cache=False
        )
        return [
            r.report.average("loss").mean for r in utility.map(subsets, seeds=seeds)
        ]

    device = torch.device(context.device_name)
    print(
        f"{len(subsets)} finetunes ({args.seeds} seeds; steps: "
        f"{sorted(set(steps), reverse=True)}), {args.at_once} adapters at once, "
        f"{model_dir.name} on {device} ({context.dtype_name})"
    )
    print("| way | training forwards | seconds |")
    print("|---|---|---|")
    results = {}
    for name, fn in (("stacks per seed", per_seed), ("one stack, slots", one_stack)):
        passes[0] = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        results[name] = (passes[0], seconds, losses)
        print(f"| {name} | {passes[0]} | {seconds:.1f} |")
    (old_n, old_s, old_l), (new_n, new_s, new_l) = results.values()
    diff = max(abs(a - b) / abs(a) for a, b in zip(old_l, new_l))
    print(
        f"ratio: {old_n / new_n:.2f}x fewer forwards, {old_s / new_s:.2f}x the speed; "
        f"largest relative difference of a target loss {diff:.1e}"
    )


if __name__ == "__main__":
    main()
