"""HARP leaf evaluations per minute on Ray with 1 and with 2 workers, and the ratio.

The same leaves (consecutive chunks of a synthetic skills pool) are measured by the
HARP oracle (LoRA finetune of a small random Llama + target evaluation) as the tasks
of one round, once on a local Ray cluster of 1 CPU and once of 2 CPUs
(``cpus_per_task=1``: one torch thread per task), each time with a fresh cache. The
base model's evaluation and the workers' start-up (importing torch, loading the
model) happen before the clock starts: the figures are steady-state throughput.

    python benchmarks/ray_leaf_throughput.py                 # 8 leaves x 20 rows
    python benchmarks/ray_leaf_throughput.py --leaves 16 --train-steps 80

A control line gives the machine's own parallel speed-up at that moment (plain
CPU-bound processes): on a shared machine it bounds what any executor can reach.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path


def _warm(model_dir: str, _: int) -> int:
    """Import torch and harp's trainer and read the model once, in a worker."""
    from harp.core.context import RunContext
    from harp.models.loading import load_model

    load_model(model_dir, context=RunContext(device="cpu"))
    return os.getpid()


def _spin(_: int) -> float:
    start = time.perf_counter()
    x = 0
    for i in range(10_000_000):
        x += i
    return time.perf_counter() - start


def _cpu_headroom(n: int) -> float:
    """Throughput of ``n`` concurrent CPU-bound processes over one (the machine's own
    parallel speed-up right now; ``n`` on an idle machine with ``n`` free cores)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(n) as pool:
        pool.map(_spin, range(n))  # start-up
        one = pool.map(_spin, [0])[0]
        many = pool.map(_spin, range(n))
    return n * one / max(many)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=8)
    parser.add_argument("--leaf-rows", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import ray
    import torch

    from harp.core.context import RunContext
    from harp.data.synthetic import make_skills_suite
    from harp.execution import RayExecutor
    from harp.models import ProxyConfig, build_proxy, save_model
    from harp.selectors.harp.oracle import LeafOracle
    from harp.training import EvalConfig, TrainConfig, TrainEvalUtility

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="ray-leaf-bench-"))
    config = ProxyConfig(
        hidden_size=args.hidden,
        num_layers=2,
        num_heads=2,
        intermediate_size=2 * args.hidden,
        max_position_embeddings=256,
    )
    model, tok = build_proxy(config, seed=args.seed)
    model_dir = work / "model"
    save_model(model, tok, model_dir)
    suite = make_skills_suite(
        n_pool=args.leaves * args.leaf_rows,
        n_target_per_domain=8,
        n_pretrain=10,
        seed=args.seed,
    )
    leaves = [
        suite.pool.subset(range(i * args.leaf_rows, (i + 1) * args.leaf_rows))
        for i in range(args.leaves)
    ]
    train = TrainConfig(
        **{**TrainConfig(seed=args.seed).to_dict(), "steps": args.train_steps}
    )
    print(
        f"{args.leaves} leaves x {args.leaf_rows} rows, {args.train_steps} LoRA "
        f"steps per call, model hidden={args.hidden}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    rates: dict[int, float] = {}
    effects = {}
    for n in [int(x) for x in args.workers.split(",")]:
        # On the CPU (one torch thread per task), with a fresh cache per run.
        cache = work / f"cache-{n}"
        context = RunContext(device="cpu", seed=args.seed, cache_dir=cache)
        utility = TrainEvalUtility(
            model_dir,
            suite.target,
            train,
            EvalConfig(seed=args.seed, metrics=("loss",)),
            context=context,
        )
        oracle = LeafOracle(utility, bootstrap=50, seed=args.seed)
        oracle.base_scores  # noqa: B018 - the base evaluation, before the clock
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        try:
            executor = RayExecutor(cpus_per_task=1)
            pids = executor.map(
                functools.partial(_warm, str(model_dir)), range(2 * n), desc="warm-up"
            )
            start = time.perf_counter()
            results = oracle.measure(leaves, executor)
            seconds = time.perf_counter() - start
        finally:
            ray.shutdown()
        assert oracle.calls == args.leaves and oracle.hits == 0
        rates[n] = 60.0 * args.leaves / seconds
        effects[n] = np.stack([r.effect for r in results])
        print(
            f"{n} Ray worker(s) ({len(set(pids))} processes): {args.leaves} leaf "
            f"evaluations in {seconds:.1f}s = {rates[n]:.1f} per minute "
            f"(mean call {oracle.seconds / args.leaves:.2f}s)"
        )
    ns = sorted(rates)
    if len(ns) >= 2:
        lo, hi = ns[0], ns[-1]
        same = all(np.array_equal(effects[lo], effects[n]) for n in ns)
        print(
            f"ratio {hi} vs {lo} workers: {rates[hi] / rates[lo]:.2f}x "
            f"(effects identical across worker counts: {same})"
        )
        print(
            f"control: {hi} plain CPU-bound processes vs 1 on this machine now: "
            f"{_cpu_headroom(hi):.2f}x"
        )


if __name__ == "__main__":
    main()
