"""harp on one GPU at real scale: every GPU path measured side by side in one run.

Builds its own random-init Llama (0.37B: hidden 1024, 24 layers, 16 heads,
intermediate 2816, vocab 32,000; bf16 weights on a GPU) with a rank-16 LoRA adapter on
every linear layer, rows of 256 tokens, and measures in one process:

1. **bound**: a plain batched forward + backward of the summed loss (batch 64): the
   pace no per-example method can beat (ex/s);
2. **per-example gradients** projected to D = 8192 with the factored projection
   (``per_sample_gradients`` + ``FactoredProjector``), fixed batches and packed by a
   token budget: ex/s and the ratio to the bound;
3. **LESS's loop**: one forward + backward per example (unprojected): ex/s and our
   ratio to it;
4. **the dense projection** (a Rademacher matrix of ``in_dim × 8192``, generated
   block by block) against the factored one: seconds per 16 rows (the dense one is
   timed on one block and extrapolated);
5. **the log-det engine** (torch, on the device) at n = 1M, D = 8192, k = 10k with
   bf16 storage: seconds, and the ratio to ``n·k·D`` multiply-adds at the GEMM rate
   of the engine's dtype measured here;
6. **a HARP leaf evaluation** (100 rows, 3 epochs, batch 8, the loss of 200 target
   rows) through ``TrainEvalUtility``, and **a round of 16 leaves**: one after
   another, with the adapters trained together in one batched forward
   (``adapters_at_once``, 8 by default on a GPU; the target losses compared with
   the ones in turn), and over local worker processes sharing the GPU.

Run on a GPU machine from the source tree (no install, no internet)::

    PYTHONPATH=src python3 benchmarks/gpu_suite.py            # about 5 minutes
    PYTHONPATH=src python3 benchmarks/gpu_suite.py --quick    # a minute on a CPU

It prints one table and writes the numbers as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {
    "full": dict(
        hidden=1024,
        layers=24,
        heads=16,
        intermediate=2816,
        vocab=32000,
        tokens=256,
        bound_batch=64,
        grad_rows=512,
        grad_batch=32,
        max_tokens=16384,
        loop_rows=24,
        dim=8192,
        logdet_n=1_000_000,
        logdet_d=8192,
        logdet_k=10_000,
        compare_n=100_000,
        compare_d=1024,
        compare_k=10_000,
        leaf_rows=100,
        target_rows=200,
        round_leaves=16,
        workers=2,
    ),
    "quick": dict(
        hidden=64,
        layers=2,
        heads=4,
        intermediate=128,
        vocab=500,
        tokens=64,
        bound_batch=16,
        grad_rows=64,
        grad_batch=16,
        max_tokens=1024,
        loop_rows=8,
        dim=512,
        logdet_n=20_000,
        logdet_d=256,
        logdet_k=200,
        compare_n=5000,
        compare_d=64,
        compare_k=500,
        leaf_rows=20,
        target_rows=20,
        round_leaves=4,
        workers=2,
        adapters_at_once=4,
    ),
}


def _examples(n: int, tokens: int, seed: int) -> Any:
    """Rows of about ``tokens`` characters (the char tokenizer: a token each)."""
    from harp.data import ExampleSet

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "

    def text(k: int) -> str:
        return "".join(rng.choice(letters) for _ in range(k))

    response = max(4, tokens // 5)
    prompt = tokens - response - 16  # the template and BOS/EOS take the rest
    return ExampleSet.from_records(
        [
            {"prompt": text(prompt), "response": text(response), "domain": "d"}
            for _ in range(n)
        ]
    )


def _model(size: dict[str, Any], folder: Path, context: Any) -> tuple[Any, Any]:
    """A random-init Llama of the size asked for, saved and loaded like a user's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harp.models import build_char_tokenizer, load_model, save_model

    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"],
        max_position_embeddings=max(512, size["tokens"] * 2),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    save_model(LlamaForCausalLM(config), tokenizer, folder)
    return load_model(folder, context=context)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: Any, repeat: int = 1) -> float:
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def bound(model: Any, tok: Any, rows: Any, size: dict[str, Any], device: Any) -> float:
    """Examples per second of a plain batched forward + backward of the summed loss
    (harp's training step: logits at the labelled positions only)."""
    from harp.nn import collate, encode_examples, forward_losses, pad_token_id

    enc = encode_examples(tok, rows.subset(range(size["bound_batch"])), max_length=512)
    batch = collate(list(zip(enc.input_ids, enc.labels)), pad_token_id(tok), device)

    def step() -> None:
        forward_losses(model, batch[0], batch[2]).mean().backward()
        model.zero_grad(set_to_none=True)

    return size["bound_batch"] / _timed(step, device, repeat=3)


def gradients(
    model: Any, tok: Any, rows: Any, projector: Any, device: Any, **kw: Any
) -> float:
    """Examples per second of projected per-example gradients (to the host)."""
    from harp.features.gradients import per_sample_gradients

    def run() -> None:
        for _ in per_sample_gradients(model, tok, rows, projector=projector, **kw):
            pass

    return len(rows) / _timed(run, device)


def logdet(size: dict[str, Any], device: Any, storage: str) -> dict[str, Any]:
    """The torch engine at n × D with bf16 storage, and the GEMM rate it runs at."""
    import torch

    from harp.selectors.logdet_torch import TorchGreedyLogDet

    n, d, k = size["logdet_n"], size["logdet_d"], size["logdet_k"]
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if storage == "bf16" else torch.float32
    # A decaying spectrum, as gradients have.
    scale = (1.0 / torch.arange(1, d + 1, device=device, dtype=torch.float32)).sqrt()
    g = torch.empty((n, d), dtype=dtype, device=device)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        block = torch.randn((stop - start, d), generator=gen, device=device) * scale
        g[start:stop] = block.to(dtype)
    engine = TorchGreedyLogDet(
        d, alpha=1.0 / float(scale.square().sum()), device=device, storage=storage
    )
    _sync(device)
    start = time.perf_counter()
    trace = engine.select(g, k)
    _sync(device)
    seconds = time.perf_counter() - start
    # The GEMM rate of the refresh's arithmetic (the engine's accumulation dtype).
    a = torch.randn((8192, d), device=device, dtype=engine.accum)
    b = torch.randn((d, 512), device=device, dtype=engine.accum)
    per = _timed(lambda: a @ b, device, repeat=5)
    rate = 8192 * d * 512 / per
    del g
    return {
        "storage": storage,
        "seconds": seconds,
        "picks": float(len(trace)),
        # Exact gain evaluations: with the picks, what splits the time when it misses.
        "evaluations": float(trace.evaluations),
        "gemm_macs_per_s": rate,
        "ratio_to_gemm_bound": seconds / (n * k * d / rate),
    }


def logdet_compare(size: dict[str, Any], device: Any) -> dict[str, float]:
    """numpy's engine on the host's cores against the torch engine, same data (fp32).

    The issue's comparison point (n = 100k, D = 1024, k = 10k): the picks must agree
    (ties aside) and the objectives match.
    """
    import numpy as np
    import torch

    from harp.selectors.logdet import default_alpha, greedy_logdet
    from harp.selectors.logdet_torch import TorchGreedyLogDet

    n, d, k = size["compare_n"], size["compare_d"], size["compare_k"]
    rng = np.random.default_rng(0)
    g = rng.standard_normal((n, d), dtype=np.float32)
    g *= (1.0 / np.arange(1, d + 1, dtype=np.float32)) ** 0.5
    alpha = default_alpha(g)
    start = time.perf_counter()
    reference = greedy_logdet(g, k, alpha=alpha)
    numpy_seconds = time.perf_counter() - start
    engine = TorchGreedyLogDet(d, alpha=alpha, device=device, storage="fp32")
    rows = torch.from_numpy(g).to(device)
    _sync(device)
    start = time.perf_counter()
    trace = engine.select(rows, k)
    _sync(device)
    torch_seconds = time.perf_counter() - start
    same = int(np.sum(reference.indices == trace.indices[: len(reference.indices)]))
    first_split = int(
        np.argmax(reference.indices != trace.indices)
        if same < len(reference.indices)
        else len(reference.indices)
    )
    return {
        "numpy_seconds": numpy_seconds,
        "torch_seconds": torch_seconds,
        "speedup": numpy_seconds / torch_seconds,
        "same_position_picks": same / max(1, len(reference.indices)),
        "first_different_pick": float(first_split),
        "objective_rel_diff": abs(
            float(trace.objective[-1]) - float(reference.objective[-1])
        )
        / abs(float(reference.objective[-1])),
        "host_threads": float(torch.get_num_threads()),
    }


def leaf_calls(
    folder: Path, size: dict[str, Any], context: Any, rounds: int, workers: bool
) -> dict[str, float]:
    """One HARP leaf evaluation and one round of ``rounds`` leaves, via the utility:
    in turn, with the adapters trained together (the default on a GPU) and, unless
    skipped, over worker processes sharing the device."""
    from harp.core.context import GPU_ADAPTERS_AT_ONCE
    from harp.execution import LocalExecutor
    from harp.training import EvalConfig, TrainConfig, TrainEvalUtility

    target = _examples(size["target_rows"], size["tokens"], seed=2)
    recipe = TrainConfig(
        epochs=3.0,
        batch_size=8,
        lr=2e-4,
        max_length=2 * size["tokens"],
        lora_target_modules=("all-linear",),
    )
    scoring = EvalConfig(metrics=("loss",), batch_size=64)
    leaves = [
        _examples(size["leaf_rows"], size["tokens"], seed=10 + i)
        for i in range(rounds + 1)
    ]

    def utility(**changes: Any) -> Any:
        fresh = context.replace(cache_dir=Path(tempfile.mkdtemp()), **changes)
        made = TrainEvalUtility(folder, target, recipe, scoring, context=fresh)
        made.base_report  # noqa: B018 - loads the model, scores the base once
        return made

    in_turn = utility(adapters_at_once=1)
    start = time.perf_counter()
    in_turn(leaves[0])
    one = time.perf_counter() - start
    start = time.perf_counter()
    expected = in_turn.map(leaves[1:])
    sequential = time.perf_counter() - start
    together = size.get("adapters_at_once", GPU_ADAPTERS_AT_ONCE)
    stacked_utility = utility(adapters_at_once=together)
    start = time.perf_counter()
    stacked = stacked_utility.map(leaves[1:])
    stacked_seconds = time.perf_counter() - start
    differences = [
        abs(a.report.average("loss").mean - b.report.average("loss").mean)
        / abs(b.report.average("loss").mean)
        for a, b in zip(stacked, expected)
    ]
    out = {
        "leaf_seconds": one,
        "round_sequential_seconds": sequential,
        "round_stacked_seconds": stacked_seconds,
        "adapters_at_once": float(together),
        "stacked_max_rel_diff": max(differences),
    }
    if workers:
        pooled = utility(adapters_at_once=1)
        start = time.perf_counter()
        with LocalExecutor(workers=size["workers"], threads_per_task=2) as executor:
            pooled.map(leaves[1:], executor)
        out["round_workers_seconds"] = time.perf_counter() - start
    return out


#: What ``--skip`` can leave out (a part's result keys start with its name).
PARTS = ("bound", "grads", "loop", "dense", "logdet", "compare", "leaves", "workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", default="gpu_suite.json", help="JSON of the numbers")
    parser.add_argument(
        "--skip",
        default="",
        help=f"comma-separated parts to skip ({', '.join(PARTS)}; workers: the "
        "round over worker processes)",
    )
    parser.add_argument(
        "--leaves", type=int, default=None, help="leaves in the round (default 16)"
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    # A misspelt part would be measured anyway: on a lent GPU, minutes lost.
    if skip - set(PARTS):
        parser.error(
            f"--skip: no part {', '.join(sorted(skip - set(PARTS)))}; "
            f"the parts are {', '.join(PARTS)}"
        )
    import torch

    from harp.core.context import RunContext
    from harp.features.factored import FactoredProjector
    from harp.features.gradients import gradient_dim, per_sample_gradients_loop
    from harp.features.projection import RandomProjector
    from harp.models import attach_lora
    from harp.nn import seeded

    size = SIZES["quick" if args.quick else "full"]
    rounds = args.leaves or size["round_leaves"]
    context = RunContext(device=args.device, cache_dir=Path(tempfile.mkdtemp()))
    device = context.torch_device()
    dtype = context.dtype_name
    results: dict[str, Any] = {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "size": "quick" if args.quick else "full",
        "round_leaves": rounds,
        "failed": {},
    }
    out = Path(args.out)
    t0 = time.perf_counter()

    def part(name: str, fn: Any) -> None:
        """Measure one part; a failure is recorded and the others still run."""
        if name.split("_")[0] in skip:  # "grads" skips grads_ex_s and its packing
            return
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # one broken part must not lose the others
            import traceback

            traceback.print_exc()
            results["failed"][name] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] FAILED: {exc}", flush=True)
        else:
            results[name] = value
            print(f"[{name}] {value} ({time.perf_counter() - start:.0f} s)", flush=True)
        results["total_seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(results, indent=1))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    folder = Path(tempfile.mkdtemp()) / "model"
    base, tok = _model(size, folder, context)
    with seeded(0):
        model = attach_lora(base, r=16, alpha=32, target_modules="all-linear")
    n_params = sum(p.numel() for p in model.parameters())
    in_dim = gradient_dim(model)
    results.update(parameters=n_params, lora_coordinates=in_dim)
    print(
        f"{results['name']} ({device}, {dtype}): {n_params / 1e6:.0f}M parameters, "
        f"{in_dim / 1e6:.2f}M LoRA coordinates, rows of {size['tokens']} tokens",
        flush=True,
    )
    rows = _examples(size["grad_rows"], size["tokens"], seed=1)
    factored = FactoredProjector.for_model(model, size["dim"], seed=0)
    results["factored_dim"] = factored.out_dim

    part("bound_ex_s", lambda: bound(model, tok, rows, size, device))
    part(
        "grads_ex_s",
        lambda: gradients(
            model, tok, rows, factored, device, batch_size=size["grad_batch"]
        ),
    )
    part(
        "grads_packed_ex_s",
        lambda: gradients(
            model,
            tok,
            rows,
            factored,
            device,
            batch_size=4 * size["grad_batch"],
            max_tokens=size["max_tokens"],
        ),
    )
    loop_rows = rows.subset(range(size["loop_rows"]))

    def loop() -> float:
        def once() -> None:
            for _ in per_sample_gradients_loop(model, tok, loop_rows):
                pass

        return size["loop_rows"] / _timed(once, device)

    part("loop_ex_s", loop)

    def dense() -> dict[str, float]:
        # The dense projection of 16 formed gradients: one block timed, extrapolated.
        projector = RandomProjector(in_dim, size["dim"], seed=0, max_cache_bytes=0)
        formed = torch.randn(16, in_dim, device=device)
        per_block = _timed(lambda: projector.project_blocks(formed, [0]), device)
        return {
            "dense_s_per_16": per_block * projector.n_blocks,
            "factored_s_per_16": _timed(lambda: factored.project(formed), device),
        }

    part("dense", dense)
    model = base = None  # free the GPU for what follows
    part(
        "logdet",
        lambda: logdet(size, device, "bf16" if device.type == "cuda" else "fp32"),
    )
    part("compare", lambda: logdet_compare(size, device))
    part(
        "leaves",
        lambda: leaf_calls(folder, size, context, rounds, "workers" not in skip),
    )
    _print(results, size)
    print(f"numbers -> {out}")
    if results["failed"]:
        sys.exit(
            f"{len(results['failed'])} part(s) failed: {sorted(results['failed'])}"
        )


def _print(r: dict[str, Any], size: dict[str, Any]) -> None:
    """The table of whatever parts finished."""
    lines: list[tuple[str, str, str]] = []
    bound = r.get("bound_ex_s", math.nan)
    if "bound_ex_s" in r:
        lines.append(("plain batched fwd+bwd (the bound)", f"{bound:.1f} ex/s", ""))
    for key, label in (
        ("grads_ex_s", f"per-example grads, factored to {r.get('factored_dim')}"),
        ("grads_packed_ex_s", "  the same, packed by tokens"),
    ):
        if key in r:
            lines.append((label, f"{r[key]:.1f} ex/s", f"{r[key] / bound:.2f}x bound"))
    if "loop_ex_s" in r:
        ours = r.get("grads_ex_s", math.nan) / r["loop_ex_s"]
        lines.append(
            (
                "one backward per example (LESS)",
                f"{r['loop_ex_s']:.1f} ex/s",
                f"ours {ours:.1f}x",
            )
        )
    if "dense" in r:
        lines += [
            (
                f"dense projection to {size['dim']} (16 rows)",
                f"{r['dense']['dense_s_per_16']:.2f} s",
                "",
            ),
            (
                "factored projection (16 formed rows)",
                f"{r['dense']['factored_s_per_16']:.4f} s",
                "",
            ),
        ]
    if "logdet" in r:
        ld = r["logdet"]
        lines.append(
            (
                f"log-det n={size['logdet_n']} D={size['logdet_d']} "
                f"k={size['logdet_k']} ({ld['storage']} rows)",
                f"{ld['seconds']:.1f} s",
                f"{ld['ratio_to_gemm_bound']:.2f}x GEMM bound; "
                f"{ld['evaluations'] / max(ld['picks'], 1):.0f} evaluations a pick",
            )
        )
    if "compare" in r:
        c = r["compare"]
        what = f"n={size['compare_n']} D={size['compare_d']} k={size['compare_k']}"
        lines += [
            (
                f"log-det {what}, numpy on the host",
                f"{c['numpy_seconds']:.1f} s",
                f"{c['host_threads']:.0f} threads",
            ),
            (
                "  the same, torch engine on the device",
                f"{c['torch_seconds']:.1f} s",
                f"{c['speedup']:.1f}x; picks same "
                f"{100 * c['same_position_picks']:.1f}%, objective rel. diff "
                f"{c['objective_rel_diff']:.1e}",
            ),
        ]
    if "leaves" in r:
        lv = r["leaves"]
        n = r["round_leaves"]
        lines += [
            ("one HARP leaf evaluation", f"{lv['leaf_seconds']:.1f} s", ""),
            (
                f"a round of {n} leaves, in turn",
                f"{lv['round_sequential_seconds']:.1f} s",
                "",
            ),
            (
                f"  the same, {lv['adapters_at_once']:.0f} adapters trained at once",
                f"{lv['round_stacked_seconds']:.1f} s",
                f"{lv['round_sequential_seconds'] / lv['round_stacked_seconds']:.2f}x,"
                f" {lv['round_stacked_seconds'] / n:.1f} s per leaf;"
                f" target loss rel. diff {lv['stacked_max_rel_diff']:.1e}",
            ),
        ]
        if "round_workers_seconds" in lv:
            pooled = lv["round_workers_seconds"]
            lines.append(
                (
                    f"  in turn, over {size['workers']} worker processes",
                    f"{pooled:.1f} s",
                    f"{lv['round_sequential_seconds'] / pooled:.2f}x",
                )
            )
    width = max((len(a) for a, _, _ in lines), default=0)
    print()
    for a, b, c in lines:
        print(f"{a:<{width}}  {b:>12}  {c}")
    for name, why in r["failed"].items():
        print(f"{name}: FAILED ({why})")
    print(f"\ntotal {r.get('total_seconds', 0):.0f} s on {r['name']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
