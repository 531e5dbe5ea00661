"""HARP-C / HARP-E envelopes, the greedy over leaves, best prefix and the row cap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harp.core.errors import ParameterError
from harp.selectors.harp import (
    GreedyPath,
    best_prefix,
    cap_to_budget,
    envelope_value,
    envelope_values,
    greedy_envelope,
    lcb_effects,
)

# Hand-worked example, base b = (0.3, 0.5), three leaves x two domains:
#   leaf 0: phi = (0.30, -0.05)   strong helper of domain 0, slight harm to domain 1
#   leaf 1: phi = (0.25, -0.05)   a second, redundant helper of domain 0
#   leaf 2: phi = (0.00,  0.10)   helps domain 1 only
# Both domains active; J(empty) = 0.8; nothing reaches a clip bound.
# HARP-E (sums): single gains .25, .20, .10 and they stay so (nothing clips):
#   picks 0, 1, 2 with gains .25, .20, .10; prefix 3 -> all three leaves.
# HARP-C (max of helps, sum of harms):
#   step 1: gains .25 (leaf 0), .20 (leaf 1), .10 (leaf 2) -> leaf 0, J = 1.05;
#   step 2: leaf 1 adds no help (max .30 stays) but .05 harm -> -.05;
#           leaf 2 -> +.10                                    -> leaf 2, J = 1.15;
#   step 3: leaf 1 -> -.05, J = 1.10.  Prefix 2 -> leaves {0, 2}.
HAND_PHI = np.array([[0.30, -0.05], [0.25, -0.05], [0.00, 0.10]])
HAND_BASE = np.array([0.3, 0.5])


def test_hand_example_c_and_e_differ():
    e = greedy_envelope(HAND_PHI, HAND_BASE, kind="e")
    assert isinstance(e, GreedyPath)
    assert e.order.tolist() == [0, 1, 2]
    assert e.gains == pytest.approx([0.25, 0.20, 0.10])
    assert e.values == pytest.approx([1.05, 1.25, 1.35])
    assert e.start == pytest.approx(0.8)
    assert e.prefix == 3 and e.chosen.tolist() == [0, 1, 2]

    c = greedy_envelope(HAND_PHI, HAND_BASE, kind="c")
    assert c.order.tolist() == [0, 2, 1]
    assert c.gains == pytest.approx([0.25, 0.10, -0.05])
    assert c.values == pytest.approx([1.05, 1.15, 1.10])
    assert c.prefix == 2 and c.chosen.tolist() == [0, 2]

    # The envelope values behind those numbers: C counts leaf 0's .30 once,
    # E adds .30 + .25; both sum the harms in domain 1.
    assert envelope_values(HAND_PHI, HAND_BASE, [0, 1], kind="c") == pytest.approx(
        [0.6, 0.4]
    )
    assert envelope_values(HAND_PHI, HAND_BASE, [0, 1], kind="e") == pytest.approx(
        [0.85, 0.4]
    )
    assert envelope_value(HAND_PHI, HAND_BASE, [], kind="c") == pytest.approx(0.8)
    mask = np.array([True, False, True])
    assert envelope_value(HAND_PHI, HAND_BASE, mask, kind="c") == pytest.approx(1.15)
    assert envelope_value(HAND_PHI, HAND_BASE, [0, 0, 2], kind="c") == pytest.approx(
        1.15
    )


def test_best_prefix_hand_examples():
    assert best_prefix([0.3, 0.2, -0.1, 0.05]) == 2  # running .3 .5 .4 .45
    assert best_prefix([0.3, -0.1, 0.2]) == 3  # .3 .2 .4: a dip later made up
    assert best_prefix([0.3, -0.3]) == 1  # .3 then .0
    assert best_prefix([0.25, -0.25, 0.25]) == 1  # .25 .0 .25: ties -> shortest
    assert best_prefix([0.25, 0.0, 0.0]) == 1  # zero gains add nothing
    assert best_prefix([-0.1, -0.2]) == 0
    assert best_prefix([0.0]) == 0
    assert best_prefix([]) == 0


def test_best_prefix_ties_shortest():
    # .5, .25, .5: prefixes 1 and 3 tie; the shorter wins.
    assert best_prefix([0.5, -0.25, 0.25]) == 1


def test_clipping():
    # HARP-E, base .9: +.3 already saturates at 1, so a second helper adds nothing;
    # unbounded, the gains add up.
    phi = np.array([[0.3], [0.2]])
    bounded = greedy_envelope(phi, [0.9], kind="e")
    assert bounded.order.tolist() == [0, 1]
    assert bounded.gains == pytest.approx([0.1, 0.0])
    assert bounded.prefix == 1
    free = greedy_envelope(phi, [0.9], kind="e", bounded=False)
    assert free.gains == pytest.approx([0.3, 0.2]) and free.prefix == 2
    assert envelope_value(phi, [0.9], [0, 1], kind="e", bounded=False) == 1.4

    # A harm absorbed by the overshoot: .9 + .3 - .2 = 1.0 -> no loss once clipped.
    phi = np.array([[0.3], [-0.2]])
    assert envelope_value(phi, [0.9], [0, 1], kind="e") == pytest.approx(1.0)
    assert envelope_value(phi, [0.9], [0, 1], kind="c") == pytest.approx(1.0)
    # At the bottom: base .05, harm .2 -> 0, not -.15.
    phi = np.array([[0.1], [-0.2]])
    assert envelope_values(phi, [0.05], [1], kind="c") == pytest.approx([0.0])
    assert envelope_values(phi, [0.05], [1], kind="c", bounded=False) == pytest.approx(
        [-0.15]
    )


def test_active_domains():
    # Default active: domains where some leaf has phi > 0 (domain 1 here: none).
    phi = np.array([[0.2, -0.3], [0.1, -0.1]])
    path = greedy_envelope(phi, [0.5, 0.5], kind="e")
    assert path.start == pytest.approx(0.5)
    assert path.gains == pytest.approx([0.2, 0.1])
    forced = greedy_envelope(phi, [0.5, 0.5], kind="e", active=np.array([True, True]))
    # J(empty) = 1.0; alone leaf 0 gives .7 + .2 = .9, leaf 1 gives .6 + .4 = 1.0.
    assert forced.gains == pytest.approx([0.0, -0.1])
    assert forced.order.tolist() == [1, 0]
    assert forced.prefix == 0
    # No domain active: nothing to gain, nothing chosen.
    none = greedy_envelope(-np.abs(phi), [0.5, 0.5], kind="c")
    assert none.prefix == 0 and np.all(none.gains == 0)


def test_max_leaves_and_sizes():
    path = greedy_envelope(HAND_PHI, HAND_BASE, kind="e", max_leaves=2)
    assert path.order.tolist() == [0, 1] and len(path.gains) == 2
    # Per-row: leaf 2 (.10 over 1 row) beats leaf 0 (.25 over 10 rows); harmful
    # leaves still come after every helpful one.
    sized = greedy_envelope(HAND_PHI, HAND_BASE, kind="c", sizes=np.array([10, 10, 1]))
    assert sized.order.tolist() == [2, 0, 1]
    assert sized.gains == pytest.approx([0.10, 0.25, -0.05])
    assert sized.prefix == 2


def naive_greedy(phi, base, kind, bounded, active, sizes=None):
    """Reference greedy: recompute J from scratch for every candidate at every step."""
    L = len(phi)
    chosen: list[int] = []
    gains = []
    current = envelope_value(phi, base, [], kind=kind, bounded=bounded, active=active)
    for _ in range(L):
        best, best_key, best_j = None, None, None
        helpful = []
        for g in range(L):
            if g in chosen:
                continue
            j = envelope_value(
                phi, base, chosen + [g], kind=kind, bounded=bounded, active=active
            )
            helpful.append(j > current)
        any_helpful = any(helpful)
        for g in range(L):
            if g in chosen:
                continue
            j = envelope_value(
                phi, base, chosen + [g], kind=kind, bounded=bounded, active=active
            )
            gain = j - current
            if sizes is not None and any_helpful:
                if gain <= 0:
                    continue
                key = gain / sizes[g]
            else:
                key = gain
            if best_key is None or key > best_key:
                best, best_key, best_j = g, key, j
        chosen.append(best)
        gains.append(best_j - current)
        current = best_j
    return chosen, gains


# Effects on a 1/16 grid keep every sum exact, so fast and naive greedy must agree
# bit for bit, ties included.
grid = st.integers(-8, 8).map(lambda k: k / 16)


@st.composite
def problems(draw):
    n_leaves = draw(st.integers(1, 6))
    n_domains = draw(st.integers(1, 3))
    phi = np.array(
        draw(
            st.lists(grid, min_size=n_leaves * n_domains, max_size=n_leaves * n_domains)
        )
    ).reshape(n_leaves, n_domains)
    base = np.array(
        draw(
            st.lists(
                st.integers(0, 16).map(lambda k: k / 16),
                min_size=n_domains,
                max_size=n_domains,
            )
        )
    )
    active = draw(
        st.none()
        | st.lists(st.booleans(), min_size=n_domains, max_size=n_domains).map(np.array)
    )
    kind = draw(st.sampled_from(["c", "e"]))
    bounded = draw(st.booleans())
    return phi, base, active, kind, bounded


@settings(max_examples=80, deadline=None)
@given(problems())
def test_greedy_matches_naive_and_brute_force(problem):
    phi, base, active, kind, bounded = problem
    path = greedy_envelope(phi, base, kind=kind, bounded=bounded, active=active)
    order, gains = naive_greedy(phi, base, kind, bounded, active)
    assert path.order.tolist() == order
    assert path.gains.tolist() == gains
    assert path.prefix == best_prefix(gains)
    assert path.values[-1] == envelope_value(
        phi, base, order, kind=kind, bounded=bounded, active=active
    )

    # First pick: brute force over all one-leaf sets (ties to the lowest id).
    singles = [
        envelope_value(phi, base, [g], kind=kind, bounded=bounded, active=active)
        for g in range(len(phi))
    ]
    assert path.order[0] == int(np.argmax(singles))

    # HARP-E unbounded is modular: greedy + best prefix is the global optimum.
    if kind == "e" and not bounded:
        best = max(
            envelope_value(phi, base, list(s), kind="e", bounded=False, active=active)
            for r in range(len(phi) + 1)
            for s in itertools.combinations(range(len(phi)), r)
        )
        chosen = envelope_value(
            phi, base, path.chosen, kind="e", bounded=False, active=active
        )
        assert chosen == best


@settings(max_examples=40, deadline=None)
@given(problems(), st.lists(st.integers(1, 5), min_size=6, max_size=6))
def test_sized_greedy_matches_naive(problem, sizes):
    phi, base, active, kind, bounded = problem
    sizes = np.array(sizes[: len(phi)], dtype=float)
    path = greedy_envelope(
        phi, base, kind=kind, bounded=bounded, active=active, sizes=sizes
    )
    order, gains = naive_greedy(phi, base, kind, bounded, active, sizes)
    assert path.order.tolist() == order
    assert path.gains.tolist() == gains


def test_greedy_scales():
    # L = 2,000 leaves x 10 domains in well under the suite's budget.
    rng = np.random.default_rng(0)
    phi = rng.normal(scale=0.05, size=(2000, 10))
    path = greedy_envelope(phi, np.full(10, 0.4), kind="c")
    assert sorted(path.order.tolist()) == list(range(2000))
    assert 0 < path.prefix < 2000
    assert np.all(path.gains[: path.prefix].cumsum() > 0)


def test_cap_to_budget():
    rows = [np.array([4, 0, 2]), np.array([1, 3]), np.array([5, 6, 7])]
    # Leaves in greedy order, rows ascending inside each leaf.
    assert cap_to_budget([1, 0], rows, 10).tolist() == [1, 3, 0, 2, 4]
    # The cut falls inside the last leaf reached.
    assert cap_to_budget([1, 0, 2], rows, 4).tolist() == [1, 3, 0, 2]
    assert cap_to_budget([2, 0], rows, 2).tolist() == [5, 6]
    assert cap_to_budget([2, 0], rows, 0).tolist() == []
    assert cap_to_budget([], rows, 5).tolist() == []
    # Custom within-leaf order (e.g. nearest the centroid first) decides the cut.
    within = [np.array([2, 4, 0]), np.array([3, 1]), np.array([7, 5, 6])]
    got = cap_to_budget([0, 2], rows, 5, within_leaf_order=within)
    assert got.tolist() == [2, 4, 0, 7, 5]
    # Rows shared by two leaves are kept once.
    overlap = [np.array([0, 1]), np.array([1, 2])]
    assert cap_to_budget([0, 1], overlap, 10).tolist() == [0, 1, 2]
    out = cap_to_budget([1, 0, 2], rows, 6)
    assert len(out) == 6 and len(set(out.tolist())) == 6
    with pytest.raises(ParameterError, match="reordering"):
        cap_to_budget([0], rows, 3, within_leaf_order=[np.array([9]), rows[1], rows[2]])
    with pytest.raises(ParameterError, match="budget"):
        cap_to_budget([0], rows, -1)


def test_lcb_effects():
    mean = np.array([[0.3, 0.0], [0.1, -0.2]])
    var = np.array([[0.01, 0.04], [0.0, 0.09]])
    assert lcb_effects(mean, var, 0.0).tolist() == mean.tolist()
    assert lcb_effects(mean, var, 2.0) == pytest.approx(
        np.array([[0.1, -0.4], [0.1, -0.8]])
    )
    # A domain never measured (infinite variance) with kappa = 0 stays finite.
    assert lcb_effects([0.0], [np.inf], 0.0).tolist() == [0.0]
    with pytest.raises(ParameterError, match="kappa"):
        lcb_effects(mean, var, -1.0)


def test_bad_arguments():
    with pytest.raises(ParameterError, match="kind"):
        greedy_envelope(HAND_PHI, HAND_BASE, kind="x")
    assert greedy_envelope(HAND_PHI, HAND_BASE, kind="HARP-C").prefix == 2
    with pytest.raises(ParameterError, match="base"):
        greedy_envelope(HAND_PHI, [0.5], kind="c")
    with pytest.raises(ParameterError, match="NaN"):
        greedy_envelope(np.array([[np.nan]]), [0.5], kind="c")
    with pytest.raises(ParameterError, match="active"):
        greedy_envelope(HAND_PHI, HAND_BASE, kind="c", active=np.array([1, 0]))
    with pytest.raises(ParameterError, match="outside"):
        envelope_value(HAND_PHI, HAND_BASE, [3], kind="c")
    with pytest.raises(ParameterError, match="sizes"):
        greedy_envelope(HAND_PHI, HAND_BASE, kind="c", sizes=np.array([1, 0, 1]))
