"""Which model a model-based method (LESS, SPICE, gradient features) runs on.

``--model ./path`` names a local Hugging Face model folder; ``--model proxy`` (or no
``--model`` at all) uses harp's built-in tiny proxy model, pretrained **on the pool
itself** (its prompts and responses, response-token loss) and cached, so that
gradient-based selection works on a machine with no model weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from harp._utils.hashing import fingerprint
from harp.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from harp.data import ExampleSet

__all__ = ["resolve_model", "PROXY", "DEFAULT_PRETRAIN_STEPS", "DEFAULT_MAX_ROWS"]

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
    pool: ExampleSet,
    *,
    cache_dir: str | Path = ".harp-cache",
    seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    max_rows: int = DEFAULT_MAX_ROWS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> Path:
    """The model folder a model-based method should load.

    Parameters
    ----------
    model : str or Path or None
        A local Hugging Face model folder (checked: exists, ``config.json``,
        weights, no unrequested remote code); the string ``"proxy"`` for the
        built-in proxy model pretrained on ``pool`` (a folder literally named
        ``proxy`` must be written ``./proxy``); or None, which means ``"proxy"``
        and logs one INFO line saying so.
    pool : ExampleSet
        The candidate pool; the proxy's pretraining corpus (at most ``max_rows``
        rows, a seeded sample of larger pools). Unused for a folder.
    cache_dir : str or Path, default ".harp-cache"
        Where the proxy is kept, as ``proxy-<fingerprint>``; the fingerprint covers
        the pool's content hash, the sampling and pretraining sizes and the seed, so
        a rerun reuses it and a different pool gets its own folder.
    seed : int, default 0
        Seed of the row sample, the proxy's initialisation and its pretraining.
    pretrain_steps : int, default 1000
        Pretraining steps of the proxy.
    max_rows : int, default 6000
        Most pool rows in the pretraining corpus.
    batch_size : int, default 32
        Rows per pretraining step.
    trust_remote_code : bool, default False
        Accept a folder whose ``config.json`` maps to custom code.
    progress : bool, default False
        Show a progress bar while pretraining the proxy.

    Returns
    -------
    Path
        A model folder that :func:`harp.models.load_model` reads.

    Raises
    ------
    harp.errors.ModelError
        When a given folder is missing, not a folder, or lacks ``config.json`` or
        weights.
    harp.errors.ParameterError
        For the proxy with an empty pool, or bad sizes.

    Examples
    --------
    >>> resolve_model("no/such/model", pool=None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    harp.errors.ModelError: no/such/model: model directory not found; ...
    """
    from harp.models.loading import _check_model_dir

    if isinstance(model, Path) or (isinstance(model, str) and model != PROXY):
        path = Path(model).expanduser()
        _check_model_dir(path, trust_remote_code)
        return path
    if model is not None and model != PROXY:
        raise ParameterError(
            f"model={model!r} is not allowed; expected a model folder, 'proxy' or None"
        )
    _check_positive("pretrain_steps", pretrain_steps)
    _check_positive("max_rows", max_rows)
    _check_positive("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed={seed!r} is not allowed; expected an integer >= 0")
    if pool is None or len(pool) == 0:
        raise ParameterError(
            "the pool is empty; the built-in proxy is pretrained on the pool, so it "
            "needs rows (or pass --model with a model folder)"
        )
    pretrain = {"steps": pretrain_steps, "batch_size": batch_size}
    key = fingerprint(
        "proxy-on-pool",
        content=pool.content_hash(),
        params={"max_rows": max_rows, "pretrain": pretrain},
        seed=seed,
    )
    directory = Path(cache_dir).expanduser() / f"proxy-{key[:16]}"
    if model is None:
        logger.info(
            "no --model given: using the built-in proxy model pretrained on the pool "
            "(cached in %s)",
            directory,
        )
    return _ensure_pool_proxy(
        pool,
        directory,
        seed=seed,
        max_rows=max_rows,
        pretrain=pretrain,
        progress=progress,
    )


def _ensure_pool_proxy(
    pool: ExampleSet,
    directory: Path,
    *,
    seed: int,
    max_rows: int,
    pretrain: dict[str, int],
    progress: bool,
) -> Path:
    """Sample the corpus and hand it to :func:`harp.bench.demo.ensure_proxy`."""
    import numpy as np

    from harp.bench.demo import ensure_proxy

    corpus = pool
    if len(pool) > max_rows:
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(len(pool), max_rows, replace=False))
        corpus = pool.subset(int(i) for i in picks)
    logger.debug(
        "proxy on %d pool rows, %d steps x %d -> %s",
        len(corpus),
        pretrain["steps"],
        pretrain["batch_size"],
        directory,
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    return ensure_proxy(
        corpus, directory, seed=seed, pretrain=pretrain, progress=progress
    )
