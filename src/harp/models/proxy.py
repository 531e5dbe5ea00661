"""The tiny Llama-style proxy model that harp builds and pretrains itself on the CPU.

No weights can be downloaded on the machines harp is tested on, so tests, the demo
and the synthetic benchmark use a ~0.86M-parameter Llama with a character vocabulary
(:func:`harp.models.build_char_tokenizer`), pretrained from scratch in seconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harp.core.errors import ParameterError
from harp.core.hashing import fingerprint
from harp.core.io import atomic_directory, atomic_write_json
from harp.nn.threads import apply_thread_policy

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

    from harp.core.records import ExampleSet

__all__ = [
    "PROXY_MARKER",
    "ProxyConfig",
    "build_proxy",
    "ensure_proxy",
    "pretrain_proxy",
    "proxy_fingerprint",
]

logger = logging.getLogger(__name__)


#: File in a proxy folder recording what it was built from.
PROXY_MARKER = "harp-proxy.json"


@dataclass(frozen=True)
class ProxyConfig:
    """Shape of the proxy model (a ``LlamaConfig`` in miniature).

    The defaults give 0.86M parameters (4 layers, hidden 128, 4 heads, MLP 384,
    tied embeddings over a ~100-character vocabulary), the size whose CPU costs
    DESIGN §4 was calibrated on: pretraining 600 steps × 32 rows in ~20–40 s and a
    LoRA train-evaluate call in a few seconds on two cores.

    Parameters
    ----------
    hidden_size : int, default 128
        Model width.
    num_layers : int, default 4
        Decoder layers.
    num_heads : int, default 4
        Attention heads (``hidden_size`` must be divisible by it).
    num_kv_heads : int or None, default None
        Key/value heads for grouped-query attention; None means ``num_heads``.
    intermediate_size : int, default 384
        Width of the SwiGLU MLP.
    max_position_embeddings : int, default 256
        Longest sequence (characters + BOS/EOS) the model handles.
    rope_theta : float, default 10000.0
        RoPE base.
    tie_word_embeddings : bool, default True
        Share the input embedding and the output head.
    extra_chars : str, default ""
        Characters beyond printable ASCII that get their own token.
    attn_implementation : str, default "sdpa"
        transformers attention backend (``"sdpa"`` or ``"eager"``).

    Examples
    --------
    >>> ProxyConfig().hidden_size
    128
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 384
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    extra_chars: str = ""
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(
                    f"{name}={value!r} is not allowed; expected an integer >= 1"
                )
        if self.hidden_size % self.num_heads:
            raise ParameterError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}; pick sizes with hidden_size % num_heads "
                "== 0"
            )
        kv = self.num_kv_heads
        if kv is not None and (kv < 1 or self.num_heads % kv):
            raise ParameterError(
                f"num_kv_heads={kv!r} is not allowed; expected a divisor of "
                f"num_heads={self.num_heads} or None"
            )
        if self.max_position_embeddings < 8:
            raise ParameterError(
                f"max_position_embeddings={self.max_position_embeddings!r} is not "
                "allowed; expected an integer >= 8"
            )
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ParameterError(
                f"attn_implementation={self.attn_implementation!r} is not allowed; "
                "expected one of sdpa, eager"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


def build_proxy(
    config: ProxyConfig | None = None,
    seed: int = 0,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Build a randomly initialised proxy model and its character tokenizer.

    Parameters
    ----------
    config : ProxyConfig or None, default None
        The model shape; None uses :class:`ProxyConfig` defaults.
    seed : int, default 0
        Seed of the weight initialisation (the caller's global torch RNG state is
        saved and restored).
    tokenizer : PreTrainedTokenizerBase or None, default None
        Another tokenizer (a real model's, or :func:`build_bpe_tokenizer`'s): the
        model's vocabulary is sized to it. None builds the character tokenizer.

    Returns
    -------
    model : transformers.LlamaForCausalLM
        float32, in ``eval()`` mode.
    tokenizer : transformers.PreTrainedTokenizerFast
        From :func:`build_char_tokenizer`; the model's vocabulary matches it.

    Examples
    --------
    >>> model, tok = build_proxy(ProxyConfig(hidden_size=32, num_layers=1,
    ...                                      num_heads=2, intermediate_size=64))
    >>> model.config.vocab_size == len(tok)
    True
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harp.models.tokenizer import build_char_tokenizer

    config = ProxyConfig() if config is None else config
    if tokenizer is None:
        tokenizer = build_char_tokenizer(config.extra_chars)
    if tokenizer.pad_token_id is None:
        # A real tokenizer without a pad token (Llama's) pads with its EOS.
        tokenizer.pad_token = tokenizer.eos_token
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads or config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,  # type: ignore[call-arg]  # read as a kwarg
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
        use_cache=True,
    )
    llama_config._attn_implementation = config.attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config)
    model = model.to(torch.float32)  # type: ignore[arg-type]  # a narrow stub
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.eval()
    return model, tokenizer


def pretrain_proxy(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet | Sequence[str],
    *,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    loss_on: str = "response",
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.01,
    max_length: int | None = None,
    progress: bool = False,
) -> Any:
    """Pretrain the proxy (all parameters) as a causal LM on formatted examples.

    Examples are rendered with the same template as finetuning and evaluation
    (:func:`harp.training.format_prompt` + response + EOS); plain strings are used
    as they are (BOS + text + EOS). Batches are drawn from a seeded permutation,
    AdamW runs with linear warm-up and cosine decay, and the global torch RNG is
    seeded inside a fork (the caller's RNG state is untouched), so the same call
    gives bit-identical weights.

    The loss is on **response tokens** by default (prompt tokens labelled -100, as in
    finetuning). The proxy's job is to be a base model that already *has* some
    skills, cheaply; in the synthetic skills world the prompts are mostly random
    strings whose characters are unpredictable (~log 26 nats each), so an all-token
    loss spends most of its gradient on irreducible noise. Measured on 2 CPU cores,
    600 steps × 32 rows of a 4-task mixture: all-token loss left the response loss at
    2.6 nats/char, response-only reached 1.5. Pass ``loss_on="all"`` for a base that
    models whole texts (plain strings are always trained on all tokens).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The model to train, in place (e.g. from :func:`build_proxy`).
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    examples : ExampleSet or sequence of str
        Training rows (formatted with the prompt template) or raw texts.
    steps : int, default 600
        Optimiser steps.
    batch_size : int, default 32
        Rows per step.
    lr : float, default 3e-3
        Peak learning rate.
    seed : int, default 0
        Seed of batch order (and of any dropout).
    loss_on : {"response", "all"}, default "response"
        Tokens that carry the loss for an ExampleSet (plain strings: all tokens).
    warmup_ratio : float, default 0.05
        Fraction of steps of linear warm-up.
    weight_decay : float, default 0.01
        AdamW weight decay.
    max_length : int or None, default None
        Longest row in tokens; None uses ``max_position_embeddings``.
    progress : bool, default False
        Show a rich progress bar.

    Returns
    -------
    transformers.PreTrainedModel
        ``model`` (trained in place), in ``eval()`` mode.

    Raises
    ------
    harp.core.errors.NumericalError
        When the loss becomes NaN or infinite (with the batch's example ids).
    harp.core.errors.ParameterError
        For a bad ``loss_on``, ``steps`` or ``batch_size``, or no examples.
    """
    from harp.core.records import ExampleSet
    from harp.nn.encode import encode_examples, encode_texts, pad_token_id
    from harp.nn.loop import train_loop

    if loss_on not in ("all", "response"):
        raise ParameterError(
            f"loss_on={loss_on!r} is not allowed; expected one of all, response"
        )
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name}={value!r} is not allowed; expected >= 1")
    if len(examples) == 0:
        raise ParameterError("examples is empty; pretraining needs rows")
    if max_length is None:
        max_length = int(getattr(model.config, "max_position_embeddings", 1024))
    if isinstance(examples, ExampleSet):
        enc = encode_examples(
            tokenizer,
            examples,
            max_length=max_length,
            response_only=(loss_on == "response"),
        )
        rows = list(zip(enc.indices, enc.input_ids, enc.labels))
        ids = [examples[i].id for i, _, _ in rows]
    else:
        rows = encode_texts(tokenizer, list(examples), max_length=max_length)
        ids = [f"text[{i}]" for i, _, _ in rows]
    train_loop(
        model,
        [(input_ids, labels) for _, input_ids, labels in rows],
        ids,
        pad_id=pad_token_id(tokenizer),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_ratio=warmup_ratio,
        schedule="cosine",
        weight_decay=weight_decay,
        max_grad_norm=1.0,
        seed=seed,
        progress=progress,
        description="pretraining proxy",
    )
    return model


def proxy_fingerprint(directory: Path) -> str:
    """The fingerprint a proxy folder's marker records (what it was built from)."""
    return json.loads((Path(directory) / PROXY_MARKER).read_text())["fingerprint"]


def ensure_proxy(
    corpus: ExampleSet,
    directory: Path,
    *,
    seed: int,
    pretrain: dict[str, Any],
    progress: bool = False,
) -> Path:
    """Build and pretrain the proxy on ``corpus`` unless ``directory`` already holds it.

    The folder is reused only when its marker file records the same corpus hash, model
    shape and pretraining arguments; otherwise it is rebuilt. Writing goes to a
    temporary sibling folder that is renamed at the end, so a crash never leaves a
    half-saved model that a rerun would trust. Pretraining runs on the CPU whatever
    the run's device (the proxy is tiny, and its cache must not depend on where it
    was built); :func:`harp.models.load_model` then places it.

    Parameters
    ----------
    corpus : ExampleSet
        Pretraining rows.
    directory : Path
        The proxy's folder.
    seed : int
        Seed of the initialisation and the pretraining.
    pretrain : dict
        Arguments of :func:`pretrain_proxy` (``steps``, ``batch_size``…).
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    Path
        ``directory``, holding a loadable model folder.
    """
    from harp.models.loading import save_model

    config = ProxyConfig()
    key = fingerprint(
        "proxy",
        content=corpus.content_hash(),
        params={"model": config.to_dict(), "pretrain": pretrain},
        seed=seed,
    )
    marker = directory / PROXY_MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text())["fingerprint"] == key:
                logger.info("reusing the pretrained proxy in %s", directory)
                return directory
        except (ValueError, KeyError):
            pass
    logger.info(
        "pretraining the proxy model (%s steps; cached for reruns)",
        pretrain.get("steps", "default"),
    )
    start = time.perf_counter()
    model, tokenizer = build_proxy(config, seed=seed)
    apply_thread_policy(model)
    model = pretrain_proxy(
        model, tokenizer, corpus, seed=seed, progress=progress, **pretrain
    )
    # A stale or foreign proxy is replaced only once the new one is whole, and two
    # runs building the same proxy at once each write their own temporary folder.
    with atomic_directory(directory, overwrite=True) as tmp:
        save_model(model, tokenizer, tmp)
        atomic_write_json(
            tmp / PROXY_MARKER,
            {
                "fingerprint": key,
                "model": config.to_dict(),
                "pretrain": pretrain,
                "seed": seed,
                "corpus_rows": len(corpus),
                "seconds": round(time.perf_counter() - start, 2),
            },
        )
    return directory
