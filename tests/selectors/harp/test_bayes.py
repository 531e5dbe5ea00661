"""Empirical Bayes over leaves: closed forms, dense Gaussian conditioning, recovery,
calibration, and the no-pooling ablation."""

from __future__ import annotations

import numpy as np
import pytest

from harp.core.errors import ParameterError
from harp.selectors.harp import Posterior, empirical_bayes


def simulate(
    rng: np.random.Generator,
    *,
    n_parents: int,
    leaves_per_parent: int,
    measured_parents: int,
    measured_per_parent: int,
    sigma2: float,
    tau2: float,
    m: float = 0.05,
    beta: float = 0.0,
    n_domains: int = 1,
):
    """Draw a tree's leaf effects from the model and measure some of them."""
    L = n_parents * leaves_per_parent
    parent = np.repeat(np.arange(n_parents), leaves_per_parent)
    c = rng.normal(size=L)
    mu = m + rng.normal(scale=np.sqrt(sigma2), size=(n_parents, n_domains))
    theta = mu[parent] + beta * c[:, None]
    theta += rng.normal(scale=np.sqrt(tau2), size=(L, n_domains))
    s2 = rng.uniform(0.002, 0.02, size=(L, n_domains))
    y = theta + rng.normal(size=(L, n_domains)) * np.sqrt(s2)
    measured = np.zeros(L, dtype=bool)
    for p in range(measured_parents):
        measured[
            p * leaves_per_parent : p * leaves_per_parent + measured_per_parent
        ] = True
    y[~measured] = np.nan
    return y, s2, parent, c, theta, measured


def dense_posterior(y, s2, parent, m, sigma2, tau2, beta=0.0, c=None):
    """Reference: textbook conditioning of the joint Gaussian (theta, y_measured)."""
    L = len(parent)
    c = np.zeros(L) if c is None else c
    same = (parent[:, None] == parent[None, :]).astype(float)
    prior_cov = tau2 * np.eye(L) + sigma2 * same  # Cov(theta)
    prior_mean = m + beta * c
    idx = np.flatnonzero(np.isfinite(y))
    k = prior_cov[:, idx]  # Cov(theta, y_M)
    sigma = prior_cov[np.ix_(idx, idx)] + np.diag(s2[idx])
    gain = np.linalg.solve(sigma, k.T).T
    mean = prior_mean + gain @ (y[idx] - prior_mean[idx])
    var = np.diag(prior_cov - gain @ k.T)
    return mean, var


def dense_estimated(y, s2, parent, sigma2, tau2, c=None):
    """Reference with the mean (and the slope on ``c``) unknown, flat prior: the
    dense GLS estimate, the textbook conditioning around it, and the variance its
    estimation adds ("universal kriging"). Also returns minus the restricted
    log-likelihood (up to a constant)."""
    L = len(parent)
    idx = np.flatnonzero(np.isfinite(y))
    x_all = np.ones((L, 1)) if c is None else np.stack([np.ones(L), c], axis=1)
    same = (parent[:, None] == parent[None, :]).astype(float)
    prior_cov = tau2 * np.eye(L) + sigma2 * same
    k = prior_cov[:, idx]
    sigma = prior_cov[np.ix_(idx, idx)] + np.diag(s2[idx])
    inv = np.linalg.inv(sigma)
    x = x_all[idx]
    precision = x.T @ inv @ x
    coef = np.linalg.solve(precision, x.T @ inv @ y[idx])
    r = y[idx] - x @ coef
    mean = x_all @ coef + k @ inv @ r
    through = x_all - k @ inv @ x
    var = np.diag(prior_cov - k @ inv @ k.T) + np.einsum(
        "li,ij,lj->l", through, np.linalg.inv(precision), through
    )
    nll = 0.5 * (
        np.linalg.slogdet(sigma)[1] + r @ inv @ r + np.linalg.slogdet(precision)[1]
    )
    return mean, var, nll


def test_hand_worked_normal_normal():
    # m = 0, sigma2 = tau2 = s2 = 1; leaf 0 measured y = 3 in parent 0, leaf 1
    # unmeasured in parent 0, leaf 2 alone in parent 1.
    # Cov(theta_0, y_0) = sigma2 + tau2 = 2, Var(y_0) = 3:
    #   theta_0 | y: mean 2/3 * 3 = 2, var 2 - 4/3 = 2/3.
    # Cov(mu_0, y_0) = 1: mu_0 | y: mean 1/3 * 3 = 1, var 1 - 1/3 = 2/3, so
    #   theta_1 | y: mean 1, var 2/3 + tau2 = 5/3.
    # theta_2 is untouched: mean m = 0, var sigma2 + tau2 = 2.
    y = np.array([3.0, np.nan, np.nan])
    s2 = np.array([1.0, np.nan, np.nan])
    post = empirical_bayes(
        y, s2, np.array([0, 0, 1]), hyper={"m": 0.0, "sigma2": 1.0, "tau2": 1.0}
    )
    assert isinstance(post, Posterior)
    assert post.mean.shape == post.var.shape == (3, 1)
    assert post.mean[:, 0] == pytest.approx([2.0, 1.0, 0.0])
    assert post.var[:, 0] == pytest.approx([2 / 3, 5 / 3, 2.0])
    assert post.measured.tolist() == [True, False, False]
    assert post.hyper["fit"] == ["fixed"]


def test_measured_leaf_shrinks_toward_known_parent():
    # sigma2 = 0 (raised to the tiny floor) pins the parent mean at m; a measured
    # leaf then moves from y toward m by the fraction s2 / (s2 + tau2).
    m, tau2 = 0.1, 0.02
    y = np.array([0.5, 0.3, -0.2, np.nan])
    s2 = np.array([0.02, 0.06, 0.0, np.nan])
    post = empirical_bayes(
        y, s2, np.zeros(4, dtype=int), hyper={"m": m, "sigma2": 0.0, "tau2": tau2}
    )
    shrink = s2[:3] / (s2[:3] + tau2)
    expected = y[:3] - shrink * (y[:3] - m)
    assert post.mean[:3, 0] == pytest.approx(expected, rel=1e-6)
    assert post.var[:3, 0] == pytest.approx(tau2 * shrink, rel=1e-6, abs=1e-9)
    assert post.mean[2, 0] == pytest.approx(-0.2)  # noiseless: kept as measured
    assert post.mean[3, 0] == pytest.approx(m) and post.var[3, 0] == pytest.approx(tau2)


@pytest.mark.parametrize("with_covariate", [False, True])
def test_matches_dense_gaussian_conditioning(with_covariate):
    rng = np.random.default_rng(1)
    L = 30
    parent = rng.integers(0, 6, size=L)
    parent[:6] = np.arange(6)  # every parent exists
    y = rng.normal(scale=0.2, size=L)
    y[rng.random(L) < 0.6] = np.nan
    y[[0, 6]] = [0.3, -0.1]  # at least two measured leaves
    s2 = np.where(np.isfinite(y), rng.uniform(0.001, 0.05, size=L), np.nan)
    c = rng.normal(size=L) if with_covariate else None
    hyper = {"m": 0.02, "sigma2": 0.03, "tau2": 0.01, "beta": 0.1}
    post = empirical_bayes(y, s2, parent, covariate=c, hyper=hyper)
    mean, var = dense_posterior(
        y, s2, parent, 0.02, 0.03, 0.01, 0.1 if with_covariate else 0.0, c
    )
    assert post.mean[:, 0] == pytest.approx(mean, rel=1e-9, abs=1e-12)
    assert post.var[:, 0] == pytest.approx(var, rel=1e-9, abs=1e-12)


def test_fitted_posterior_matches_dense_at_fitted_hyper():
    rng = np.random.default_rng(2)
    y, s2, parent, _, _, _ = simulate(
        rng,
        n_parents=12,
        leaves_per_parent=5,
        measured_parents=9,
        measured_per_parent=2,
        sigma2=0.02,
        tau2=0.01,
    )
    c = rng.normal(size=len(parent))
    for covariate in (None, c):
        post = empirical_bayes(y, s2, parent, covariate=covariate, method="reml")
        assert post.hyper["fit"] == ["reml"]
        assert post.dof == 8.0  # 9 measured parents: Student-t intervals
        h = {k: post.hyper[k][0] for k in ("sigma2", "tau2")}
        # The mean (and slope) estimated: their uncertainty is in every variance.
        mean, var, _ = dense_estimated(y[:, 0], s2[:, 0], parent, c=covariate, **h)
        assert post.mean[:, 0] == pytest.approx(mean, rel=1e-8, abs=1e-12)
        assert post.var[:, 0] == pytest.approx(var, rel=1e-8, abs=1e-12)
        _, known = dense_posterior(
            y[:, 0],
            s2[:, 0],
            parent,
            post.hyper["m"][0],
            **h,
            beta=post.hyper["beta"][0],
            c=covariate,
        )
        assert np.all(post.var[:, 0] > known)


def dense_bayes(y, s2, parent, c=None, n=81):
    """Reference for method="bayes": every point of a wide uniform log grid,
    weighted by the dense restricted likelihood and half-Cauchy priors on both
    standard deviations (scale: the data's variance scale), and the mixture of the
    dense posteriors."""
    idx = np.flatnonzero(np.isfinite(y))
    scale = max(np.var(y[idx]), np.mean(s2[idx]), np.mean(y[idx] ** 2))
    axis = np.linspace(np.log(scale) - 14, np.log(scale) + 10, n)
    means, variances, logw, draws = [], [], [], []
    for ls in axis:
        for lt in axis:
            mean, var, nll = dense_estimated(y, s2, parent, np.exp(ls), np.exp(lt), c)
            prior = sum(0.5 * v - np.log1p(np.exp(v) / scale) for v in (ls, lt))
            means.append(mean), variances.append(var), logw.append(prior - nll)
            draws.append(np.exp([ls, lt]))
    w = np.exp(np.array(logw) - max(logw))
    w /= w.sum()
    means, variances = np.array(means), np.array(variances)
    mean = w @ means
    var = w @ (variances + (means - mean) ** 2)
    return mean, var, w @ np.array(draws)


@pytest.mark.parametrize("with_covariate", [False, True])
def test_bayes_matches_dense_grid_reference(with_covariate):
    rng = np.random.default_rng(12)
    y, s2, parent, c, _, _ = simulate(
        rng,
        n_parents=6,
        leaves_per_parent=4,
        measured_parents=5,
        measured_per_parent=2,
        sigma2=0.03,
        tau2=0.01,
        beta=0.05,
    )
    covariate = c if with_covariate else None
    post = empirical_bayes(y, s2, parent, covariate=covariate)
    assert post.hyper["fit"] == ["bayes"] and post.dof == float("inf")
    mean, var, (sigma2, tau2) = dense_bayes(y[:, 0], s2[:, 0], parent, covariate)
    sd = np.sqrt(var)
    assert np.abs(post.mean[:, 0] - mean) == pytest.approx(0, abs=0.01 * sd.min())
    assert post.var[:, 0] == pytest.approx(var, rel=0.01)
    assert post.hyper["sigma2"][0] == pytest.approx(sigma2, rel=0.02)
    assert post.hyper["tau2"][0] == pytest.approx(tau2, rel=0.02)
    # Integrating over the variances widens every interval past the plug-in's.
    plug_in = empirical_bayes(y, s2, parent, covariate=covariate, method="reml")
    assert np.all(post.var[~post.measured] > plug_in.var[~post.measured])


def test_bayes_intervals_cover_with_few_parents():
    # 5 measured parents of 8, two leaves each: the plug-in variances are estimated
    # from very little and its intervals run narrow; integrated, they cover. Many
    # independent domains are many draws of the same design.
    rng = np.random.default_rng(13)
    y, s2, parent, _, theta, measured = simulate(
        rng,
        n_parents=8,
        leaves_per_parent=6,
        measured_parents=5,
        measured_per_parent=2,
        sigma2=0.03,
        tau2=0.01,
        n_domains=150,
    )
    coverage = {}
    for method in ("bayes", "reml"):
        post = empirical_bayes(y, s2, parent, method=method)
        lo, hi = post.interval(0.9)
        coverage[method] = ((lo <= theta) & (theta <= hi))[~measured].mean()
    assert 0.87 <= coverage["bayes"] <= 0.95, coverage
    assert coverage["reml"] < coverage["bayes"] - 0.02, coverage


def test_unmeasured_leaves_take_parent_or_domain():
    hyper = {"m": 0.0, "sigma2": 0.04, "tau2": 0.01}
    y = np.array([[0.2], [0.4], [np.nan], [np.nan]])
    s2 = np.full((4, 1), 0.01)
    parent = np.array([0, 0, 0, 1])
    post = empirical_bayes(y, s2, parent, hyper=hyper)
    # Parent 0's posterior mean: precision 1/0.04 + 2/0.02 = 125, mean 30/125 = 0.24.
    assert post.mean[2, 0] == pytest.approx(0.24)
    assert post.var[2, 0] == pytest.approx(1 / 125 + 0.01)
    # Parent 1 has no measurement: the domain mean, sigma2 + tau2.
    assert post.mean[3, 0] == pytest.approx(0.0)
    assert post.var[3, 0] == pytest.approx(0.05)
    # Measured leaves shrink halfway (s2 = tau2) toward 0.24.
    assert post.mean[:2, 0] == pytest.approx([0.22, 0.32])


def test_marginal_likelihood_recovers_variances():
    rng = np.random.default_rng(4)
    sigma2, tau2 = 0.05, 0.02
    y, s2, parent, _, _, _ = simulate(
        rng,
        n_parents=150,
        leaves_per_parent=6,
        measured_parents=150,
        measured_per_parent=3,
        sigma2=sigma2,
        tau2=tau2,
        m=0.1,
        n_domains=2,
    )
    for method in ("bayes", "reml", "ml"):
        post = empirical_bayes(y, s2, parent, method=method)
        for d in range(2):
            assert post.hyper["sigma2"][d] == pytest.approx(sigma2, rel=0.35)
            assert post.hyper["tau2"][d] == pytest.approx(tau2, rel=0.35)
            assert post.hyper["m"][d] == pytest.approx(0.1, abs=0.06)
            assert post.hyper["fit"][d] == method


def test_unmeasured_intervals_cover():
    # Calibration under the model: 90% intervals of unmeasured leaves (both in
    # measured parents and in unmeasured ones) should hold the truth ~90% of the time.
    rng = np.random.default_rng(5)
    y, s2, parent, _, theta, measured = simulate(
        rng,
        n_parents=50,
        leaves_per_parent=6,
        measured_parents=35,
        measured_per_parent=2,
        sigma2=0.03,
        tau2=0.01,
        n_domains=8,
    )
    post = empirical_bayes(y, s2, parent)
    lo, hi = post.interval(0.9)
    inside = (lo <= theta) & (theta <= hi)
    coverage = inside[~measured].mean()
    assert 0.8 <= coverage <= 0.97, coverage
    # Measured leaves too (their intervals are much narrower).
    assert 0.8 <= inside[measured].mean() <= 0.97
    assert np.all(post.var[measured].mean(axis=0) < post.var[~measured].mean(axis=0))


def test_covariate_slope_recovered():
    rng = np.random.default_rng(6)
    y, s2, parent, c, _, _ = simulate(
        rng,
        n_parents=60,
        leaves_per_parent=6,
        measured_parents=60,
        measured_per_parent=4,
        sigma2=0.02,
        tau2=0.005,
        m=0.05,
        beta=0.08,
        n_domains=2,
    )
    post = empirical_bayes(y, s2, parent, covariate=c)
    for d in range(2):
        assert post.hyper["beta"][d] == pytest.approx(0.08, abs=0.02)
        assert post.hyper["m"][d] == pytest.approx(0.05, abs=0.04)
    # Unmeasured leaves in a measured parent: the parent's posterior + beta * c.
    g = np.flatnonzero(~post.measured)[0]
    p = parent[g]
    sibling = [h for h in np.flatnonzero(parent == p) if not post.measured[h]][1]
    diff = post.mean[g] - post.mean[sibling]
    assert diff == pytest.approx(np.array(post.hyper["beta"]) * (c[g] - c[sibling]))
    # Without the covariate the slope is 0.
    assert empirical_bayes(y, s2, parent).hyper["beta"] == [0.0, 0.0]


def test_flat_trees_and_few_measurements():
    rng = np.random.default_rng(7)
    L = 20
    y = rng.normal(scale=0.1, size=(L, 2))
    y[8:] = np.nan
    s2 = np.full((L, 2), 0.005)
    # Every leaf its own parent: tau2 cannot be told from sigma2 -> tied.
    own = empirical_bayes(y, s2, np.arange(L))
    assert own.hyper["fit"] == ["tied", "tied"]
    assert own.hyper["sigma2"] == own.hyper["tau2"]
    assert np.all(np.isfinite(own.mean)) and np.all(own.var > 0)
    # All leaves one parent: sigma2 cannot be estimated -> tied too.
    one = empirical_bayes(y, s2, np.zeros(L, dtype=int))
    assert one.hyper["fit"] == ["tied", "tied"]
    assert np.all(np.isfinite(one.mean)) and np.all(np.isfinite(one.var))
    # Unmeasured leaves of the one parent all get the parent's posterior.
    assert np.ptp(one.mean[8:], axis=0) == pytest.approx([0.0, 0.0])

    # One measured leaf: the stated default (m = y, total variance max(y^2, s2)).
    single = np.full((4, 1), np.nan)
    single[1] = 0.3
    post = empirical_bayes(single, np.full((4, 1), 0.01), np.array([0, 0, 1, 1]))
    assert post.hyper["fit"] == ["default"]
    assert post.hyper["m"] == [pytest.approx(0.3)]
    assert post.hyper["sigma2"][0] + post.hyper["tau2"][0] == pytest.approx(0.09)
    assert post.mean[:, 0] == pytest.approx([0.3] * 4)
    assert post.var[2, 0] == pytest.approx(0.09)

    # Nothing measured: mean 0 and infinite variance, no error.
    none = empirical_bayes(np.full((3, 2), np.nan), np.zeros((3, 2)), np.zeros(3, int))
    assert np.all(none.mean == 0) and np.all(np.isinf(none.var))
    assert none.hyper["fit"] == ["empty", "empty"]


def test_partially_fixed_hyper():
    rng = np.random.default_rng(8)
    y, s2, parent, _, _, _ = simulate(
        rng,
        n_parents=20,
        leaves_per_parent=4,
        measured_parents=20,
        measured_per_parent=2,
        sigma2=0.02,
        tau2=0.01,
        n_domains=2,
    )
    post = empirical_bayes(y, s2, parent, hyper={"tau2": [0.01, np.nan], "m": 0.0})
    assert post.hyper["tau2"][0] == pytest.approx(0.01)
    assert post.hyper["m"] == [0.0, 0.0]
    assert post.hyper["fit"] == ["bayes", "bayes"]
    assert post.hyper["sigma2"][0] > 0


def test_no_pooling_ablation():
    # Parent 0: leaves 0, 1 measured (0.1, 0.3), leaf 2 not. Parent 1: leaf 3
    # measured (-0.2), leaf 4 not. Parent 2: leaf 5, nothing measured.
    y = np.array([0.1, 0.3, np.nan, -0.2, np.nan, np.nan])
    s2 = np.array([0.01, 0.02, np.nan, 0.03, np.nan, np.nan])
    parent = np.array([0, 0, 0, 1, 1, 2])
    post = empirical_bayes(y, s2, parent, pooling="none", covariate=np.ones(6))
    mean, var = post.mean[:, 0], post.var[:, 0]
    assert mean[[0, 1, 3]] == pytest.approx([0.1, 0.3, -0.2])  # raw values kept
    assert var[[0, 1, 3]] == pytest.approx([0.01, 0.02, 0.03])  # raw noise kept
    assert mean[2] == pytest.approx(0.2) and var[2] == pytest.approx(0.02)
    dom_mean, dom_var = np.mean([0.1, 0.3, -0.2]), np.var([0.1, 0.3, -0.2], ddof=1)
    assert mean[4] == pytest.approx(-0.2) and var[4] == pytest.approx(dom_var)
    assert mean[5] == pytest.approx(dom_mean) and var[5] == pytest.approx(dom_var)
    assert post.hyper["fit"] == ["none"]


def test_posterior_helpers():
    post = Posterior(
        mean=np.array([[0.0, 1.0]]),
        var=np.array([[4.0, 1.0]]),
        measured=np.array([True]),
        hyper={},
    )
    assert post.sd.tolist() == [[2.0, 1.0]]
    assert post.lower(1.0).tolist() == [[-2.0, 0.0]]
    assert post.upper(2.0).tolist() == [[4.0, 3.0]]
    lo, hi = post.interval(0.95)
    assert hi[0, 0] == pytest.approx(1.959964 * 2, rel=1e-6)
    assert lo[0, 1] == pytest.approx(1 - 1.959964, rel=1e-6)
    with pytest.raises(ParameterError, match="level"):
        post.interval(1.5)


def test_bad_arguments():
    y = np.array([[0.1, np.nan], [np.nan, np.nan]])
    s2 = np.full((2, 2), 0.01)
    with pytest.raises(ParameterError, match="some domains only"):
        empirical_bayes(y, s2, np.array([0, 0]))
    good = np.array([[0.1], [np.nan]])
    with pytest.raises(ParameterError, match="noise_var"):
        empirical_bayes(good, np.array([[-1.0], [0.0]]), np.array([0, 0]))
    with pytest.raises(ParameterError, match="pooling"):
        empirical_bayes(good, np.full((2, 1), 0.01), np.array([0, 0]), pooling="x")
    with pytest.raises(ParameterError, match="one per leaf"):
        empirical_bayes(good, np.full((2, 1), 0.01), np.array([0, 0, 0]))
    with pytest.raises(ParameterError, match="unknown keys"):
        empirical_bayes(good, np.full((2, 1), 0.01), np.array([0, 0]), hyper={"mu": 0})
    with pytest.raises(ParameterError, match="covariate"):
        empirical_bayes(
            good, np.full((2, 1), 0.01), np.array([0, 0]), covariate=[np.nan, 1.0]
        )


def test_bayes_in_chunks_of_grid_points_is_the_same(monkeypatch):
    # Large trees evaluate the variance grid a few points at a time (memory: points
    # x leaves); the mixture must not depend on the chunking.
    import harp.selectors.harp.bayes as bayes

    rng = np.random.default_rng(14)
    y, s2, parent, c, _, _ = simulate(
        rng,
        n_parents=10,
        leaves_per_parent=5,
        measured_parents=7,
        measured_per_parent=2,
        sigma2=0.03,
        tau2=0.01,
        beta=0.05,
        n_domains=2,
    )
    whole = empirical_bayes(y, s2, parent, covariate=c)
    monkeypatch.setattr(bayes, "CHUNK_NUMBERS", 7 * len(parent))
    chunked = empirical_bayes(y, s2, parent, covariate=c)
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(chunked.var, whole.var, rtol=1e-10)
    assert chunked.hyper["fit"] == whole.hyper["fit"] == ["bayes", "bayes"]
    for key in ("m", "sigma2", "tau2", "beta"):
        assert chunked.hyper[key] == pytest.approx(whole.hyper[key], rel=1e-12)
