"""Greedy log-det: harp's engine against submodlib's LogDeterminantFunction.

Both maximise f(S) = log det(I + α G_S G_Sᵀ) on the same seeded random rows. submodlib
works on a dense n × n kernel: with ``sijs = α G Gᵀ`` and ``lambdaVal = 1`` its
kernel is ``L = sijs + 1·I`` on the diagonal (``memoizedD = sqrt(K_ii + λ)``) and
``sijs`` off it, so ``log det(L_S)`` is exactly our objective (its kernel is stored
as float32).

    pip install "harp-select[bench]"          # submodlib-py
    python benchmarks/logdet_vs_submodlib.py  # n=5000 D=256 k=500
    python benchmarks/logdet_vs_submodlib.py --optimizer LazyGreedy --out r.json

Reported: both objectives evaluated by the same ``slogdet``, their relative difference,
both wall times (submodlib's includes building the kernel: the GEMM, ``tolist`` and the
C++ copy), the speed ratio and the overlap of the two pick sets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def slogdet_objective(G: np.ndarray, picks, alpha: float) -> float:
    S = G[np.asarray(picks, dtype=np.int64)].astype(np.float64)
    sign, val = np.linalg.slogdet(np.eye(len(S)) + alpha * S @ S.T)
    assert sign > 0
    return float(val)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--optimizer", default="NaiveGreedy", choices=["NaiveGreedy", "LazyGreedy"]
    )
    ap.add_argument("--strategy", default="exact", choices=["exact", "lazy"])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    from harp.selectors.logdet import default_alpha, greedy_logdet

    rng = np.random.default_rng(args.seed)
    G = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    alpha = default_alpha(G)

    t0 = time.perf_counter()
    ours = greedy_logdet(G, args.k, alpha=alpha, strategy=args.strategy)
    t_ours = time.perf_counter() - t0

    try:
        from submodlib import LogDeterminantFunction
    except ImportError as err:  # pragma: no cover - benchmark only
        raise SystemExit(
            f"submodlib is not installed ({err}); pip install 'harp-select[bench]'"
        ) from None
    t0 = time.perf_counter()
    Gd = G.astype(np.float64)
    kernel = alpha * (Gd @ Gd.T)
    fn = LogDeterminantFunction(n=args.n, mode="dense", lambdaVal=1.0, sijs=kernel)
    t_kernel = time.perf_counter() - t0
    res = fn.maximize(
        budget=args.k,
        optimizer=args.optimizer,
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    t_sub = time.perf_counter() - t0
    sub_picks = [int(i) for i, _ in res]

    f_ours = slogdet_objective(G, ours.indices, alpha)
    f_sub = slogdet_objective(G, sub_picks, alpha)
    overlap = len(set(sub_picks) & set(ours.indices.tolist())) / max(1, args.k)
    same_prefix = 0
    for a, b in zip(sub_picks, ours.indices.tolist()):
        if a != b:
            break
        same_prefix += 1
    out = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "seed": args.seed,
        "alpha": alpha,
        "optimizer": args.optimizer,
        "strategy": args.strategy,
        "objective_ours": f_ours,
        "objective_submodlib": f_sub,
        "objective_ours_tracked": float(ours.objective[-1]),
        "objective_rel_diff": abs(f_ours - f_sub) / abs(f_sub),
        "seconds_ours": t_ours,
        "seconds_submodlib": t_sub,
        "seconds_submodlib_kernel": t_kernel,
        "speed_ratio": t_sub / t_ours,
        "pick_overlap": overlap,
        "identical_prefix": same_prefix,
        "evaluations_ours": ours.evaluations,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    print(f"n={args.n} D={args.dim} k={args.k} alpha={alpha:.4g}")
    print(
        f"objective  ours {f_ours:.10f}  submodlib {f_sub:.10f}  "
        f"rel.diff {out['objective_rel_diff']:.2e}"
    )
    print(
        f"seconds    ours {t_ours:.3f}  submodlib {t_sub:.3f} "
        f"(kernel {t_kernel:.3f})  ratio {out['speed_ratio']:.1f}x"
    )
    print(f"picks      overlap {overlap:.3f}  identical prefix {same_prefix}/{args.k}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
