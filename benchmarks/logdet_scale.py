"""Greedy log-det at scale: wall time against this machine's arithmetic bound.

The greedy needs n·k·D multiply-adds at least (every pick updates every row's q_i).
This script measures the machine's GEMM rate in the same run, derives the bound
``n·k·D / rate`` and reports ``time / bound``, plus peak RSS. The rows are written to a
float32 memmap in a temp dir, so the engine's streaming path (row blocks) is what runs.

    python benchmarks/logdet_scale.py --quick                 # n=20000 D=512 k=2000
    python benchmarks/logdet_scale.py                         # n=100000 D=1024 k=10000
    python benchmarks/logdet_scale.py --n 50000 --k 5000 --out scale.json
    python benchmarks/logdet_scale.py --device cuda           # torch GEMM rate on a GPU

``--device cuda`` only measures the GPU's float64 GEMM rate (the engine itself runs on
the CPU with numpy); it is skipped with a message when torch has no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np


def gemm_rate(dtype=np.float64, size: int = 4096, repeats: int = 3) -> float:
    """Best-of measured multiply-adds per second of a square GEMM."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    a @ b
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return size**3 / best


def panel_rate(dim: int, cols: int = 128, rows: int = 8192, repeats: int = 3) -> float:
    """Multiply-adds per second of the refresh shape (row block × D @ D × cols)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((rows, dim))
    b = rng.standard_normal((dim, cols))
    a @ b
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return rows * dim * cols / best


def cuda_rate(size: int = 8192) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    a = torch.randn(size, size, dtype=torch.float64, device="cuda")
    a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    a @ a
    torch.cuda.synchronize()
    return size**3 / (time.perf_counter() - t0)


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="n=20000 D=512 k=2000")
    ap.add_argument("--conflict-weight", type=float, default=0.0)
    ap.add_argument(
        "--strategy", default="exact", choices=["exact", "lazy", "stochastic"]
    )
    ap.add_argument(
        "--data",
        default="gaussian",
        choices=["gaussian", "lowrank"],
        help="isotropic rows (hardest for lazy bounds) or a decaying "
        "spectrum with heavy-tailed norms (closer to gradients)",
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    n = args.n or (20_000 if args.quick else 100_000)
    dim = args.dim or (512 if args.quick else 1024)
    k = args.k or (2_000 if args.quick else 10_000)

    from harp.selectors.logdet import default_alpha, greedy_logdet

    result: dict = {
        "n": n,
        "dim": dim,
        "k": k,
        "strategy": args.strategy,
        "conflict_weight": args.conflict_weight,
        "data": args.data,
        "cpus": os.cpu_count(),
    }
    if args.device == "cuda":
        rate = cuda_rate()
        if rate is None:
            print("no CUDA device (or no torch): skipping the GPU measurement")
            result["cuda_gemm_madds_per_s"] = None
        else:
            result["cuda_gemm_madds_per_s"] = rate
            print(f"cuda float64 GEMM: {2 * rate / 1e9:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.f32")
        mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, dim))
        rng = np.random.default_rng(args.seed)
        if args.data == "lowrank":
            scales = (1.0 + np.arange(dim)) ** -0.75
        for start in range(0, n, 8192):  # write in blocks: never the whole matrix
            stop = min(start + 8192, n)
            blk = rng.standard_normal((stop - start, dim))
            if args.data == "lowrank":
                blk *= scales * rng.lognormal(0.0, 0.5, size=(stop - start, 1))
            mm[start:stop] = blk
        mm.flush()
        del mm
        feats = np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
        rss_before = peak_rss_mib()
        alpha = default_alpha(feats)
        t0 = time.perf_counter()
        trace = greedy_logdet(
            feats,
            k,
            alpha=alpha,
            conflict_weight=args.conflict_weight,
            strategy=args.strategy,
        )
        seconds = time.perf_counter() - t0
        rss = peak_rss_mib()
        del feats

    rate64 = gemm_rate(np.float64)
    rate32 = gemm_rate(np.float32)
    panel = panel_rate(dim)
    madds = float(n) * k * dim
    bound = madds / rate64
    result.update(
        {
            "alpha": alpha,
            "picks": int(len(trace)),
            "seconds": seconds,
            "objective": float(trace.objective[-1]) if len(trace) else 0.0,
            "evaluations": trace.evaluations,
            "gemm_f64_madds_per_s": rate64,
            "gemm_f32_madds_per_s": rate32,
            "panel_f64_madds_per_s": panel,
            "madds": madds,
            "bound_seconds": bound,
            "time_over_bound": seconds / bound,
            "time_over_panel_bound": seconds / (madds / panel),
            "peak_rss_mib": rss,
            "peak_rss_before_mib": rss_before,
            "features_mib": n * dim * 4 / 2**20,
            "U_mib": k * dim * 8 / 2**20,
        }
    )
    print(
        f"n={n} D={dim} k={k} ({args.data}, {args.strategy}, "
        f"lambda={args.conflict_weight}) picks={len(trace)}"
    )
    print(
        f"time {seconds:.1f}s   GEMM f64 {2 * rate64 / 1e9:.1f} GFLOP/s "
        f"(f32 {2 * rate32 / 1e9:.1f}; refresh shape f64 {2 * panel / 1e9:.1f})"
    )
    print(
        f"bound n*k*D/rate = {bound:.1f}s   time/bound = {seconds / bound:.2f} "
        f"(vs refresh-shape rate: {result['time_over_panel_bound']:.2f})"
    )
    print(
        f"peak RSS {rss:.0f} MiB (before the greedy {rss_before:.0f}; features "
        f"{result['features_mib']:.0f} MiB on disk, U {result['U_mib']:.0f} MiB)"
    )
    print(
        f"exact evaluations outside refreshes: {trace.evaluations:,} "
        f"(naive greedy ~{n * k:,})"
    )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
