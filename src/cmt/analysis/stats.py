"""Statistics used by the tables. Every function wraps a scipy/statsmodels call where one exists."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval; (nan, nan) for n = 0 (an empty group is not a zero)."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return (math.nan, math.nan)
    lo, hi = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return (float(lo), float(hi))


def sign_test(n_suppressed: int, n_amplified: int) -> float:
    """Exact two-sided binomial sign test of suppressed vs amplified runs (ties excluded)."""
    from scipy.stats import binomtest

    n = n_suppressed + n_amplified
    if n == 0:
        return math.nan
    return float(binomtest(n_suppressed, n, 0.5, alternative="two-sided").pvalue)


def induction_check(base: np.ndarray, organism: np.ndarray, min_delta: float) -> dict:
    """Did induction raise M clearly? organism − base ≥ min_delta and the Wilson intervals do not overlap."""
    # Unscored rows (NaN: an unparsed judge reply) are not M = 0: they leave the denominator.
    base = np.asarray(base, dtype=float)
    organism = np.asarray(organism, dtype=float)
    base, organism = base[np.isfinite(base)], organism[np.isfinite(organism)]
    b_lo, b_hi = wilson_interval(int(base.sum()), len(base))
    o_lo, o_hi = wilson_interval(int(organism.sum()), len(organism))
    risk_base = float(base.mean()) if len(base) else math.nan
    risk_org = float(organism.mean()) if len(organism) else math.nan
    induced = bool(risk_org - risk_base >= min_delta and o_lo > b_hi)
    return {
        "risk_base": risk_base,
        "risk_base_ci": [b_lo, b_hi],
        "n_base": len(base),
        "risk_phase1": risk_org,
        "risk_phase1_ci": [o_lo, o_hi],
        "n_phase1": len(organism),
        "min_delta": min_delta,
        "induced": induced,
    }


def _ratio_bootstrap_ci(
    numerators: list[np.ndarray],
    denominators: list[np.ndarray],
    signs: list[float],
    n_boot: int,
    seed: int,
    alpha: float,
) -> tuple[float, float]:
    """Percentile CI of sum_j sign_j * sum(num_j) / sum(den_j), resampling the aligned cluster rows together.

    Resamples whose statistic is undefined (a zero denominator) are left out of the percentiles.
    """
    from scipy.stats import DegenerateDataWarning, bootstrap

    def statistic(*arrays, axis=-1):
        parts = len(signs)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sum(
                sign * arrays[j].sum(axis=axis) / arrays[parts + j].sum(axis=axis)
                for j, sign in enumerate(signs)
            )

    with warnings.catch_warnings():
        # scipy warns when some resamples are undefined (a stage with no rows); they are left out below.
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            (*numerators, *denominators), statistic, n_resamples=n_boot, paired=True, vectorized=True,
            confidence_level=1 - alpha, method="percentile", rng=np.random.default_rng(seed),
        )  # fmt: skip
    distribution = result.bootstrap_distribution
    if np.isnan(distribution).all():
        return (math.nan, math.nan)
    lo, hi = np.nanpercentile(distribution, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def cluster_bootstrap_ci(
    values, clusters, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`, resampling whole clusters with replacement.

    The statistic is the pooled mean (sum of the resampled clusters' values / their count), so it equals the
    plain mean on the original data. Wraps `scipy.stats.bootstrap(paired=True, method="percentile")` on
    per-cluster sums and counts, with a `numpy.random.Generator` seeded from `seed`. NaN values are dropped
    first. Fewer than 2 clusters give (nan, nan): one cluster has no between-cluster variation to resample.
    """
    values = np.asarray(values, dtype=float)
    clusters = pd.Series(list(clusters) if not isinstance(clusters, pd.Series) else clusters.to_list())
    if len(values) != len(clusters):
        raise ValueError(f"cluster_bootstrap_ci: {len(values)} values but {len(clusters)} cluster labels")
    keep = ~np.isnan(values)
    frame = pd.DataFrame({"value": values[keep], "cluster": clusters[keep].to_numpy()})
    per_cluster = frame.groupby("cluster", sort=True)["value"].agg(["sum", "count"])
    if len(per_cluster) < 2:
        return (math.nan, math.nan)
    return _ratio_bootstrap_ci(
        [per_cluster["sum"].to_numpy()],
        [per_cluster["count"].to_numpy(dtype=float)],
        [1.0],
        n_boot,
        seed,
        alpha,
    )


def paired_bootstrap_diff_ci(
    before, before_prompts, after, after_prompts, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(after) − mean(before), resampling prompts (both stages together).

    Each prompt id is one resampling unit carrying its rows from both stages, so the CI reflects the pairing
    of the two evaluations on the same prompts. NaN values (unscored rows) are dropped; each stage's mean is
    over its own remaining rows, so the point estimate is exactly the difference of the two plain means.
    Wraps `scipy.stats.bootstrap(paired=True, method="percentile")` with a seeded `numpy.random.Generator`.
    Resamples that draw no scored row of a stage are undefined and left out of the percentiles. Fewer than
    2 prompts, or a stage with no values, give (nan, nan).
    """
    stages = []
    for name, values, prompts in (("before", before, before_prompts), ("after", after, after_prompts)):
        values = np.asarray(values, dtype=float)
        prompts = np.asarray(prompts, dtype=object)
        if len(values) != len(prompts):
            raise ValueError(
                f"paired_bootstrap_diff_ci: {len(values)} {name} values but {len(prompts)} prompt ids"
            )
        keep = ~np.isnan(values)
        stages.append(pd.DataFrame({"value": values[keep], "prompt": prompts[keep]}))
    if any(stage.empty for stage in stages):
        return (math.nan, math.nan)
    prompt_ids = sorted(set(stages[0]["prompt"]) | set(stages[1]["prompt"]), key=str)
    if len(prompt_ids) < 2:
        return (math.nan, math.nan)
    sums, counts = [], []
    for stage in stages:
        agg = stage.groupby("prompt")["value"].agg(["sum", "count"]).reindex(prompt_ids, fill_value=0)
        sums.append(agg["sum"].to_numpy(dtype=float))
        counts.append(agg["count"].to_numpy(dtype=float))
    return _ratio_bootstrap_ci(sums, counts, [-1.0, 1.0], n_boot, seed, alpha)


def wilcoxon_p(differences, decimals: int = 10) -> float:
    """Two-sided Wilcoxon signed-rank p of `differences` against 0 (`scipy.stats.wilcoxon`, zero_method="wilcox").

    Differences are rounded to `decimals` first: deltas are differences of rates, and float round-off
    would otherwise turn equal magnitudes into spurious rank differences or near-zeros into signs. Zeros are
    dropped (ties of the sign test too). NaN when no non-zero difference is left: the test has no data then,
    which is not evidence of p = 1. NaN differences are ignored.
    """
    from scipy.stats import wilcoxon

    d = np.round(np.asarray(differences, dtype=float), decimals)
    d = d[~np.isnan(d)]
    if np.count_nonzero(d) < 1:
        return math.nan
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm_adjust(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (`statsmodels multipletests(method="holm")`).

    NaN p-values (untestable cells) stay NaN and are not counted in the family size m.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    finite = ~np.isnan(p)
    if finite.any():
        adjusted[finite] = multipletests(p[finite], method="holm")[1]
    return adjusted


def logistic_slope_test(misaligned, score, groups) -> dict:
    """Monotonicity of P(M=1 | score): logistic GEE slope of M on the standardised score, prompt clusters.

    statsmodels `GEE` with a Binomial family, exchangeable working correlation within each group (prompt) and
    its default robust (sandwich) covariance. The score is standardised over the data given, so the slope is
    per standard deviation. Returns slope, se, p (Wald), n, n_groups and `reason`: "" when fitted; otherwise
    the statistics are NaN and `reason` says why (M all 0 or all 1, a constant score, fewer than 2 groups, or
    the fit failing). Warnings raised by the fit (e.g. non-convergence) are reported in `reason` too.
    """
    import statsmodels.api as sm

    m = np.asarray(misaligned, dtype=float)
    s = np.asarray(score, dtype=float)
    g = pd.Series(list(groups) if not isinstance(groups, pd.Series) else groups.to_list(), dtype=object)
    if not len(m) == len(s) == len(g):
        raise ValueError(f"logistic_slope_test: lengths differ (M {len(m)}, score {len(s)}, groups {len(g)})")
    keep = ~(np.isnan(m) | np.isnan(s))
    m, s, g = m[keep], s[keep], g[keep].to_numpy()
    result = {"slope": math.nan, "se": math.nan, "p": math.nan, "n": len(m),
              "n_groups": len(set(g)), "reason": ""}  # fmt: skip
    if len(m) == 0:
        result["reason"] = "no rows with both M and a score"
    elif np.all(m == m[0]):
        result["reason"] = f"M is constant (all {int(m[0])}): no slope is estimable"
    elif np.all(s == s[0]):
        result["reason"] = "score is constant: no slope is estimable"
    elif result["n_groups"] < 2:
        result["reason"] = "fewer than 2 prompt clusters: the robust covariance is undefined"
    if result["reason"]:
        return result
    z = (s - s.mean()) / s.std()
    codes, _ = pd.factorize(g, sort=True)
    order = np.argsort(codes, kind="stable")  # GEE wants each cluster's rows together
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = sm.GEE(
                m[order], sm.add_constant(z[order]), groups=codes[order],
                family=sm.families.Binomial(), cov_struct=sm.cov_struct.Exchangeable(),
            ).fit()  # fmt: skip
        except (ValueError, np.linalg.LinAlgError) as err:
            result["reason"] = f"GEE fit failed: {err}"
            return result
    result.update(slope=float(fit.params[1]), se=float(fit.bse[1]), p=float(fit.pvalues[1]))
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if messages:
        result["reason"] = "fitted with warnings: " + "; ".join(messages)
    return result


def cluster_sign_flip_p(values, clusters) -> float:
    """Exact two-sided sign-flip permutation test that the mean of the per-cluster mean values is 0.

    The unit is the cluster (e.g. one organism: every run of a (model, seed) shares its Phase-1 adapter), so
    runs that share an organism count once. Under the null each cluster mean is symmetric about 0: the p-value
    is the share of the 2^C sign assignments whose |mean| is at least the observed one. NaN values are dropped;
    no cluster gives NaN. C clusters cannot give p below 2 / 2^C (0.25 for three seeds).
    """
    values = np.asarray(values, dtype=float)
    labels = np.asarray(list(clusters), dtype=object)
    keep = np.isfinite(values)
    frame = pd.DataFrame({"value": values[keep], "cluster": labels[keep]})
    means = frame.groupby("cluster", sort=True)["value"].mean().to_numpy()
    if len(means) == 0:
        return math.nan
    if len(means) > 20:
        raise ValueError(
            f"cluster_sign_flip_p: {len(means)} clusters; the exact test enumerates 2^C sign flips"
        )
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(means))).reshape(len(means), -1).T
    null = np.abs((signs * means).mean(axis=1))
    observed = abs(means.mean())
    return float(np.mean(null >= observed - 1e-12))
