"""`harp demo` on a quiet machine and beside CPU-bound jobs, measured in one run.

A shared workstation or CI runner is rarely idle. This runs the demo twice from an
empty output folder (so the proxy's pretraining is included both times): alone, then
beside ``--hogs`` busy-loop processes (default: one per core), and prints the wall
and CPU time of each and their ratios. CPU time is the demo process tree's user +
system time (``RUSAGE_CHILDREN``), so threads spinning for cores they do not get show
up as CPU time.

    python benchmarks/demo_busy.py                 # the default demo, ~15 minutes
    python benchmarks/demo_busy.py --size tiny     # the smoke demo, ~5 minutes
    python benchmarks/demo_busy.py --size tiny --compare   # also torch's own threads

``--compare`` adds the same two runs with ``HARP_THREADS=torch`` (harp's thread
policy off: what harp did before it had one), side by side; ``--workers auto,1``
runs the demo with its worker pool and without (every finetune in one process).

Issue 17's targets: the demo's CPU time beside the jobs within 1.5x of the quiet
run's; wall under 5 minutes quiet and under 10 minutes beside one job per core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOG = "while True: pass"


def run_demo(
    size: str, out: Path, threads: str | None, workers: str = "auto"
) -> dict[str, float]:
    """Wall and CPU seconds of one ``harp demo`` from an empty folder."""
    env = dict(os.environ)
    if threads is not None:
        env["HARP_THREADS"] = threads
    command = [sys.executable, "-m", "harp.app.cli", "demo", "--size", size]
    command += ["--workers", workers]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [*command, "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default", help="'default' or 'tiny'")
    parser.add_argument(
        "--hogs", type=int, default=os.cpu_count() or 1, help="busy-loop processes"
    )
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument(
        "--keep", type=Path, help="keep the demos' folders (results tables) here"
    )
    parser.add_argument(
        "--compare", action="store_true", help="also with HARP_THREADS=torch"
    )
    parser.add_argument(
        "--workers",
        default="auto",
        help="comma-separated --workers values of the demo to run side by side, "
        "e.g. auto,1 (1: every finetune in the demo's own process)",
    )
    args = parser.parse_args()
    policies: dict[str, tuple[str | None, str]] = {}
    for workers in args.workers.split(","):
        policies[f"--workers {workers}"] = (None, workers)
        if args.compare:
            policies[f"--workers {workers}, torch's threads"] = ("torch", workers)
    result: dict[str, object] = {
        "size": args.size,
        "cores": os.cpu_count(),
        "hogs": args.hogs,
    }
    print(f"harp demo --size {args.size}, {os.cpu_count()} cores")
    print(f"{'':44}{'wall':>8}{'CPU':>8}")
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.keep or temporary
        for name, (threads, workers) in policies.items():
            tag = f"{threads}-{workers}"
            folder = Path(scratch)
            quiet = run_demo(args.size, folder / f"quiet-{tag}", threads, workers)
            hogs = [
                subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)
            ]
            try:
                busy = run_demo(args.size, folder / f"busy-{tag}", threads, workers)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            wall_ratio = busy["wall_s"] / quiet["wall_s"]
            cpu_ratio = busy["cpu_s"] / quiet["cpu_s"]
            result[name] = {
                "quiet": quiet,
                "busy": busy,
                "wall_ratio": wall_ratio,
                "cpu_ratio": cpu_ratio,
            }
            rows = [
                (f"{name}, quiet", quiet["wall_s"], quiet["cpu_s"], "s"),
                (
                    f"{name}, beside {args.hogs} busy loop(s)",
                    busy["wall_s"],
                    busy["cpu_s"],
                    "s",
                ),
                (f"{name}, busy / quiet", wall_ratio, cpu_ratio, "x"),
            ]
            for label, wall, cpu, unit in rows:
                digits = 0 if unit == "s" else 2
                print(f"{label:44}{wall:>7.{digits}f}{unit}{cpu:>7.{digits}f}{unit}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
