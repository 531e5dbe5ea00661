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
   rows) through ``TrainEvalUtility``, and **a round of 16 leaves**, one after
   another and over local worker processes sharing the GPU.

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
        leaf_rows=20,
        target_rows=20,
        round_leaves=4,
        workers=2,
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
    """Examples per second of a plain batched forward + backward of the summed loss."""
    from harp.nn import collate, encode_examples, pad_token_id
    from harp.nn.loss import causal_lm_loss

    enc = encode_examples(tok, rows.subset(range(size["bound_batch"])), max_length=512)
    batch = collate(list(zip(enc.input_ids, enc.labels)), pad_token_id(tok), device)

    def step() -> None:
        logits = model(input_ids=batch[0], use_cache=False).logits
        causal_lm_loss(logits, batch[2]).backward()
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


def logdet(size: dict[str, Any], device: Any, storage: str) -> dict[str, float]:
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
        "seconds": seconds,
        "picks": float(len(trace)),
        "gemm_macs_per_s": rate,
        "ratio_to_gemm_bound": seconds / (n * k * d / rate),
    }


def leaf_calls(folder: Path, size: dict[str, Any], context: Any) -> dict[str, float]:
    """One HARP leaf evaluation and one round of leaves, through the utility."""
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
        for i in range(size["round_leaves"] + 1)
    ]
    utility = TrainEvalUtility(folder, target, recipe, scoring, context=context)
    utility.base_report  # noqa: B018 - loads the model, scores the base once
    start = time.perf_counter()
    utility(leaves[0])
    one = time.perf_counter() - start
    start = time.perf_counter()
    utility.map(leaves[1:])
    sequential = time.perf_counter() - start
    fresh = context.replace(cache_dir=Path(tempfile.mkdtemp()))
    parallel_utility = TrainEvalUtility(folder, target, recipe, scoring, context=fresh)
    parallel_utility.base_report  # noqa: B018
    start = time.perf_counter()
    with LocalExecutor(workers=size["workers"], threads_per_task=2) as executor:
        parallel_utility.map(leaves[1:], executor)
    parallel = time.perf_counter() - start
    return {
        "leaf_seconds": one,
        "round_sequential_seconds": sequential,
        "round_workers_seconds": parallel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", default="gpu_suite.json", help="JSON of the numbers")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip (logdet, leaves)"
    )
    args = parser.parse_args()
    import torch

    from harp.core.context import RunContext
    from harp.features.factored import FactoredProjector
    from harp.features.gradients import gradient_dim
    from harp.features.projection import RandomProjector
    from harp.models import attach_lora
    from harp.nn import seeded

    size = SIZES["quick" if args.quick else "full"]
    skip = set(filter(None, args.skip.split(",")))
    context = RunContext(device=args.device, cache_dir=Path(tempfile.mkdtemp()))
    device = context.torch_device()
    dtype = context.dtype_name
    results: dict[str, Any] = {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "size": "quick" if args.quick else "full",
    }
    t0 = time.perf_counter()
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

    results["bound_ex_s"] = bound(model, tok, rows, size, device)
    factored = FactoredProjector.for_model(model, size["dim"], seed=0)
    results["factored_dim"] = factored.out_dim
    results["grads_ex_s"] = gradients(
        model, tok, rows, factored, device, batch_size=size["grad_batch"]
    )
    results["grads_packed_ex_s"] = gradients(
        model,
        tok,
        rows,
        factored,
        device,
        batch_size=4 * size["grad_batch"],
        max_tokens=size["max_tokens"],
    )

    from harp.features.gradients import per_sample_gradients_loop

    loop_rows = rows.subset(range(size["loop_rows"]))

    def loop() -> None:
        for _ in per_sample_gradients_loop(model, tok, loop_rows):
            pass

    results["loop_ex_s"] = size["loop_rows"] / _timed(loop, device)

    # The dense projection of 16 formed gradients: one block timed, extrapolated.
    dense = RandomProjector(in_dim, size["dim"], seed=0, max_cache_bytes=0)
    x = torch.randn(16, in_dim, device=device)

    def one_block() -> None:
        dense.project_blocks(x, [0])

    results["dense_projection_s_per_16"] = _timed(one_block, device) * dense.n_blocks
    formed = torch.randn(16, in_dim, device=device)
    results["factored_projection_s_per_16"] = _timed(
        lambda: factored.project(formed), device
    )
    x = formed = model = base = None  # noqa: F841 - free the GPU for what follows
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if "logdet" not in skip:
        storage = "bf16" if device.type == "cuda" else "fp32"
        results["logdet"] = logdet(size, device, storage)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "leaves" not in skip:
        results["leaves"] = leaf_calls(folder, size, context)
    results["total_seconds"] = time.perf_counter() - t0
    _print(results, size)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"numbers -> {args.out}")


def _print(r: dict[str, Any], size: dict[str, Any]) -> None:
    bound = r["bound_ex_s"]
    lines = [
        ("plain batched fwd+bwd (the bound)", f"{bound:.1f} ex/s", ""),
        (
            f"per-example grads, factored to {r['factored_dim']}",
            f"{r['grads_ex_s']:.1f} ex/s",
            f"{r['grads_ex_s'] / bound:.2f}x bound",
        ),
        (
            "  the same, packed by tokens",
            f"{r['grads_packed_ex_s']:.1f} ex/s",
            f"{r['grads_packed_ex_s'] / bound:.2f}x bound",
        ),
        (
            "one backward per example (LESS)",
            f"{r['loop_ex_s']:.1f} ex/s",
            f"ours {r['grads_ex_s'] / r['loop_ex_s']:.1f}x",
        ),
        (
            f"dense projection to {size['dim']} (16 rows)",
            f"{r['dense_projection_s_per_16']:.2f} s",
            "",
        ),
        (
            "factored projection (16 formed rows)",
            f"{r['factored_projection_s_per_16']:.4f} s",
            "",
        ),
    ]
    if "logdet" in r:
        ld = r["logdet"]
        lines.append(
            (
                f"log-det n={size['logdet_n']} D={size['logdet_d']} "
                f"k={size['logdet_k']}",
                f"{ld['seconds']:.1f} s",
                f"{ld['ratio_to_gemm_bound']:.2f}x GEMM bound",
            )
        )
    if "leaves" in r:
        lv = r["leaves"]
        lines += [
            ("one HARP leaf evaluation", f"{lv['leaf_seconds']:.1f} s", ""),
            (
                f"a round of {size['round_leaves']} leaves, in turn",
                f"{lv['round_sequential_seconds']:.1f} s",
                "",
            ),
            (
                f"  the same, {size['workers']} worker processes",
                f"{lv['round_workers_seconds']:.1f} s",
                "",
            ),
        ]
    width = max(len(a) for a, _, _ in lines)
    print()
    for a, b, c in lines:
        print(f"{a:<{width}}  {b:>12}  {c}")
    print(f"\ntotal {r['total_seconds']:.0f} s on {r['name']}")
    if math.isfinite(bound):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
