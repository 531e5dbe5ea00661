"""Logits at the labelled positions only against the whole logits, side by side.

harp's one loss (:func:`harp.nn.forward_losses`) has the model's output layer compute
logits only where a token carries a loss: the response of a training row, the option
of a scored (prompt, option) pair. With a large vocabulary the whole logits
``(batch, length, vocab)`` are a large share of a step: SmolLM2-135M's output layer is
576 x 49,152, a fifth of the model's multiply-adds per token, and its fp32 logits,
log-softmax and their gradients are most of a step's memory.

This script measures, on one model and one device, in one process:

1. **a training step** (forward + backward, batch of 8 FLAN-CoT rows with their
   chain-of-thought answers, LoRA r=16 on every linear layer): whole logits and
   :func:`harp.nn.causal_lm_loss` against ``forward_losses(...).mean()``;
2. **option scoring** (inference, 64 (prompt, option) pairs of ECQA and CREAK
   questions): whole logits and :func:`harp.nn.token_losses` against
   ``forward_losses(...).row_sums()``;

each the median of ``--repeat`` timed runs after a warm-up, the ratio, the largest
difference of the losses and, on CUDA, the peak memory. ::

    python benchmarks/output_layer.py                       # the fetched SmolLM2-135M
    python benchmarks/output_layer.py --model DIR --device cuda --dtype bf16

The model is a folder (``harp fetch-model smollm2-135m-instruct`` puts SmolLM2 in
harp's cache, the default); the rows come from the shared data (``../shared/data``)
or, on a machine without it, from the suite that ``realtext_gpu.py pack`` exports
(``--data .device/realtext``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _rows(data: Path, train_rows: int, pairs: int) -> tuple[Any, Any]:
    """Training rows (CoT answers) and (prompt, option) pairs: from the shared data's
    FLAN-CoT files, or from a suite exported by ``harp.bench.suites.export_suite``
    (``pool.jsonl`` and ``target.jsonl``, as ``realtext_gpu.py pack`` writes)."""
    from harp.data import Example, ExampleSet, load_examples
    from harp.training.evaluate import option_pairs

    if (data / "pool.jsonl").is_file():
        train = load_examples(data / "pool.jsonl").subset(range(train_rows))
        sources = [load_examples(data / "target.jsonl")]
    else:
        flan = data / "flan_v2_cot"
        train = load_examples(flan / "strategyqa_train.tsv").subset(range(train_rows))
        sources = [load_examples(flan / f"{n}_train.tsv") for n in ("ecqa", "creak")]
    scored: list[Example] = []
    for k, source in enumerate(sources):
        quota = pairs * (k + 1) // len(sources)
        for example in source:
            if len(scored) >= quota:
                break
            scored += option_pairs([example])
    return train, ExampleSet(scored[:pairs])


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn: Any, device: Any, repeat: int) -> tuple[float, float, Any]:
    """Median seconds of ``fn()``, its peak memory (GiB, CUDA only), its last value."""
    import torch

    value = fn()  # warm-up
    times = []
    peak = float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        value = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    return statistics.median(times), peak, value


def main() -> None:
    import torch

    from harp.bench.suites import find_shared_data
    from harp.core.context import RunContext
    from harp.models import attach_lora, load_model
    from harp.models.fetch import fetched_model, model_cache
    from harp.nn import (
        causal_lm_loss,
        collate,
        encode_examples,
        forward_losses,
        model_device,
        pad_token_id,
        token_losses,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the fetched SmolLM2)")
    parser.add_argument(
        "--data", help="the shared data folder or an exported suite (default: found)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=8, help="training rows per step")
    parser.add_argument("--pairs", type=int, default=64, help="scored pairs per pass")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    model_dir = args.model or fetched_model("smollm2-135m-instruct", model_cache())
    if model_dir is None:
        sys.exit(
            "no model: pass --model DIR, or fetch SmolLM2 once with "
            "`harp fetch-model smollm2-135m-instruct`"
        )
    data = Path(args.data) if args.data else find_shared_data()
    if data is None:
        sys.exit("no shared data folder found: pass --data DIR")
    context = RunContext(device=args.device, dtype=args.dtype)
    model, tok = load_model(model_dir, context=context)
    model = attach_lora(model, r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    device = model_device(model)
    train, pairs = _rows(data, args.batch, args.pairs)
    pad = pad_token_id(tok)

    def batch(rows: Any, add_eos: bool) -> tuple[Any, Any]:
        enc = encode_examples(tok, rows, max_length=256, add_eos=add_eos)
        ids, _, labels = collate(list(zip(enc.input_ids, enc.labels)), pad, device)
        return ids, labels

    train_ids, train_labels = batch(train, True)
    pair_ids, pair_labels = batch(pairs, False)

    def step(narrow: bool) -> Any:
        model.zero_grad(set_to_none=True)
        if narrow:
            loss = forward_losses(model, train_ids, train_labels).mean()
        else:
            logits = model(input_ids=train_ids, use_cache=False).logits
            loss = causal_lm_loss(logits, train_labels)
        loss.backward()
        return loss.detach().float().cpu()

    def score(narrow: bool) -> Any:
        with torch.inference_mode():
            if narrow:
                sums = forward_losses(model, pair_ids, pair_labels).row_sums()
            else:
                logits = model(input_ids=pair_ids, use_cache=False).logits
                sums = token_losses(logits, pair_labels)[0].sum(dim=1)
        return sums.float().cpu()

    labelled = int((train_labels[:, 1:] != -100).sum())
    print(
        f"model {model_dir} on {device} ({context.dtype_name}); vocab "
        f"{model.config.vocab_size}, hidden {model.config.hidden_size}; training "
        f"batch {tuple(train_ids.shape)} with {labelled} labelled tokens; scoring "
        f"{tuple(pair_ids.shape)} with {int((pair_labels[:, 1:] != -100).sum())}"
    )
    print("| part | whole logits | labelled only | ratio | max loss diff | peak GiB |")
    print("|---|---|---|---|---|---|")
    for name, fn in (("training step", step), ("option scoring", score)):
        whole_s, whole_mem, whole = _measure(lambda: fn(False), device, args.repeat)
        narrow_s, narrow_mem, narrow = _measure(lambda: fn(True), device, args.repeat)
        diff = float((whole - narrow).abs().max())
        print(
            f"| {name} | {whole_s:.3f} s | {narrow_s:.3f} s | "
            f"{whole_s / narrow_s:.2f}x | {diff:.1e} | "
            + (
                f"{whole_mem:.2f} -> {narrow_mem:.2f} |"
                if device.type == "cuda"
                else "— |"
            )
        )


if __name__ == "__main__":
    main()
