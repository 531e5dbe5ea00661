"""HARP's quality claims on the synthetic skills suite, measured side by side.

1. Inference: with ~20% of leaves measured, do the posterior means of the unmeasured
   leaves rank their true effects (Spearman), and do 90% intervals cover them? The
   truth is measured afterwards by running the oracle on every leaf (cached).
2. Cheaper than exhaustive: the target score of HARP's selection (20% of leaves
   measured) against the same envelope computed with every leaf measured.
   The same model is also fitted to measured sets no search chose (the
   representatives plus random leaves, many draws), which separates the inference
   from the bias of an adaptive search.
3. Ablations: no empirical Bayes (raw parent means), flat clusters, no active search,
   no target fit (the tree on the features alone), no prior covariate.

Every selection is finetuned with the demo's recipe and scored by exact match on the
target; the harmful share of each selection is reported.

    python benchmarks/harp_quality.py --out harp-runs/harp-quality
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _inference(post, truth: np.ndarray, noise: np.ndarray, domains) -> dict:
    """Spearman and 90% coverage of the unmeasured leaves, per domain and overall.

    ``noise`` is the variance of one measurement as the model sees it (the
    bootstrap's, plus the training noise HARP estimates from its replicates): the
    predictive interval of a leaf's measured truth adds it to the posterior's.
    """
    from scipy.stats import norm
    from scipy.stats import t as student_t

    un = ~post.measured
    lo, hi = post.interval(0.9)
    # The measured truth carries its own noise: the predictive interval adds it
    # (same quantile as the posterior interval: Student-t with few parents).
    q = float(
        norm.ppf(0.95) if not np.isfinite(post.dof) else student_t.ppf(0.95, post.dof)
    )
    inside = (truth >= lo) & (truth <= hi)
    predictive = np.abs(truth - post.mean) <= q * np.sqrt(post.var + noise)
    out = {"n_unmeasured": int(un.sum())}
    for k, d in enumerate(domains):
        out[f"spearman_{d}"] = _spearman(post.mean[un, k], truth[un, k])
        out[f"coverage90_{d}"] = float(inside[un, k].mean())
        out[f"predictive90_{d}"] = float(predictive[un, k].mean())
    out["spearman_sum"] = _spearman(post.mean[un].sum(1), truth[un].sum(1))
    out["coverage90_all"] = float(inside[un].mean())
    out["predictive90_all"] = float(predictive[un].mean())
    return out


def _mean_of(draws: list[dict]) -> dict:
    return {k: float(np.nanmean([d[k] for d in draws])) for k in draws[0]} | {
        "draws": len(draws)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("harp-runs/harp-quality"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evals", type=float, default=0.2)
    parser.add_argument("--metric", default="loss", choices=["loss", "exact_match"])
    parser.add_argument("--n-pool", type=int, default=2000)
    parser.add_argument("--budget", default="10%")
    parser.add_argument("--leaf-size", type=int, default=None)
    parser.add_argument("--target-fit-weight", type=float, default=0.5)
    parser.add_argument("--draws", type=int, default=50, help="random measured sets")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 on a shared machine)"
    )
    args = parser.parse_args()

    import torch

    from harp.core.amount import resolve_budget
    from harp.core.context import RunContext
    from harp.data.synthetic import make_skills_suite
    from harp.models.proxy import ensure_proxy
    from harp.selectors import make_selector
    from harp.selectors.harp import cap_to_budget, empirical_bayes, greedy_envelope
    from harp.selectors.harp.oracle import LeafOracle
    from harp.training import EvalConfig, TrainConfig, TrainEvalUtility

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    suite = make_skills_suite(
        seed=args.seed, n_pool=args.n_pool, n_target_per_domain=200, n_pretrain=6000
    )
    proxy = ensure_proxy(
        suite.pretrain,
        out / "proxy",
        seed=args.seed,
        pretrain=dict(steps=1000, batch_size=32),
    )
    pool, target = suite.pool, suite.target
    budget = resolve_budget(args.budget, len(pool))
    context = RunContext(seed=args.seed, cache_dir=out / "cache")
    common = dict(
        model=str(proxy),
        context=context,
        metric=args.metric,
        leaf_size=args.leaf_size,
        target_fit_weight=args.target_fit_weight,
    )

    def fit(method: str, **kw):
        start = time.perf_counter()
        sel = make_selector(method, budget=budget, seed=args.seed, **{**common, **kw})
        sel.fit(pool, target)
        sel.fit_seconds_ = time.perf_counter() - start
        return sel

    utility = TrainEvalUtility(
        proxy,
        target,
        TrainConfig(seed=args.seed),
        EvalConfig(seed=args.seed),
        context=context,
    )
    scored: dict[str, dict] = {}

    def score(name: str, indices: np.ndarray, extra: dict | None = None) -> None:
        if len(indices) == 0:
            tuned = utility.base_report
        else:
            tuned = utility(pool.subset(indices))
        em = tuned.average("exact_match")
        row = {
            "rows": int(len(indices)),
            "harmful_share": float(suite.harmful_mask[indices].mean())
            if len(indices)
            else 0.0,
            "exact_match": em.mean,
            "exact_match_se": em.stderr,
            "loss": tuned.average("loss").mean,
            **{f"em_{d}": tuned.estimate(d, "exact_match").mean for d in tuned.domains},
            **(extra or {}),
        }
        scored[name] = row
        print(f"{name:28s} {json.dumps(row)}", flush=True)

    # -- HARP as a user runs it: 20% of the leaves measured ---------------------------
    main_c = fit("harp-c", evals=args.evals)
    tree, post = main_c.tree_, main_c.posterior_
    print(
        f"tree: {tree.n_leaves} leaves, {tree.n_parents} parents, "
        f"{tree.n_nodes} nodes; "
        f"measured {len(main_c.measured_)}; fit {main_c.fit_seconds_:.0f}s",
        flush=True,
    )
    main_e = fit("harp-e", evals=args.evals)

    # -- the truth: every leaf measured -----------------------------------------------
    # The recipe of HARP's own oracle (same seed streams), so that the leaves the
    # selectors measured are answered from the cache.
    oracle = LeafOracle(
        TrainEvalUtility(
            proxy,
            target,
            TrainConfig(seed=context.int_seed("oracle")),
            EvalConfig(metrics=(args.metric,)),
            context=context,
        ),
        metric=args.metric,
        bootstrap=200,
        seed=context.int_seed("bootstrap"),
    )
    start = time.perf_counter()
    results = [oracle(pool.subset(tree.leaf_rows(g))) for g in range(tree.n_leaves)]
    truth = np.stack([r.effect for r in results])
    noise = np.stack([r.var for r in results])
    exhaustive_seconds = time.perf_counter() - start
    print(
        f"exhaustive: {tree.n_leaves} leaves, {oracle.calls} new calls "
        f"({exhaustive_seconds:.0f}s)",
        flush=True,
    )

    harmful = suite.harmful_mask
    leaf_rows = [tree.leaf_rows(g) for g in range(tree.n_leaves)]
    # Leaf purity: the share of rows whose leaf's majority (harmful or not) they share.
    majority = sum(max(harmful[r].sum(), (~harmful[r]).sum()) for r in leaf_rows)
    no_prior = fit("harp-c", evals=args.evals, prior="none")
    # Without replicates each measurement's noise is the bootstrap's alone.
    no_replicates = fit("harp-c", evals=args.evals, replicates=0)
    # The variances plugged in at their REML estimate (the paper's empirical Bayes)
    # instead of integrated over.
    plug_in = fit("harp-c", evals=args.evals, variances="reml")
    training_var = np.square(np.asarray(main_c.oracle_["training_sd"]))
    believed = noise + training_var
    inference = {
        "n_leaves": tree.n_leaves,
        "n_parents": tree.n_parents,
        "leaf_purity": float(majority / len(pool)),
        "training_sd": main_c.oracle_["training_sd"],
        "replicated_leaves": main_c.oracle_["replicated_leaves"],
        "harp_search": _inference(post, truth, believed, main_c.domains_),
        "harp_search_no_prior": _inference(
            no_prior.posterior_, truth, believed, main_c.domains_
        ),
        "harp_search_no_replicates": _inference(
            no_replicates.posterior_, truth, noise, main_c.domains_
        ),
        "harp_search_reml": _inference(
            plug_in.posterior_, truth, believed, main_c.domains_
        ),
    }
    # The same model on measured sets that no search chose: the representatives
    # plus random leaves up to the same number of calls, over many draws. Active
    # search measures the promising leaves, which biases what the variance
    # components see; this isolates the inference from that.
    n_measured = int(post.measured.sum())
    reps = np.asarray(tree.representatives)
    rng = np.random.default_rng(args.seed)
    for label, covariate, method in (
        ("random_search", main_c.covariate_, "bayes"),
        ("random_search_reml", main_c.covariate_, "reml"),
        ("random_search_no_prior", None, "bayes"),
    ):
        draws = []
        for _ in range(args.draws):
            rest = np.setdiff1d(np.arange(tree.n_leaves), reps)
            extra = rng.choice(rest, max(0, n_measured - len(reps)), replace=False)
            measured = np.zeros(tree.n_leaves, dtype=bool)
            measured[np.concatenate([reps, extra])] = True
            draw_post = empirical_bayes(
                np.where(measured[:, None], truth, np.nan),
                np.where(measured[:, None], believed, np.nan),
                tree.parent_of_leaf,
                covariate=covariate,
                method=method,
            )
            draws.append(_inference(draw_post, truth, believed, main_c.domains_))
        inference[label] = _mean_of(draws)
    print("inference:", json.dumps(inference, indent=1), flush=True)

    # -- selections and their target scores -------------------------------------------
    bounded = args.metric == "exact_match"
    base = main_c.base_scores_
    for name, sel in (
        ("harp-c (20%)", main_c),
        ("harp-e (20%)", main_e),
        ("harp-c (20%, no replicates)", no_replicates),
        ("harp-c (20%, reml variances)", plug_in),
    ):
        score(
            name,
            sel.selection_.indices,
            {
                "calls": sel.oracle_["calls"] + sel.oracle_["cache_hits"],
                "leaves_chosen": len(sel.chosen_leaves_),
            },
        )
    for kind in ("c", "e"):
        active = (truth > 0).any(axis=0)
        path = greedy_envelope(truth, base, kind=kind, bounded=bounded, active=active)
        rows = cap_to_budget(list(path.chosen), leaf_rows, budget)
        score(
            f"harp-{kind} (all measured)",
            rows,
            {"calls": tree.n_leaves, "leaves_chosen": int(path.prefix)},
        )
    score("random", np.random.default_rng(args.seed).permutation(len(pool))[:budget])
    score("full pool", np.arange(len(pool)))

    if not args.no_ablations:
        for label, kw in (
            ("no empirical Bayes", dict(pooling="none")),
            ("flat clusters", dict(hierarchy="flat")),
            ("no active search", dict(search="none")),
            ("no target fit", dict(target_fit_weight=0.0)),
            ("no prior covariate", dict(prior="none")),
        ):
            for method in ("harp-c", "harp-e"):
                sel = fit(method, evals=args.evals, **kw)
                score(
                    f"{method} {label}",
                    sel.selection_.indices,
                    {
                        "calls": sel.oracle_["calls"] + sel.oracle_["cache_hits"],
                        "leaves_chosen": len(sel.chosen_leaves_),
                    },
                )

    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "inference": inference,
        "scores": scored,
        "exhaustive_seconds": exhaustive_seconds,
        "wall_seconds": time.perf_counter() - t0,
    }
    (out / "harp_quality.json").write_text(json.dumps(result, indent=1))
    for kind in ("c", "e"):
        ratio = scored[f"harp-{kind} (20%)"]["exact_match"] / max(
            scored[f"harp-{kind} (all measured)"]["exact_match"], 1e-12
        )
        print(f"HARP-{kind.upper()} 20% / all-measured target score: {ratio:.3f}")
    print(f"wrote {out / 'harp_quality.json'} in {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
