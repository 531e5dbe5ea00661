"""Throughput of harp's batched per-example LoRA gradients (run on demand).

Compares, on the same model, data and projection:

- **ours**: ``per_sample_gradients`` (batched exact per-example gradients, hooks
  method) + projection;
- **vmap**: the same with ``method="vmap"`` (small model only);
- **(a) limit**: a plain batched forward+backward of the summed loss of the same
  batch (one gradient, not per example) + one projection of a ``(batch × in_dim)``
  random matrix — what any per-example method costs at best;
- **(b) LESS**: one forward+backward per example, projection every 16 examples
  (``per_sample_gradients_loop``);
- **factored**: ``per_sample_gradients`` with the factored projection (harp's default
  since issue 14: each layer's two sides projected inside the backward, no ``P``),
  to the same ``D``.

It also measures the peak RSS of ``per_sample_gradients`` (in fresh processes) for two
pool sizes 10× apart.

Usage::

    python benchmarks/gradient_throughput.py --quick
    python benchmarks/gradient_throughput.py --dim 8192 --threads 2
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from typing import Any


def _examples(n: int, seed: int = 0) -> Any:
    from harp.data import ExampleSet

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz     "

    def text(lo: int, hi: int) -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(lo, hi)))

    return ExampleSet.from_records(
        [{"prompt": text(10, 60), "response": text(10, 80)} for _ in range(n)]
    )


def _tiny() -> tuple[Any, Any]:
    from harp.models import ProxyConfig, build_proxy

    return build_proxy(ProxyConfig(), seed=0)


def _large(hidden: int, layers: int, vocab: int) -> tuple[Any, Any]:
    """A random-init Llama (~100M parameters at 768/12/32000), char tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harp.models import ProxyConfig, build_proxy

    _, tok = build_proxy(ProxyConfig(hidden_size=16, num_layers=1, num_heads=2))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=hidden * 4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    return model, tok


def _lora(model: Any) -> Any:
    import torch

    from harp.models import attach_lora

    torch.manual_seed(0)
    model = attach_lora(model, r=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    return model.eval()


#: Timed repetitions per measurement (the best one is reported).
REPEAT = 2


def _time(fn: Any) -> float:
    """Best wall time of :data:`REPEAT` runs of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _ours(model, tok, ex, bs, max_length, proj, method="hooks") -> None:
    from harp.features.gradients import per_sample_gradients

    for _ in per_sample_gradients(
        model,
        tok,
        ex,
        batch_size=bs,
        max_length=max_length,
        projector=proj,
        method=method,
    ):
        pass


def _less(model, tok, ex, max_length, proj) -> None:
    from harp.features.gradients import per_sample_gradients_loop

    for _ in per_sample_gradients_loop(
        model, tok, ex, max_length=max_length, projector=proj, project_every=16
    ):
        pass


def _limit(model, tok, ex, bs, max_length, proj, in_dim) -> None:
    """Plain batched forward+backward (summed loss) + one batched projection."""
    import torch

    from harp.nn.encode import collate, encode_examples, model_device, pad_token_id
    from harp.nn.loss import forward_losses

    fake = torch.randn(bs, in_dim)
    params = [p for p in model.parameters() if p.requires_grad]
    device, pad = model_device(model), pad_token_id(tok)
    for start in range(0, len(ex), bs):
        chunk = [ex[i] for i in range(start, min(start + bs, len(ex)))]
        enc = encode_examples(tok, chunk, max_length=max_length)
        ids, _, labels = collate(list(zip(enc.input_ids, enc.labels)), pad, device)
        for p in params:
            p.grad = None
        forward_losses(model, ids, labels).row_means().sum().backward()
        proj.project(fake[: len(chunk)])
    for p in params:
        p.grad = None


def _bench_model(label, model, tok, args, n, batch_sizes, dim, max_length, vmap):
    import torch

    from harp.features.factored import FactoredProjector
    from harp.features.gradients import gradient_dim
    from harp.features.projection import RandomProjector

    in_dim = gradient_dim(model)
    factored = FactoredProjector.for_model(model, dim, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    proj = RandomProjector(
        in_dim, dim, seed=0, max_cache_bytes=int(args.cache_gb * 2**30)
    )
    ex = _examples(n)
    print(
        f"\n## {label}: {n_params / 1e6:.2f}M params, LoRA dim {in_dim}, D={dim} "
        f"(P {proj.nbytes / 2**30:.2f} GiB, {'cached' if proj.cached else 'streamed'})"
        f", {n} examples, max_length {max_length}, {torch.get_num_threads()} threads",
        flush=True,
    )
    # warm-up (also builds the projection cache)
    _ours(model, tok, _examples(4, seed=1), 4, max_length, proj)
    t_less = _time(lambda: _less(model, tok, ex, max_length, proj))
    less = n / t_less
    rows = []
    header = "| batch | ours ex/s | vmap ex/s | (a) limit ex/s | (b) LESS ex/s "
    header += "| ours/(a) | ours/(b) | factored ex/s | factored/(a) |"
    print(header)
    print("|---" * 9 + "|")
    for bs in batch_sizes:
        ours = n / _time(lambda: _ours(model, tok, ex, bs, max_length, proj))
        limit = n / _time(lambda: _limit(model, tok, ex, bs, max_length, proj, in_dim))
        fac = n / _time(lambda: _ours(model, tok, ex, bs, max_length, factored))
        vm = (
            n / _time(lambda: _ours(model, tok, ex, bs, max_length, proj, "vmap"))
            if vmap
            else float("nan")
        )
        row = {
            "model": label,
            "batch": bs,
            "ours": ours,
            "vmap": vm,
            "limit": limit,
            "less": less,
            "factored": fac,
        }
        rows.append(row)
        vm_s = f"{vm:.1f}" if vmap else "–"
        print(
            f"| {bs} | {ours:.1f} | {vm_s} | {limit:.1f} | {less:.1f} "
            f"| {ours / limit:.2f} | {ours / less:.2f} | {fac:.1f} "
            f"| {fac / limit:.2f} |",
            flush=True,
        )
    return rows


def _rss_child(n: int, dim: int, max_length: int) -> None:
    """Run ours on the tiny proxy over ``n`` examples; print peak RSS (MiB)."""
    import torch

    from harp.features.gradients import gradient_dim, per_sample_gradients
    from harp.features.projection import RandomProjector

    torch.set_num_threads(1)
    model, tok = _tiny()
    model = _lora(model)
    proj = RandomProjector(gradient_dim(model), dim, seed=0, max_cache_bytes=2**31)
    ex = _examples(n)
    _ours(model, tok, _examples(4, seed=1), 4, 128, proj)  # builds the P cache
    before = _hwm_mib()
    total = 0
    for rows, _ in per_sample_gradients(
        model, tok, ex, batch_size=16, max_length=max_length, projector=proj
    ):
        total += len(rows)
    peak = _hwm_mib()
    print(
        json.dumps(
            {"n": total, "peak_rss_mib_after_setup": before, "peak_rss_mib": peak}
        )
    )


def _hwm_mib() -> float:
    """Peak resident set size of this process (MiB): VmHWM, else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs (minutes)")
    parser.add_argument("--dim", type=int, default=8192, help="projection dim D")
    parser.add_argument("--large-dim", type=int, default=None, help="D, large model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cache-gb", type=float, default=3.0, help="cache P up to")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="best of N timings")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is not None:
        _rss_child(args.rss_child, args.dim, 128)
        return

    import torch

    global REPEAT
    REPEAT = args.repeat
    torch.set_num_threads(args.threads)
    n_tiny = 64 if args.quick else 256
    n_large = 16 if args.quick else 64
    large_dim = args.large_dim or (1024 if args.quick else args.dim)
    model, tok = _tiny()
    _bench_model(
        "tiny proxy (ProxyConfig())",
        _lora(model),
        tok,
        args,
        n_tiny,
        (4, 8, 16, 32),
        args.dim,
        128,
        vmap=True,
    )
    if not args.skip_large:
        model, tok = _large(args.hidden, args.layers, args.vocab)
        _bench_model(
            f"random Llama h{args.hidden} L{args.layers} V{args.vocab}",
            _lora(model),
            tok,
            args,
            n_large,
            (4, 8, 16) if args.quick else (4, 8, 16, 32),
            large_dim,
            64,
            vmap=False,
        )
    print("\n## peak RSS of ours (tiny proxy, fresh process, batch 16)")
    pools = (100, 1000) if args.quick else (500, 5000)
    for n in pools:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(n), "--dim", str(args.dim)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
