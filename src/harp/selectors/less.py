"""LESS (Xia et al., 2024) and a gradient-norm baseline, on projected LoRA gradients."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from harp.data._records import ExampleSet
from harp.selectors._base import BaseSelector, Interval, Options, ranked_order
from harp.selectors._registry import register

__all__ = ["GradNormSelector", "LESSSelector"]

log = logging.getLogger(__name__)

_COMMON_CONSTRAINTS: dict[str, list] = {
    "budget": ["budget"],
    "seed": ["seed"],
    "model": [None, str, Path],
    "dim": [Interval(int, 0, None)],
    "projection": [Options("rademacher", "gaussian")],
    "warmup_fraction": [Interval(float, 0.0, 1.0, closed="right")],
    "warmup_epochs": [Interval(float, 0.0, None, closed="neither")],
    "n_checkpoints": [Interval(int, 1, None)],
    "batch_size": [Interval(int, 1, None)],
    "max_length": [Interval(int, 8, None)],
    "cache_dir": [str, Path],
    "progress": ["boolean"],
}


def warmup_checkpoints(
    model_dir: str | Path,
    pool: ExampleSet,
    cache_dir: str | Path,
    *,
    fraction: float = 0.05,
    epochs: float = 4.0,
    n_checkpoints: int = 1,
    batch_size: int = 16,
    seed: int | None = 0,
    progress: bool = False,
) -> list:
    """The LoRA warm-up every gradient-based method takes its gradients from.

    LESS's recipe: LoRA on every linear layer, trained on a seeded ``fraction`` of the
    pool for ``epochs``, ``n_checkpoints`` checkpoints. Cached under
    ``cache_dir/warmup`` by fingerprint, so LESS, SPICE, Fisher, DPP and HARP's
    gradient features share one run when their settings agree.

    Returns
    -------
    list of Checkpoint
        In training order.
    """
    from harp.training import TrainConfig
    from harp.training.warmup import warmup

    result = warmup(
        model_dir,
        pool,
        Path(cache_dir) / "warmup",
        fraction=fraction,
        config=TrainConfig(
            epochs=epochs, batch_size=batch_size, seed=seed, lora_target_modules=None
        ),
        n_checkpoints=n_checkpoints,
        seed=seed,
        by_fingerprint=True,
        progress=progress,
    )
    return result.checkpoints


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class _GradientSelector(BaseSelector):
    """Shared plumbing: model choice, LESS warm-up, gradient features per checkpoint."""

    uses_model = True

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        model: str | Path | None = None,
        dim: int = 8192,
        projection: str = "rademacher",
        warmup_fraction: float = 0.05,
        warmup_epochs: float = 4.0,
        n_checkpoints: int = 4,
        batch_size: int = 16,
        max_length: int = 256,
        cache_dir: str | Path = ".harp-cache",
        progress: bool = False,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.model = model
        self.dim = dim
        self.projection = projection
        self.warmup_fraction = warmup_fraction
        self.warmup_epochs = warmup_epochs
        self.n_checkpoints = n_checkpoints
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache_dir = cache_dir
        self.progress = progress

    def _prepare(self, pool: ExampleSet):
        from harp.models.choice import resolve_model

        cache = Path(self.cache_dir)
        model_dir = resolve_model(
            self.model, pool, cache_dir=cache, seed=self.seed, progress=self.progress
        )
        checkpoints = warmup_checkpoints(
            model_dir,
            pool,
            cache,
            fraction=self.warmup_fraction,
            epochs=self.warmup_epochs,
            n_checkpoints=self.n_checkpoints,
            batch_size=self.batch_size,
            seed=self.seed,
            progress=self.progress,
        )
        return model_dir, checkpoints

    def _features(self, model_dir, examples: ExampleSet, checkpoint, optimizer: str):
        from harp.features.extract import extract_gradient_features

        store = extract_gradient_features(
            model_dir,
            examples,
            Path(self.cache_dir) / "features",
            checkpoint=checkpoint,
            dim=self.dim,
            projection=self.projection,
            seed=self.seed,
            optimizer=optimizer,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
        )
        return store


@register
class LESSSelector(_GradientSelector):
    """LESS: rows whose Adam-preconditioned gradient points where the target's does.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Rows to select.
    seed : int or None, default=0
        Seed of the warm-up subset, the warm-up training and the projection.
    model : str, Path or None, default=None
        A local Hugging Face causal-LM folder, or ``"proxy"``/None for the built-in
        proxy model pretrained on the pool (cached).
    dim : int, default=8192
        Random-projection dimension of the gradients (0 keeps them whole).
    projection : {"rademacher", "gaussian"}, default="rademacher"
        Projection matrix entries.
    warmup_fraction : float, default=0.05
        Share of the pool the warm-up LoRA training sees (LESS uses 5%).
    warmup_epochs : float, default=4.0
        Warm-up epochs over that share.
    n_checkpoints : int, default=4
        Warm-up checkpoints whose gradients are scored (LESS: one per epoch).
    batch_size : int, default=16
        Rows per training step and per per-sample-gradient batch.
    max_length : int, default=256
        Token limit of a row.
    cache_dir : str or Path, default=".harp-cache"
        Where the proxy, the warm-up checkpoints and the feature stores are cached.
    progress : bool, default=False
        Show progress bars.

    Attributes
    ----------
    selection_ : Selection
        Top rows by score; ``scores`` holds every row's score and ``cost`` the
        number of per-example gradients computed.
    domain_scores_ : ndarray of shape (n_pool, n_domains)
        Per target domain, the learning-rate-weighted sum over checkpoints of the
        cosine between the row's preconditioned gradient and the domain's mean target
        gradient.
    domains_ : tuple of str
        Target domains, in the column order of ``domain_scores_``.

    Notes
    -----
    For checkpoint :math:`i` with learning rate :math:`\\eta_i`, pool row :math:`z`
    with Adam-preconditioned projected gradient :math:`\\Gamma_i(z)` and target
    domain :math:`d` with plain projected gradients :math:`g_i(z')`:
    :math:`s_d(z) = \\sum_i \\eta_i \\cos(\\Gamma_i(z), \\bar g_{i,d})`, where
    :math:`\\bar g_{i,d}` is the mean of the unit target gradients of :math:`d`; the
    score is :math:`\\max_d s_d(z)` so that a small domain is not drowned by a large
    one. Cost: one per-example gradient of every pool and target row per checkpoint.

    References
    ----------
    Xia, Malladi, Gururangan, Arora, Chen. "LESS: Selecting Influential Data for
    Targeted Instruction Tuning", ICML 2024, arXiv 2402.04333.

    Examples
    --------
    Not run here: it pretrains the proxy model first (about 80 s on 2 CPU cores).

    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = LESSSelector(dim=1024).fit(suite.pool, suite.target)  # doctest: +SKIP
    """

    name = "less"
    needs_target = True
    _parameter_constraints = dict(_COMMON_CONSTRAINTS)

    def _select(self, pool, target, budget, rng):
        model_dir, checkpoints = self._prepare(pool)
        by_domain = target.by_domain()
        domains = tuple(by_domain)
        scores = np.zeros((len(pool), len(domains)), dtype=np.float64)
        for ckpt in checkpoints:
            pool_store = self._features(model_dir, pool, ckpt, "adam")
            target_store = self._features(model_dir, target, ckpt, "sgd")
            t = _unit_rows(target_store.read().astype(np.float64))
            means = _unit_rows(
                np.stack([t[idx].mean(axis=0) for idx in by_domain.values()])
            )
            # Stream the pool: memory stays bounded by the block, not the pool.
            for start, block in pool_store.iter_blocks(8192):
                g = _unit_rows(block.astype(np.float64))
                scores[start : start + len(g)] += float(ckpt.mean_lr) * (g @ means.T)
        self.domain_scores_ = scores
        self.domains_ = domains
        final = scores.max(axis=1)
        order = ranked_order(final)[:budget]
        passes = (len(pool) + len(target)) * len(checkpoints)
        return order, final, None, {"gradient_passes": passes, "rows_scored": len(pool)}


@register
class GradNormSelector(_GradientSelector):
    """Gradient-norm baseline: the rows with the largest gradient at the warm-up model.

    The score of a row is the learning-rate-weighted sum over warm-up checkpoints of
    the norm of its projected plain (SGD) LoRA gradient: large-gradient rows are the
    ones the model finds hardest, a common "informativeness" heuristic. No target is
    used.

    Parameters
    ----------
    budget, seed, model, dim, projection, warmup_fraction, warmup_epochs
        As for :class:`LESSSelector`.
    n_checkpoints, batch_size, max_length, cache_dir, progress
        As for :class:`LESSSelector`.

    Attributes
    ----------
    selection_ : Selection
        The rows with the largest scores; ``scores`` holds every row's score.

    See Also
    --------
    LESSSelector : the same gradients, scored against a target.

    Examples
    --------
    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = GradNormSelector(budget=100, dim=1024).fit(suite.pool)  # doctest: +SKIP
    """

    name = "grad-norm"
    _parameter_constraints = dict(_COMMON_CONSTRAINTS)

    def _select(self, pool, target, budget, rng):
        model_dir, checkpoints = self._prepare(pool)
        scores = np.zeros(len(pool), dtype=np.float64)
        for ckpt in checkpoints:
            store = self._features(model_dir, pool, ckpt, "sgd")
            for start, block in store.iter_blocks(8192):
                norms = np.linalg.norm(block.astype(np.float64), axis=1)
                scores[start : start + len(block)] += float(ckpt.mean_lr) * norms
        order = ranked_order(scores)[:budget]
        passes = len(pool) * len(checkpoints)
        return (
            order,
            scores,
            None,
            {"gradient_passes": passes, "rows_scored": len(pool)},
        )
