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

HYPER_KEYS = ("m", "sigma2", "tau2", "beta")
POOLINGS = ("hierarchical", "none")
METHODS = ("reml", "ml")


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
        Degrees of freedom of the intervals: the number of parents with a
        measurement minus one. The variances are estimated from that few groups, and
        a normal interval that ignores it covers less than it says; ``interval`` uses
        a Student-t quantile with these degrees of freedom (``inf``: normal).

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


def _block_sums(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum rows of ``values`` (m, k) per group: (n_groups, k)."""
    out = np.zeros((n_groups, values.shape[1]))
    for j in range(values.shape[1]):
        out[:, j] = np.bincount(group, weights=values[:, j], minlength=n_groups)
    return out


def _quad(
    u: np.ndarray,
    v: np.ndarray,
    inv_d: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    shrink: np.ndarray,
) -> np.ndarray:
    r""":math:`U^\top \Sigma^{-1} V` for the block-diagonal :math:`\Sigma`.

    Per block :math:`\Sigma_p^{-1} = D^{-1} - \sigma^2 D^{-1}\mathbf 1 \mathbf 1^\top
    D^{-1} / (1 + \sigma^2 a_p)`; ``shrink`` holds :math:`\sigma^2/(1+\sigma^2 a_p)`.
    """
    bu = _block_sums(u * inv_d[:, None], group, n_groups)
    bv = _block_sums(v * inv_d[:, None], group, n_groups)
    return (u * inv_d[:, None]).T @ v - bu.T @ (bv * shrink[:, None])


def _neg_loglik(
    sigma2: float,
    tau2: float,
    y: np.ndarray,
    s2: np.ndarray,
    x: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    reml: bool,
) -> tuple[float, np.ndarray]:
    """Minus the (restricted) log-likelihood with the fixed effects profiled by GLS.

    ``y`` is already net of any fixed mean / slope; ``x`` (m, k) holds the columns of
    the fixed effects still to estimate. Returns the value and the GLS estimates.
    """
    d = s2 + tau2
    inv_d = 1.0 / d
    a = np.bincount(group, weights=inv_d, minlength=n_groups)
    shrink = sigma2 / (1.0 + sigma2 * a)
    logdet = np.sum(np.log(d)) + np.sum(np.log1p(sigma2 * a))
    if x.shape[1]:
        xtx = _quad(x, x, inv_d, group, n_groups, shrink)
        xty = _quad(x, y[:, None], inv_d, group, n_groups, shrink)[:, 0]
        coef = np.linalg.solve(xtx, xty)
        r = y - x @ coef
    else:
        xtx, coef, r = None, np.zeros(0), y
    quad = float(_quad(r[:, None], r[:, None], inv_d, group, n_groups, shrink)[0, 0])
    value = 0.5 * (logdet + quad)
    if reml and xtx is not None:
        # REML: also integrate the fixed effects out, which removes ML's downward bias
        # of the variances when few parents are measured.
        value += 0.5 * np.linalg.slogdet(xtx)[1]
    return value, coef


def _fit_variances(
    y: np.ndarray,
    s2: np.ndarray,
    x: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    fixed_sigma2: float,
    fixed_tau2: float,
    floor: float,
    scale: float,
    reml: bool,
) -> tuple[float, float, str]:
    """Maximise the marginal likelihood over the free variances (log scale).

    A coarse log grid first (the likelihood of variance components can have several
    local optima and flat ridges), then L-BFGS-B from the best grid point; both are
    deterministic.
    """
    from scipy.optimize import minimize

    counts = np.bincount(group, minlength=n_groups)
    # tau2 needs two measured leaves in one parent; sigma2 needs two measured parents
    # (one is enough when the domain mean is fixed, as the mean is then known).
    tau_ok = bool(np.any(counts >= 2))
    sigma_ok = n_groups >= (2 if x.shape[1] else 1)
    free_sigma, free_tau = np.isnan(fixed_sigma2), np.isnan(fixed_tau2)
    tied = False
    if free_sigma and free_tau and not (tau_ok and sigma_ok):
        tied = True  # one total variance, split evenly
    elif free_sigma and not sigma_ok:
        free_sigma, fixed_sigma2 = False, max(fixed_tau2, floor)
    elif free_tau and not tau_ok:
        free_tau, fixed_tau2 = False, max(fixed_sigma2, floor)

    def unpack(theta: np.ndarray) -> tuple[float, float]:
        if tied:
            v = math.exp(theta[0])
            return v, v
        it = iter(theta)
        sig = math.exp(next(it)) if free_sigma else max(fixed_sigma2, floor)
        tau = math.exp(next(it)) if free_tau else max(fixed_tau2, floor)
        return sig, tau

    dim = 1 if tied else int(free_sigma) + int(free_tau)
    how = TIED if tied else ("reml" if reml else "ml")
    if dim == 0:
        sig, tau = unpack(np.zeros(0))
        return sig, tau, "fixed"

    def objective(theta: np.ndarray) -> float:
        sig, tau = unpack(theta)
        return _neg_loglik(sig, tau, y, s2, x, group, n_groups, reml)[0]

    lo, hi = math.log(floor), math.log(VAR_CEIL_REL * scale)
    axis = np.linspace(math.log(scale) - 9.0, math.log(scale) + 2.0, 12)
    axis = np.clip(axis, lo, hi)
    grid = np.array(np.meshgrid(*([axis] * dim), indexing="ij")).reshape(dim, -1).T
    values = np.array([objective(t) for t in grid])
    start = grid[int(np.argmin(values))]
    res = minimize(objective, start, method="L-BFGS-B", bounds=[(lo, hi)] * dim)
    best = res.x if res.fun <= values.min() else start
    sig, tau = unpack(best)
    return sig, tau, how


# ------------------------------------------------------------------------- posterior


def _hierarchical_domain(
    y_all: np.ndarray,
    s2_all: np.ndarray,
    measured: np.ndarray,
    parent: np.ndarray,
    n_parents: int,
    cov: np.ndarray | None,
    fixed: dict[str, float],
    reml: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Posterior mean and variance of every leaf in one domain."""
    n_leaves = len(y_all)
    idx = np.flatnonzero(measured)
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
    n_groups = len(used)
    spread = float(np.var(y)) if len(y) > 1 else 0.0
    scale = max(spread, float(np.mean(s2)), float(np.mean(y**2)), VAR_FLOOR_ABS)
    floor = max(VAR_FLOOR_REL * scale, VAR_FLOOR_ABS)

    # Fixed effects still to estimate: the mean always unless fixed; the slope when a
    # covariate is given, varies over measured leaves and leaves a residual degree
    # of freedom.
    columns, names = [], []
    if np.isnan(m_fixed):
        columns.append(np.ones(len(idx)))
        names.append("m")
    if cov is not None and np.isnan(beta_fixed) and len(idx) >= 3 and np.ptp(c) > 0:
        # Centred next to a free intercept: a better conditioned GLS.
        centre = c.mean() if names else 0.0
        columns.append(c - centre)
        names.append("beta")
    x = np.stack(columns, axis=1) if columns else np.zeros((len(idx), 0))
    offset = (0.0 if np.isnan(m_fixed) else m_fixed) + (
        0.0 if np.isnan(beta_fixed) else beta_fixed
    ) * c
    resid = y - offset

    if len(idx) - x.shape[1] < 1:
        # One measurement and a free mean: no residual left to estimate any spread.
        # Stated default: the mean is the measurement and the total prior variance is
        # the larger of its squared size (effects are judged against "no effect") and
        # its noise, split evenly between sigma2 and tau2.
        total = max(float(np.mean(y**2)), float(np.mean(s2)), floor)
        sigma2 = max(fixed["sigma2"], floor) if not np.isnan(fixed["sigma2"]) else None
        tau2 = max(fixed["tau2"], floor) if not np.isnan(fixed["tau2"]) else None
        sigma2 = total / 2 if sigma2 is None else sigma2
        tau2 = total / 2 if tau2 is None else tau2
        how = "default"
    else:
        sigma2, tau2, how = _fit_variances(
            resid,
            s2,
            x,
            group,
            n_groups,
            fixed["sigma2"],
            fixed["tau2"],
            floor,
            scale,
            reml,
        )
    _, coef = _neg_loglik(sigma2, tau2, resid, s2, x, group, n_groups, reml)
    est = dict(zip(names, coef.tolist()))
    m = est.get("m", 0.0 if np.isnan(m_fixed) else m_fixed)
    beta = est.get("beta", 0.0 if np.isnan(beta_fixed) else beta_fixed)
    if "beta" in est and "m" in est:
        m -= beta * c.mean()  # undo the centring of the covariate column

    # Parent posteriors: precision-weighted mean of the prior and each measured
    # leaf's effect (net of its covariate term), each with variance s2 + tau2.
    inv_d = 1.0 / (s2 + tau2)
    post_prec = np.full(n_parents, 1.0 / sigma2)
    post_prec[used] += np.bincount(group, weights=inv_d, minlength=n_groups)
    numer = np.full(n_parents, m / sigma2)
    numer[used] += np.bincount(
        group, weights=(y - beta * c) * inv_d, minlength=n_groups
    )
    mu_var = 1.0 / post_prec
    mu_mean = numer * mu_var

    # Unmeasured leaves: their parent's posterior plus their own tau2 spread.
    mean = mu_mean[parent] + beta * c_all
    var = mu_var[parent] + tau2
    # Measured leaves: given mu_p only y_g informs theta_g, so shrink y_g toward the
    # parent by s2 / (s2 + tau2); averaging over mu_p | y keeps both terms >= 0.
    w = tau2 * inv_d
    mean[idx] = w * y + (1.0 - w) * (mu_mean[parent[idx]] + beta * c)
    var[idx] = tau2 * (1.0 - w) + (1.0 - w) ** 2 * mu_var[parent[idx]]
    info = {
        "m": float(m),
        "sigma2": float(sigma2),
        "tau2": float(tau2),
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
    method: str = "reml",
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
    method : {"reml", "ml"}, default="reml"
        Restricted (default) or plain maximum marginal likelihood for the variances.

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
    :math:`Z` the leaf-to-parent indicator. :math:`m, \beta` are profiled out by
    generalised least squares, and :math:`\log\sigma^2, \log\tau^2` maximise the
    restricted (REML) or plain marginal likelihood: a 12-point log grid per
    dimension, then L-BFGS-B, within :math:`[\text{floor}, 10^4\,v]` where :math:`v`
    is the data's variance scale (the largest of the spread of the measured effects,
    their mean noise variance and their mean square) and the floor is
    :math:`\max(10^{-8} v, 10^{-12})`. The covariate block is Sherman–Morrison per
    parent, so a fit costs :math:`O(m)` per likelihood evaluation.

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
    :math:`m + \beta c_g` and :math:`\sigma^2 + \tau^2`. The variances are
    conditional on the estimated hyper-parameters: their own uncertainty is
    ignored, so intervals run a little narrow when few parents are measured.

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
                method == "reml",
            )
        mean[:, d], var[:, d] = md, vd
        infos.append(info)
    table = {k: [info[k] for info in infos] for k in (*HYPER_KEYS, "fit")}
    groups = len(np.unique(parent[measured])) if pooling != "none" else 0
    dof = float(groups - 1) if groups >= 2 else float("inf")
    return Posterior(mean=mean, var=var, measured=measured, hyper=table, dof=dof)
