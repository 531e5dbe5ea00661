r"""Empirical Bayes over the leaf tree: a posterior effect for every leaf and domain.

HARP measures a few leaves (finetune on the leaf, score every target domain) and has to
say something about all the others. Per domain, a normal–normal hierarchy does that:

.. math::

    y_g = \theta_g + e_g,\quad e_g \sim N(0, s_g^2) \quad (s_g^2 \text{ known}),\\
    \theta_g \sim N(\mu_{p(g)} + \beta c_g,\ \tau^2),\qquad
    \mu_p \sim N(m,\ \sigma^2).

Given the hyper-parameters, measurements in different parents are independent, so the
covariance of the measured effects is block diagonal (one block
:math:`D_p + \sigma^2 \mathbf{1}\mathbf{1}^\top` per parent, :math:`D = S + \tau^2 I`)
and every likelihood and posterior below costs :math:`O(L + m)` through the
Sherman–Morrison identity, never a dense :math:`m \times m` solve.

The mean and slope :math:`m, \beta` are estimated (flat prior), and their uncertainty
enters every variance. The variances :math:`\sigma^2, \tau^2` are by default
integrated over their posterior on a grid (``method="bayes"``): a search measures few
parents twice, and a plug-in estimate of :math:`\tau^2` from so few pairs runs low
enough that 90% intervals held 60–76% of the true effects on the skills suite.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from harp.core.errors import ParameterError

__all__ = ["Posterior", "empirical_bayes"]

log = logging.getLogger(__name__)

#: Variance floors, relative to the data's variance scale and absolute: keep
#: :math:`\tau^2, \sigma^2 > 0` so every covariance stays positive definite.
VAR_FLOOR_REL = 1e-8
VAR_FLOOR_ABS = 1e-12

#: Largest variance the optimiser tries, relative to the variance scale.
VAR_CEIL_REL = 1e4

#: When the data cannot tell :math:`\sigma^2` from :math:`\tau^2` (no parent with two
#: measured leaves, or fewer than two measured parents), the one that cannot be
#: estimated is set equal to the other, i.e. the total prior variance is split evenly.
TIED = "tied"

#: ``method="bayes"``: the variances' posterior on a log grid. A coarse grid of
#: ``GRID_COARSE`` points per free variance spans the whole range; a fine one of
#: ``GRID_FINE`` (``GRID_FINE_1D`` for one variance) per dimension covers the box
#: holding the coarse points within ``GRID_DROP`` log-units of the best; points whose
#: weight is under ``GRID_NEGLIGIBLE`` of the total are dropped.
GRID_COARSE = 16
GRID_FINE = 21
GRID_FINE_1D = 61
GRID_DROP = 20.0
GRID_NEGLIGIBLE = 1e-9

#: Grid points evaluated at once are capped so that an array of points x leaves holds
#: at most this many numbers (8 MiB of float64).
CHUNK_NUMBERS = 1 << 20

HYPER_KEYS = ("m", "sigma2", "tau2", "beta")
POOLINGS = ("hierarchical", "none")
METHODS = ("bayes", "reml", "ml")


@dataclass(frozen=True, eq=False)
class Posterior:
    """Posterior effects of every leaf in every domain.

    Attributes
    ----------
    mean : ndarray of float64, shape (L, n_domains)
        Posterior mean of each leaf's effect.
    var : ndarray of float64, shape (L, n_domains)
        Posterior variance (``inf`` in a domain where nothing was measured).
    measured : ndarray of bool, shape (L,)
        Leaves with a measurement.
    hyper : dict
        One list per key, one entry per domain: ``"m"`` (domain mean), ``"sigma2"``
        (parent-mean variance), ``"tau2"`` (leaf-around-parent variance), ``"beta"``
        (covariate slope), and ``"fit"`` (how the variances were obtained: ``"reml"``
        / ``"ml"``, ``"tied"`` for a one-dimensional fit with ``sigma2 == tau2``,
        ``"fixed"``, ``"default"`` with too few measurements, ``"none"`` without
        pooling, ``"empty"`` when nothing was measured).
    dof : float
        Degrees of freedom of the intervals. A plug-in fit (``method="reml"`` or
        ``"ml"``) estimates the variances from the measured parents, and a normal
        interval that ignores it covers less than it says: there ``dof`` is the
        number of parents with a measurement minus one and ``interval`` uses a
        Student-t quantile. ``inf`` (normal) when ``method="bayes"`` has integrated
        the variances' uncertainty into ``var`` already.

    Examples
    --------
    >>> import numpy as np
    >>> post = Posterior(mean=np.array([[0.1], [0.0]]), var=np.array([[0.01], [0.04]]),
    ...                  measured=np.array([True, False]), hyper={})
    >>> post.sd.ravel().tolist()
    [0.1, 0.2]
    >>> lo, hi = post.interval(0.9)
    >>> np.round(hi.ravel(), 4).tolist()
    [0.2645, 0.329]
    """

    mean: np.ndarray
    var: np.ndarray
    measured: np.ndarray
    hyper: dict
    dof: float = float("inf")

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return self.mean.shape[0]

    @property
    def n_domains(self) -> int:
        """Number of domains."""
        return self.mean.shape[1]

    @property
    def sd(self) -> np.ndarray:
        """Posterior standard deviation, shape (L, n_domains)."""
        return np.sqrt(self.var)

    def lower(self, z: float) -> np.ndarray:
        """``mean - z * sd``: a lower bound ``z`` standard deviations down."""
        return self.mean - z * self.sd

    def upper(self, z: float) -> np.ndarray:
        """``mean + z * sd``: an upper bound ``z`` standard deviations up."""
        return self.mean + z * self.sd

    def interval(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval of the posterior: (lower, upper).

        Normal when ``dof`` is infinite, Student-t with ``dof`` degrees of freedom
        otherwise (wider with few measured parents).
        """
        if not 0.0 < level < 1.0:
            raise ParameterError(
                f"Posterior.interval: level must be in (0, 1), got {level!r}"
            )
        from scipy.stats import norm, t

        q = 0.5 + level / 2
        z = float(norm.ppf(q) if not np.isfinite(self.dof) else t.ppf(q, self.dof))
        return self.lower(z), self.upper(z)


# ----------------------------------------------------------------------------- inputs


def _as_matrix(name: str, value: Any, n_leaves: int | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ParameterError(
            f"empirical_bayes: {name} must be (n_leaves, n_domains), got {arr.shape}"
        )
    if n_leaves is not None and arr.shape[0] != n_leaves:
        raise ParameterError(
            f"empirical_bayes: {name} has {arr.shape[0]} rows, expected one per leaf "
            f"({n_leaves})"
        )
    return arr


def _hyper_table(hyper: Mapping[str, Any] | None, n_domains: int) -> dict:
    """``hyper`` as {key: (n_domains,) float array with NaN = estimate}."""
    table = {k: np.full(n_domains, np.nan) for k in HYPER_KEYS}
    if hyper is None:
        return table
    unknown = set(hyper) - set(HYPER_KEYS)
    if unknown:
        raise ParameterError(
            f"empirical_bayes: hyper has unknown keys {sorted(unknown)}; "
            f"allowed: {list(HYPER_KEYS)}"
        )
    for key, value in hyper.items():
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n_domains, float(arr))
        if arr.shape != (n_domains,):
            raise ParameterError(
                f"empirical_bayes: hyper[{key!r}] must be a number or one value per "
                f"domain ({n_domains}), got shape {arr.shape}"
            )
        if key in ("sigma2", "tau2") and np.any(arr[np.isfinite(arr)] < 0):
            raise ParameterError(
                f"empirical_bayes: hyper[{key!r}] is a variance; it must be >= 0"
            )
        table[key] = arr
    return table


# ------------------------------------------------------------------ likelihood pieces


@dataclass(frozen=True, eq=False)
class _Likelihood:
    """The restricted or plain likelihood at K points (sigma2, tau2) of one domain,
    with the pieces its posterior reuses."""

    sigma2: np.ndarray  # (K,)
    tau2: np.ndarray  # (K,)
    value: np.ndarray  # (K,) minus the log-likelihood
    coef: np.ndarray  # (K, k) GLS estimates of the fixed effects
    xtx: np.ndarray  # (K, k, k) X' Sigma^-1 X: their precision
    inv_d: np.ndarray  # (K, m) 1 / (s2 + tau2)
    a: np.ndarray  # (K, G) sum of inv_d over each measured parent's leaves
    r: np.ndarray  # (K, m) residuals after the fixed effects


@dataclass(frozen=True, eq=False)
class _DomainData:
    """One domain's measured leaves, ready for the likelihood and the posterior.

    Given the variances, measurements in different parents are independent, so
    :math:`\\Sigma` is block diagonal with blocks :math:`D_p + \\sigma^2 \\mathbf 1
    \\mathbf 1^\\top` (:math:`D = S + \\tau^2 I`), inverted per block by
    Sherman–Morrison; every method takes K points (sigma2, tau2) at once.
    """

    idx: np.ndarray  # (m,) measured leaves
    resid: np.ndarray  # (m,) their effects net of the fixed (not estimated) prior mean
    s2: np.ndarray  # (m,) their noise variances
    x: np.ndarray  # (m, k) columns of the fixed effects to estimate, measured leaves
    x_all: np.ndarray  # (L, k) the same columns for every leaf
    prior_all: np.ndarray  # (L,) the fixed part of every leaf's prior mean
    starts: np.ndarray  # (G,) where each measured parent's leaves start (sorted)
    used: np.ndarray  # (G,) measured parent -> parent id
    parent: np.ndarray  # (L,) leaf -> parent id
    n_parents: int

    def _quad(
        self, u: np.ndarray, v: np.ndarray, inv_d: np.ndarray, shrink: np.ndarray
    ) -> np.ndarray:
        r""":math:`U^\top \Sigma^{-1} V` per point: u (K, m, p), v (K, m, q) ->
        (K, p, q). Per block :math:`\Sigma_p^{-1} = D^{-1} - \sigma^2
        D^{-1}\mathbf 1 \mathbf 1^\top D^{-1} / (1 + \sigma^2 a_p)`; ``shrink`` (K, G)
        holds :math:`\sigma^2/(1+\sigma^2 a_p)`."""
        ud = u * inv_d[:, :, None]
        bu = self.per_parent(ud)
        bv = self.per_parent(v * inv_d[:, :, None])
        return (
            ud.transpose(0, 2, 1) @ v
            - (bu * shrink[:, :, None]).transpose(0, 2, 1) @ bv
        )

    def per_parent(self, values: np.ndarray) -> np.ndarray:
        """Sums over each measured parent's leaves along axis 1: (K, m, ...) ->
        (K, G, ...) (the measured leaves are sorted by parent)."""
        return np.add.reduceat(values, self.starts, axis=1)

    def likelihood(
        self, sigma2: np.ndarray, tau2: np.ndarray, reml: bool
    ) -> _Likelihood:
        """Minus the (restricted) log-likelihood at each point, the fixed effects
        estimated by GLS. REML also integrates them out (flat prior), which removes
        ML's downward bias of the variances when few parents are measured."""
        sigma2, tau2 = np.atleast_1d(sigma2), np.atleast_1d(tau2)
        n_points, k = len(sigma2), self.x.shape[1]
        d = self.s2[None, :] + tau2[:, None]
        inv_d = 1.0 / d
        a = self.per_parent(inv_d)
        shrink = sigma2[:, None] / (1.0 + sigma2[:, None] * a)
        value = np.sum(np.log(d), axis=1) + np.sum(np.log1p(sigma2[:, None] * a), 1)
        if k:
            y = np.broadcast_to(
                self.resid[None, :, None], (n_points, len(self.resid), 1)
            )
            x = np.broadcast_to(self.x[None], (n_points, *self.x.shape))
            xtx = self._quad(x, x, inv_d, shrink)
            xty = self._quad(x, y, inv_d, shrink)
            coef = np.linalg.solve(xtx, xty)[:, :, 0]
            r = self.resid[None, :] - coef @ self.x.T
            if reml:
                value = value + np.linalg.slogdet(xtx)[1]
        else:
            xtx = np.zeros((n_points, 0, 0))
            coef = np.zeros((n_points, 0))
            r = np.broadcast_to(self.resid[None, :], (n_points, len(self.resid)))
        value = value + self._quad(r[:, :, None], r[:, :, None], inv_d, shrink)[:, 0, 0]
        return _Likelihood(sigma2, tau2, 0.5 * value, coef, xtx, inv_d, a, r)

    def posterior(
        self, lik: _Likelihood, fixed_effect_var: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every leaf's posterior mean and variance at each point: (K, L) each.

        With ``fixed_effect_var`` the variance also holds the uncertainty of the
        GLS estimates (flat prior on the mean and slope): a leaf's mean is linear in
        them, with gradient :math:`a`, which adds
        :math:`a^\\top(X^\\top\\Sigma^{-1}X)^{-1}a`.
        """
        idx, parent = self.idx, self.parent
        sigma2, tau2, inv_d = lik.sigma2[:, None], lik.tau2[:, None], lik.inv_d
        # Each parent's offset from its prior mean: precision-weighted residuals of
        # its measured leaves (each with variance s2 + tau2), shrunk by 1/sigma2.
        post_prec = np.repeat(1.0 / sigma2, self.n_parents, axis=1)
        post_prec[:, self.used] += lik.a
        mu_var = 1.0 / post_prec
        shift = np.zeros_like(mu_var)
        shift[:, self.used] = self.per_parent(lik.r * inv_d) * mu_var[:, self.used]
        # Unmeasured leaves: their parent's posterior plus their own tau2 spread.
        mean = self.prior_all[None, :] + lik.coef @ self.x_all.T + shift[:, parent]
        var = mu_var[:, parent] + tau2
        # Measured leaves: given mu_p only y_g informs theta_g, so shrink y_g toward
        # the parent by s2 / (s2 + tau2); averaging over mu_p keeps both terms >= 0.
        w = tau2 * inv_d
        mean[:, idx] += w * (lik.r - shift[:, parent[idx]])
        var[:, idx] = tau2 * (1.0 - w) + (1.0 - w) ** 2 * mu_var[:, parent[idx]]
        if fixed_effect_var and self.x.shape[1]:
            through = np.zeros((len(mu_var), self.n_parents, self.x.shape[1]))
            through[:, self.used] = self.per_parent(self.x[None] * inv_d[:, :, None])
            grad = self.x_all[None] - mu_var[:, parent, None] * through[:, parent]
            grad[:, idx] *= (1.0 - w)[:, :, None]
            cov = np.linalg.inv(lik.xtx)
            var = var + np.sum((grad @ cov) * grad, axis=2)
        return mean, var


@dataclass(frozen=True)
class _VarianceSpace:
    """Which of :math:`\\sigma^2, \\tau^2` are free (searched on a log scale), tied to
    each other, or held fixed."""

    free_sigma: bool
    free_tau: bool
    tied: bool
    fixed_sigma2: float
    fixed_tau2: float
    floor: float

    @property
    def dim(self) -> int:
        """Number of free log-variances."""
        return 1 if self.tied else int(self.free_sigma) + int(self.free_tau)

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sigma2, tau2), each (K,), at K points of log-variances (K, dim)."""
        theta = np.asarray(theta, dtype=np.float64)
        theta = theta.reshape(-1, self.dim) if self.dim else np.zeros((1, 0))
        n_points = len(theta)
        if self.tied:
            v = np.exp(theta[:, 0])
            return v, v.copy()
        columns = iter(theta.T)
        sig = np.exp(next(columns)) if self.free_sigma else self.fixed_sigma2
        tau = np.exp(next(columns)) if self.free_tau else self.fixed_tau2
        return (
            np.broadcast_to(sig, (n_points,)).astype(np.float64),
            np.broadcast_to(tau, (n_points,)).astype(np.float64),
        )


def _variance_space(
    counts: np.ndarray,
    has_columns: bool,
    fixed_sigma2: float,
    fixed_tau2: float,
    floor: float,
) -> _VarianceSpace:
    """What the measured leaves identify (``counts``: measured leaves per parent)."""
    # tau2 needs two measured leaves in one parent; sigma2 needs two measured parents
    # (one is enough when the domain mean is fixed, as the mean is then known).
    tau_ok = bool(np.any(counts >= 2))
    sigma_ok = len(counts) >= (2 if has_columns else 1)
    free_sigma, free_tau = bool(np.isnan(fixed_sigma2)), bool(np.isnan(fixed_tau2))
    tied = False
    if free_sigma and free_tau and not (tau_ok and sigma_ok):
        tied = True  # one total variance, split evenly
    elif free_sigma and not sigma_ok:
        free_sigma, fixed_sigma2 = False, fixed_tau2
    elif free_tau and not tau_ok:
        free_tau, fixed_tau2 = False, fixed_sigma2
    return _VarianceSpace(
        free_sigma,
        free_tau,
        tied,
        max(fixed_sigma2, floor) if not np.isnan(fixed_sigma2) else math.nan,
        max(fixed_tau2, floor) if not np.isnan(fixed_tau2) else math.nan,
        floor,
    )


def _points_per_chunk(n: int) -> int:
    """Grid points per evaluation for arrays of ``n`` numbers per point."""
    return max(1, CHUNK_NUMBERS // max(n, 1))


def _log_grid(axes: list[np.ndarray]) -> np.ndarray:
    """Every combination of the axes' points: (n_points, len(axes))."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _fit_variances(
    space: _VarianceSpace, objective, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Maximise the marginal likelihood over the free variances (log scale).

    A coarse log grid first (the likelihood of variance components can have several
    local optima and flat ridges), then L-BFGS-B from the best grid point; both are
    deterministic. ``objective(sigma2, tau2)`` takes and returns (K,) arrays.
    """
    from scipy.optimize import minimize

    dim = space.dim
    lo, hi = math.log(space.floor), math.log(VAR_CEIL_REL * scale)
    axis = np.clip(
        np.linspace(math.log(scale) - 9.0, math.log(scale) + 2.0, 12), lo, hi
    )
    grid = _log_grid([axis] * dim)
    values = objective(*space.unpack(grid))
    start = grid[int(np.argmin(values))]
    res = minimize(
        lambda t: float(objective(*space.unpack(t))[0]),
        start,
        method="L-BFGS-B",
        bounds=[(lo, hi)] * dim,
    )
    best = res.x if res.fun <= values.min() else start
    return space.unpack(best)


def _variance_posterior(
    space: _VarianceSpace, objective, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The free variances' posterior on a log grid: sigma2, tau2 and weights, (K,).

    Density: the restricted likelihood (the marginal likelihood with the fixed
    effects integrated out under a flat prior) times a half-Cauchy prior on each free
    standard deviation with scale :math:`\\sqrt{v}` (the data's variance scale):
    nearly flat on the standard deviation below the data's scale, as Gelman (2006)
    recommends for a hierarchy's variances with few groups, and proper, so that two
    measured parents still give a proper posterior. A coarse grid over the whole
    range finds where the mass is, a fine one over that box integrates it.
    """
    dim = space.dim
    lo, hi = math.log(space.floor), math.log(VAR_CEIL_REL * scale)

    def log_density(theta: np.ndarray) -> np.ndarray:
        # In log-variance coordinates a half-Cauchy on the sd has density
        # proportional to sqrt(v) / (1 + v / scale).
        prior = np.sum(0.5 * theta - np.log1p(np.exp(theta) / scale), axis=1)
        return -objective(*space.unpack(theta)) + prior

    coarse_axis = np.unique(
        np.clip(
            np.linspace(math.log(scale) - 9.0, math.log(scale) + 6.0, GRID_COARSE),
            lo,
            hi,
        )
    )
    coarse = _log_grid([coarse_axis] * dim)
    values = log_density(coarse)
    # The box holding everything within GRID_DROP log-units of the best coarse point,
    # one coarse step wider on each side (the mass between grid points).
    step = float(coarse_axis[1] - coarse_axis[0]) if len(coarse_axis) > 1 else 1.0
    keep = coarse[values >= values.max() - GRID_DROP]
    axes = [
        np.linspace(
            max(keep[:, j].min() - step, lo),
            min(keep[:, j].max() + step, hi),
            GRID_FINE if dim == 2 else GRID_FINE_1D,
        )
        for j in range(dim)
    ]
    fine = _log_grid(axes)
    values = log_density(fine)
    weights = np.exp(values - values.max())
    use = weights >= GRID_NEGLIGIBLE * weights.sum()
    sigma2, tau2 = space.unpack(fine[use])
    return sigma2, tau2, weights[use] / weights[use].sum()


# ------------------------------------------------------------------------- posterior


def _hierarchical_domain(
    y_all: np.ndarray,
    s2_all: np.ndarray,
    measured: np.ndarray,
    parent: np.ndarray,
    n_parents: int,
    cov: np.ndarray | None,
    fixed: dict[str, float],
    method: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Posterior mean and variance of every leaf in one domain."""
    n_leaves = len(y_all)
    idx = np.flatnonzero(measured)
    idx = idx[np.argsort(parent[idx], kind="stable")]  # by parent, for the block sums
    y, s2 = y_all[idx], s2_all[idx]
    c_all = np.zeros(n_leaves) if cov is None else cov
    c = c_all[idx]
    m_fixed, beta_fixed = fixed["m"], fixed["beta"]

    if len(idx) == 0:
        # Nothing known about this domain: say so with an infinite variance rather
        # than invent a scale (an LCB then excludes it, a UCB keeps it open).
        m = 0.0 if np.isnan(m_fixed) else m_fixed
        beta = 0.0 if np.isnan(beta_fixed) else beta_fixed
        info: dict[str, float | str] = {
            "m": m,
            "sigma2": math.inf,
            "tau2": math.inf,
            "beta": beta,
        }
        info["fit"] = "empty"
        return np.full(n_leaves, m) + beta * c_all, np.full(n_leaves, np.inf), info

    # Parents with measurements, renumbered 0..G-1 for the block sums.
    used, group = np.unique(parent[idx], return_inverse=True)
    spread = float(np.var(y)) if len(y) > 1 else 0.0
    scale = max(spread, float(np.mean(s2)), float(np.mean(y**2)), VAR_FLOOR_ABS)
    floor = max(VAR_FLOOR_REL * scale, VAR_FLOOR_ABS)

    # Fixed effects still to estimate: the mean always unless fixed; the slope when a
    # covariate is given, varies over measured leaves and leaves a residual degree
    # of freedom. Centred next to a free intercept: a better conditioned GLS, and the
    # intercept is then the prior mean at the measured leaves' average covariate.
    names = []
    if np.isnan(m_fixed):
        names.append("m")
    fit_slope = (
        cov is not None and np.isnan(beta_fixed) and len(idx) >= 3 and np.ptp(c) > 0
    )
    centre = float(c.mean()) if fit_slope and names else 0.0
    columns_all = [np.ones(n_leaves)] if names else []
    if fit_slope:
        columns_all.append(c_all - centre)
        names.append("beta")
    x_all = np.stack(columns_all, axis=1) if columns_all else np.zeros((n_leaves, 0))
    prior_all = (0.0 if np.isnan(m_fixed) else m_fixed) + (
        0.0 if np.isnan(beta_fixed) else beta_fixed
    ) * c_all
    data = _DomainData(
        idx=idx,
        resid=y - prior_all[idx],
        s2=s2,
        x=x_all[idx],
        x_all=x_all,
        prior_all=prior_all,
        starts=np.flatnonzero(np.r_[True, np.diff(group) != 0]),
        used=used,
        parent=parent,
        n_parents=n_parents,
    )
    reml = method != "ml"

    if len(idx) - len(names) < 1:
        # One measurement and a free mean: no residual left to estimate any spread.
        # Stated default: the mean is the measurement and the total prior variance is
        # the larger of its squared size (effects are judged against "no effect") and
        # its noise, split evenly between sigma2 and tau2.
        total = max(float(np.mean(y**2)), float(np.mean(s2)), floor)
        sig = max(fixed["sigma2"], floor) if not np.isnan(fixed["sigma2"]) else None
        tau = max(fixed["tau2"], floor) if not np.isnan(fixed["tau2"]) else None
        sigma2 = np.array([total / 2 if sig is None else sig])
        tau2 = np.array([total / 2 if tau is None else tau])
        weights, how, fixed_effect_var = np.ones(1), "default", False
    else:
        space = _variance_space(
            np.bincount(group), bool(names), fixed["sigma2"], fixed["tau2"], floor
        )

        def objective(sigma2: np.ndarray, tau2: np.ndarray) -> np.ndarray:
            step = _points_per_chunk(len(idx))
            return np.concatenate(
                [
                    data.likelihood(
                        sigma2[i : i + step], tau2[i : i + step], reml
                    ).value
                    for i in range(0, len(sigma2), step)
                ]
            )

        fixed_effect_var = True
        if space.dim == 0:
            sigma2, tau2 = space.unpack(np.zeros((1, 0)))
            weights, how = np.ones(1), "fixed"
        elif method == "bayes":
            sigma2, tau2, weights = _variance_posterior(space, objective, scale)
            how = TIED if space.tied else "bayes"
        else:
            sigma2, tau2 = _fit_variances(space, objective, scale)
            weights, how = np.ones(1), TIED if space.tied else method

    # The posterior at each point of the variances, mixed by its weight: the mean of
    # the means, and the mean variance plus the variance of the means. In chunks of
    # points (memory: points x leaves), around the heaviest point's means (a shift
    # that keeps the variance of the means free of cancellation).
    best = int(np.argmax(weights))
    ref = data.posterior(
        data.likelihood(sigma2[best : best + 1], tau2[best : best + 1], reml),
        fixed_effect_var,
    )[0][0]
    first, second = np.zeros(n_leaves), np.zeros(n_leaves)  # moments about ref
    coef = np.zeros(len(names))
    step = _points_per_chunk(n_leaves)
    for i in range(0, len(weights), step):
        lik = data.likelihood(sigma2[i : i + step], tau2[i : i + step], reml)
        means, variances = data.posterior(lik, fixed_effect_var)
        w = weights[i : i + step]
        first += w @ (means - ref)
        second += w @ (variances + (means - ref) ** 2)
        coef += w @ lik.coef
    mean = ref + first
    var = second - first**2
    est = dict(zip(names, coef.tolist()))
    m = est.get("m", 0.0 if np.isnan(m_fixed) else m_fixed)
    beta = est.get("beta", 0.0 if np.isnan(beta_fixed) else beta_fixed)
    m -= beta * centre  # undo the centring of the covariate column
    info = {
        "m": float(m),
        "sigma2": float(weights @ sigma2),
        "tau2": float(weights @ tau2),
        "beta": float(beta),
        "fit": how,
    }
    return mean, var, info


def _no_pooling_domain(
    y_all: np.ndarray,
    s2_all: np.ndarray,
    measured: np.ndarray,
    parent: np.ndarray,
    n_parents: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Ablation: raw means, no shrinkage (see :func:`empirical_bayes`)."""
    n_leaves = len(y_all)
    idx = np.flatnonzero(measured)
    info = {"sigma2": math.nan, "tau2": math.nan, "beta": math.nan, "fit": "none"}
    if len(idx) == 0:
        info["m"] = 0.0
        return np.zeros(n_leaves), np.full(n_leaves, np.inf), info
    y, s2, p = y_all[idx], s2_all[idx], parent[idx]
    dom_mean = float(np.mean(y))
    dom_var = float(np.var(y, ddof=1)) if len(y) > 1 else float(np.mean(s2))
    count = np.bincount(p, minlength=n_parents)
    total = np.bincount(p, weights=y, minlength=n_parents)
    sq = np.bincount(p, weights=y**2, minlength=n_parents)
    has = count > 0
    p_mean = np.where(has, total / np.maximum(count, 1), dom_mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_var = (sq - count * p_mean**2) / (count - 1)
    p_var = np.where(count >= 2, np.maximum(p_var, 0.0), dom_var)
    mean, var = p_mean[parent].copy(), p_var[parent].copy()
    mean[idx], var[idx] = y, s2
    info["m"] = dom_mean
    return mean, var, info


def empirical_bayes(
    effects: np.ndarray,
    noise_var: np.ndarray,
    parent_of_leaf: np.ndarray,
    *,
    covariate: np.ndarray | None = None,
    pooling: str = "hierarchical",
    hyper: Mapping[str, Any] | None = None,
    method: str = "bayes",
) -> Posterior:
    r"""Posterior mean and variance of every leaf's effect, per domain.

    Per domain :math:`d` (independently), measured effects are
    :math:`y_g = \theta_g + e_g` with :math:`e_g \sim N(0, s_g^2)`, leaves scatter
    around their parent :math:`\theta_g \sim N(\mu_{p(g)} + \beta c_g, \tau^2)` and
    parents around the domain mean :math:`\mu_p \sim N(m, \sigma^2)`. The
    hyper-parameters :math:`(m, \sigma^2, \tau^2, \beta)` are estimated from the
    measured leaves, then every leaf gets its exact Gaussian posterior.

    Parameters
    ----------
    effects : ndarray, shape (L, n_domains) or (L,)
        Measured effect of each leaf (score of the leaf-tuned model minus the base
        score); a row of NaN marks an unmeasured leaf. A row must be all NaN or all
        finite.
    noise_var : ndarray, same shape as ``effects``
        Known variance of each measurement (e.g. the bootstrap variance over target
        items), ``>= 0``; read only where ``effects`` is finite.
    parent_of_leaf : ndarray of int, shape (L,)
        Parent of each leaf (:attr:`Hierarchy.parent_of_leaf`). Flat trees work: one
        parent per leaf, or one parent for all.
    covariate : ndarray, shape (L,) or (L, n_domains), optional
        A cheap per-leaf score, e.g. the leaf's mean gradient aligned with the target
        gradient, entering the prior mean linearly with a fitted slope :math:`\beta`.
        Must be finite for every leaf. Ignored with ``pooling="none"``.
    pooling : {"hierarchical", "none"}, default="hierarchical"
        ``"none"`` is the ablation without shrinkage: measured leaves keep their raw
        value and noise variance; an unmeasured leaf takes the raw mean of the measured
        effects in its parent (the domain's raw mean when its parent has none) with,
        as variance, their sample variance (ddof=1; the domain's when the parent has
        fewer than two measurements; the mean noise variance when the domain has only
        one).
    hyper : mapping, optional
        Hyper-parameters to hold fixed instead of estimating, any subset of ``"m"``,
        ``"sigma2"``, ``"tau2"``, ``"beta"``; each a number (all domains) or one
        value per domain, NaN meaning "estimate this one". Fixed variances are raised
        to the floor.
    method : {"bayes", "reml", "ml"}, default="bayes"
        How the variances :math:`\sigma^2, \tau^2` are treated. ``"bayes"``:
        integrated over their posterior (half-Cauchy priors on the standard
        deviations), so that the intervals also carry how little a few measured
        parents say about them. ``"reml"`` / ``"ml"``: plugged in at their restricted
        / plain maximum marginal likelihood estimate (empirical Bayes), with
        Student-t intervals (``Posterior.dof``).

    Returns
    -------
    Posterior
        Means and variances of shape (L, n_domains), the measured mask and the
        hyper-parameters per domain.

    Raises
    ------
    ParameterError
        On shapes that disagree, partly-NaN rows, negative or non-finite noise
        variances, a non-finite covariate or an unknown option.

    Notes
    -----
    *Fitting.* The measured effects are jointly Gaussian,
    :math:`y \sim N(m\mathbf 1 + \beta c,\ S + \tau^2 I + \sigma^2 Z Z^\top)` with
    :math:`Z` the leaf-to-parent indicator. :math:`m, \beta` are estimated by
    generalised least squares (their posterior under a flat prior). With
    ``"reml"`` / ``"ml"``, :math:`\log\sigma^2, \log\tau^2` maximise the
    restricted or plain marginal likelihood: a 12-point log grid per dimension, then
    L-BFGS-B, within :math:`[\text{floor}, 10^4\,v]` where :math:`v` is the data's
    variance scale (the largest of the spread of the measured effects, their mean
    noise variance and their mean square) and the floor is
    :math:`\max(10^{-8} v, 10^{-12})`. With ``"bayes"`` their posterior is the
    restricted likelihood (the likelihood with :math:`m, \beta` integrated out)
    times a half-Cauchy prior of scale :math:`\sqrt v` on :math:`\sigma` and on
    :math:`\tau` (nearly flat below the data's scale, and proper, as Gelman (2006)
    advises for a hierarchy's variances with few groups), evaluated on a log grid: a
    coarse one of 16 points per dimension over :math:`[\log v - 9, \log v + 6]`, then
    21 (61 for one variance) over the box holding the coarse points within 20
    log-units of the best. The reported ``sigma2``, ``tau2``, ``m``, ``beta`` are
    then posterior means. The covariate block is Sherman–Morrison per parent, so a
    likelihood evaluation costs :math:`O(m)`.

    *Few measurements.* :math:`\tau^2` is only identified when some parent has two
    measured leaves, :math:`\sigma^2` only when two parents are measured. When one of
    them is not, it is tied to the other (:math:`\sigma^2 = \tau^2`, one-dimensional
    fit, ``fit="tied"``): HARP's first round measures one representative per parent,
    and this splits the total prior variance evenly between "which parent" and "which
    leaf". With a single measured leaf (free mean), :math:`m` is that effect and the
    total prior variance is :math:`\max(y^2, s^2)`, split evenly
    (``fit="default"``). A slope :math:`\beta` is only fitted with at least three
    measured leaves whose covariate varies (else it is 0). A domain with no
    measurement gets mean :math:`m` (0 unless fixed) and infinite variance.

    *Posterior.* With :math:`a_p = \sum_{g \in p} 1/(s_g^2 + \tau^2)` over measured
    leaves, the parent mean has posterior variance
    :math:`V_p = 1/(1/\sigma^2 + a_p)` and mean
    :math:`V_p\,(m/\sigma^2 + \sum_{g\in p} (y_g - \beta c_g)/(s_g^2+\tau^2))`. A
    measured leaf shrinks toward its parent by :math:`w = s_g^2/(s_g^2+\tau^2)`:
    mean :math:`(1-w)\,y_g + w\,(E[\mu_p] + \beta c_g)`, variance
    :math:`\tau^2 w + w^2 V_p`. An unmeasured leaf gets :math:`E[\mu_p] + \beta c_g`
    and :math:`V_p + \tau^2`; in a parent without measurements that is
    :math:`m + \beta c_g` and :math:`\sigma^2 + \tau^2`. A leaf's mean is linear
    in the estimated :math:`(m, \beta)`, with gradient :math:`a_g`; their GLS
    covariance :math:`(X^\top\Sigma^{-1}X)^{-1}` adds :math:`a_g^\top
    (X^\top\Sigma^{-1}X)^{-1} a_g` to its variance (an unmeasured parent's leaves
    are as uncertain as the domain mean; a leaf far from the measured covariates, as
    the slope). With ``"bayes"``, every point of the variance grid gives such a
    Gaussian, and a leaf gets their mixture's mean and variance. With ``"reml"``,
    the variances are conditional on the estimated :math:`\sigma^2, \tau^2`: their
    own uncertainty is ignored, and when a search measured few parents twice the
    estimate of :math:`\tau^2` runs low (on the skills suite, 3 seeds, 90%
    intervals held 60–76% of the unmeasured leaves' true effects with ``"reml"``,
    81–94% with ``"bayes"``; on random measured sets 80–86% and 91–95%:
    ``benchmarks/harp_quality.py``). What ``"bayes"`` cannot undo: a search that
    measures a parent's second leaf next to its first sees two similar effects, and
    the posterior of :math:`\tau^2` believes them.

    Examples
    --------
    Two parents; leaves 0 and 1 measured in parent 0, parent 1 unmeasured:

    >>> import numpy as np
    >>> y = np.array([[0.2], [0.4], [np.nan], [np.nan]])
    >>> s2 = np.full((4, 1), 0.01)
    >>> post = empirical_bayes(y, s2, np.array([0, 0, 0, 1]),
    ...                        hyper={"m": 0.0, "sigma2": 0.04, "tau2": 0.01})
    >>> np.round(post.mean.ravel(), 3).tolist()
    [0.22, 0.32, 0.24, 0.0]
    >>> np.round(post.var.ravel(), 4).tolist()
    [0.007, 0.007, 0.018, 0.05]
    """
    if pooling not in POOLINGS:
        raise ParameterError(
            f"empirical_bayes: pooling={pooling!r} is not one of {POOLINGS}"
        )
    if method not in METHODS:
        raise ParameterError(
            f"empirical_bayes: method={method!r} is not one of {METHODS}"
        )
    parent = np.asarray(parent_of_leaf)
    integer = np.issubdtype(parent.dtype, np.integer)
    if parent.ndim != 1 or (parent.size and not integer):
        raise ParameterError(
            "empirical_bayes: parent_of_leaf must be a 1-D array of int parent ids"
        )
    parent = parent.astype(np.int64)
    n_leaves = len(parent)
    if n_leaves and parent.min() < 0:
        raise ParameterError("empirical_bayes: parent_of_leaf ids must be >= 0")
    # Parents are taken as 0..max; ids no leaf uses cost nothing.
    n_parents = int(parent.max()) + 1 if n_leaves else 0
    y = _as_matrix("effects", effects, n_leaves)
    s2 = _as_matrix("noise_var", noise_var, n_leaves)
    if s2.shape != y.shape:
        raise ParameterError(
            f"empirical_bayes: noise_var has shape {s2.shape}, effects {y.shape}; "
            "give one noise variance per effect"
        )
    n_domains = y.shape[1]
    finite = np.isfinite(y)
    measured = finite.all(axis=1)
    if np.any(finite.any(axis=1) & ~measured):
        bad = np.flatnonzero(finite.any(axis=1) & ~measured)[:5].tolist()
        raise ParameterError(
            f"empirical_bayes: leaves {bad} are measured in some domains only; a "
            "leaf's row of effects must be all finite (measured) or all NaN"
        )
    s2_m = s2[measured]
    if not np.all(np.isfinite(s2_m)) or np.any(s2_m < 0):
        raise ParameterError(
            "empirical_bayes: noise_var must be finite and >= 0 for measured leaves"
        )
    cov = None
    if covariate is not None:
        cov = np.asarray(covariate, dtype=np.float64)
        if cov.ndim == 1:
            cov = np.repeat(cov[:, None], n_domains, axis=1)
        if cov.shape != (n_leaves, n_domains):
            raise ParameterError(
                f"empirical_bayes: covariate must be (n_leaves,) or (n_leaves, "
                f"n_domains) = ({n_leaves}, {n_domains}), got {cov.shape}"
            )
        if not np.all(np.isfinite(cov)):
            raise ParameterError(
                "empirical_bayes: covariate holds NaN or inf; give every leaf a "
                "finite score (e.g. 0 for 'no alignment information')"
            )
    fixed = _hyper_table(hyper, n_domains)

    mean = np.empty((n_leaves, n_domains))
    var = np.empty((n_leaves, n_domains))
    infos = []
    for d in range(n_domains):  # few domains; each domain's work is vectorised
        if pooling == "none":
            if d == 0 and cov is not None:
                log.info("empirical_bayes: pooling='none' ignores the covariate")
            md, vd, info = _no_pooling_domain(
                y[:, d], s2[:, d], measured, parent, n_parents
            )
        else:
            md, vd, info = _hierarchical_domain(
                y[:, d],
                s2[:, d],
                measured,
                parent,
                n_parents,
                None if cov is None else cov[:, d],
                {k: float(fixed[k][d]) for k in HYPER_KEYS},
                method,
            )
        mean[:, d], var[:, d] = md, vd
        infos.append(info)
    table = {k: [info[k] for info in infos] for k in (*HYPER_KEYS, "fit")}
    # A plug-in fit ignores the variances' own uncertainty: its intervals take a
    # Student-t with one degree of freedom per measured parent beyond the first.
    # method="bayes" integrates that uncertainty out already.
    groups = len(np.unique(parent[measured])) if pooling != "none" else 0
    plug_in = method != "bayes" and groups >= 2
    dof = float(groups - 1) if plug_in else float("inf")
    return Posterior(mean=mean, var=var, measured=measured, hyper=table, dof=dof)
