"""Statistics used by the tables. Every function wraps a scipy/statsmodels call where one exists."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

# How a slope's reason starts when the GEE fit ran but warned (its p may still be NaN).
FIT_WARNED = "fitted with warnings"


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


def _unestimable(m: np.ndarray, s: np.ndarray) -> str:
    """Why no slope of M on the score can be estimated from these rows ('' when one can)."""
    if len(m) == 0:
        return "no rows with both M and a score"
    if np.all(m == m[0]):
        return f"M is constant (all {int(m[0])}): no slope is estimable"
    if np.all(s == s[0]):
        return "score is constant: no slope is estimable"
    return ""


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
    result["reason"] = _unestimable(m, s)
    if not result["reason"] and result["n_groups"] < 2:
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
        result["reason"] = FIT_WARNED + ": " + "; ".join(messages)
    return result


# Up to this many clusters the sign-flip test enumerates all 2^C assignments; above it, it draws them.
EXACT_SIGN_FLIP_CLUSTERS = 16


def cluster_sign_flip_p(values, clusters, seed: int = 0, n_resamples: int = 100_000) -> float:
    """Two-sided sign-flip permutation test that the mean of `values` is 0, with the cluster as the unit.

    The unit is the cluster (e.g. one organism: every run of a (model, seed) shares its Phase-1 adapter), so
    runs that share an organism flip together. The statistic is the pooled mean (the sum of the cluster sums
    over the number of values), the mean that the tables report and bootstrap; under the null each cluster's
    values are symmetric about 0 as a whole. Wraps `scipy.stats.permutation_test` on the cluster sums: exact up
    to EXACT_SIGN_FLIP_CLUSTERS clusters (C clusters cannot give p below 2 / 2^C, 0.25 for three seeds), else
    `n_resamples` random flips drawn from `seed` (the paper's grid has 27 (model, seed) clusters); scipy then
    doubles the smaller one-sided p, each counting the observed assignment, so p is never 0. NaN values are
    dropped; no cluster gives NaN.
    """
    from scipy.stats import permutation_test

    values = np.asarray(values, dtype=float)
    labels = np.asarray(list(clusters), dtype=object)
    if len(values) != len(labels):
        raise ValueError(f"cluster_sign_flip_p: {len(values)} values but {len(labels)} cluster labels")
    keep = np.isfinite(values)
    frame = pd.DataFrame({"value": values[keep], "cluster": labels[keep]})
    sums = frame.groupby("cluster", sort=True)["value"].sum().to_numpy()
    if len(sums) == 0:
        return math.nan
    if len(sums) == 1:  # both flips of one cluster reach the observed |mean| (scipy needs two)
        return 1.0
    n_values = len(frame)
    exact = len(sums) <= EXACT_SIGN_FLIP_CLUSTERS
    result = permutation_test(
        (sums,),
        lambda flipped, axis: flipped.sum(axis=axis) / n_values,
        permutation_type="samples",
        vectorized=True,
        n_resamples=2 ** len(sums) if exact else n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(result.pvalue, 1.0))


def separation(misaligned, score) -> str:
    """Does the score separate M? "complete", "quasi-complete" or "" (neither, or nothing to separate).

    With one covariate and an intercept the logistic MLE is infinite exactly when some threshold c has every
    M = 1 on one side (score ≥ c) and every M = 0 on the other (score ≤ c): max score of one class ≤ min score
    of the other, in either direction. Strict (<) is complete separation; equality (ties at c) is
    quasi-complete. NaN rows are dropped; M constant gives "" (that degenerate case is reported apart).
    """
    m = np.asarray(misaligned, dtype=float)
    s = np.asarray(score, dtype=float)
    keep = ~(np.isnan(m) | np.isnan(s))
    ones, zeros = s[keep & (m == 1)], s[keep & (m == 0)]
    if len(ones) == 0 or len(zeros) == 0:
        return ""
    gaps = (ones.min() - zeros.max(), zeros.min() - ones.max())
    if max(gaps) > 0:
        return "complete"
    return "quasi-complete" if max(gaps) == 0 else ""


def _penalised_loglik(y: np.ndarray, x: np.ndarray, beta: np.ndarray) -> float:
    """Log-likelihood + ½ log det I(β) (Jeffreys prior); −inf where I(β) is numerically singular."""
    eta = x @ beta
    loglik = -float(np.sum(y * np.logaddexp(0.0, -eta) + (1 - y) * np.logaddexp(0.0, eta)))
    sign, logdet = np.linalg.slogdet((x.T * _weights(eta)) @ x)
    return loglik + 0.5 * logdet if sign > 0 else -math.inf


def _weights(eta: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(eta) * expit(-eta)


def _firth_newton(y, x, beta, free, max_iter: int = 500) -> tuple[np.ndarray, float, bool]:
    """Maximise the penalised likelihood over the `free` coefficients (the others stay fixed).

    Newton–Raphson with Fisher information on Firth's modified score U* = X'(y − π + h(½ − π)), h the hat
    diagonal of W^½ X (X'WX)⁻¹ X' W^½; steps capped at 5 and halved while l* falls by more than rounding
    (as logistf does). Converged when |U*| of the free coefficients is below 1e-9 per row.
    """
    from scipy.special import expit

    beta = np.array(beta, dtype=float)
    current = _penalised_loglik(y, x, beta)
    for _ in range(max_iter):
        eta = x @ beta
        pi, w = expit(eta), _weights(eta)
        info = (x.T * w) @ x
        try:
            inverse = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            return beta, current, False
        hat = w * np.einsum("ij,jk,ik->i", x, inverse, x)
        score = x.T @ (y - pi + hat * (0.5 - pi))
        if np.max(np.abs(score[free])) < 1e-9 * len(y):
            return beta, current, True
        step = np.zeros_like(beta)
        step[free] = np.linalg.solve(info[np.ix_(free, free)], score[free])
        step *= min(1.0, 5.0 / np.max(np.abs(step)))
        for _ in range(50):
            value = _penalised_loglik(y, x, beta + step)
            if value >= current - 1e-9 * max(1.0, abs(current)):  # a fall below rounding noise is none
                break
            step /= 2
        else:
            return beta, current, False  # no ascent left: at the optimum up to rounding, or stuck
        beta, current = beta + step, value
    return beta, current, False


def firth_logistic(y, x) -> dict:
    """Firth's bias-reduced logistic regression of binary y on design x (include the intercept column).

    Maximises the Jeffreys-penalised likelihood, which is finite even under (quasi-)complete separation.
    Returns beta, se (Wald, from I(β)⁻¹ at the estimate), loglik (the penalised log-likelihood) and
    converged.
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    free = np.ones(x.shape[1], dtype=bool)
    beta, loglik, converged = _firth_newton(y, x, np.zeros(x.shape[1]), free)
    info = (x.T * _weights(x @ beta)) @ x
    se = np.sqrt(np.diag(np.linalg.inv(info))) if converged else np.full(x.shape[1], math.nan)
    return {"beta": beta, "se": se, "loglik": loglik, "converged": converged}


def firth_slope_test(misaligned, score, alpha: float = 0.05) -> dict:
    """Firth logistic slope of M on the standardised score, with a profile penalised-likelihood CI and p.

    Unlike `logistic_slope_test` it treats rows as independent (no prompt clusters), but it is finite under
    separation. The CI is {b : 2 (l*(β̂) − max over the intercept of l*(·, b)) ≤ χ²₁(1 − alpha)} (Heinze and
    Schemper 2002); p is the penalised likelihood-ratio test of slope 0 on that same profile. Returns slope,
    ci_low, ci_high, p, n and `reason` ("" when fitted; else why the statistics are NaN). An endpoint the
    profile never crosses within 1e6 standard deviations is ±inf.
    """
    from scipy.optimize import brentq
    from scipy.stats import chi2

    m, s = np.asarray(misaligned, dtype=float), np.asarray(score, dtype=float)
    keep = ~(np.isnan(m) | np.isnan(s))
    m, s = m[keep], s[keep]
    result = {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "n": len(m),
              "reason": ""}  # fmt: skip
    result["reason"] = _unestimable(m, s)
    if result["reason"]:
        return result
    x = np.column_stack([np.ones(len(s)), (s - s.mean()) / s.std()])
    fit = firth_logistic(m, x)
    if not fit["converged"]:
        result["reason"] = "Firth fit did not converge"
        return result
    slope, crit, top = float(fit["beta"][1]), chi2.ppf(1 - alpha, 1), fit["loglik"]
    free = np.array([True, False])

    def deviance(b: float) -> float:
        _, value, _ = _firth_newton(m, x, np.array([fit["beta"][0], b]), free)
        return min(2 * (top - value), 1e6)  # capped so root finding never meets inf

    ends = []
    for direction in (-1.0, 1.0):
        inner, width, end = 0.0, max(float(fit["se"][1]), 0.1), direction * math.inf
        while width < 1e6 * max(float(fit["se"][1]), 1.0):
            if deviance(slope + direction * width) > crit:  # the crossing lies between inner and width
                lo, hi = sorted((slope + direction * inner, slope + direction * width))
                end = brentq(lambda b: deviance(b) - crit, lo, hi, xtol=1e-10)
                break
            inner, width = width, width * 2
        ends.append(end)
    p = float(chi2.sf(max(deviance(0.0), 0.0), 1))
    result.update(slope=slope, ci_low=float(ends[0]), ci_high=float(ends[1]), p=p)
    return result


def interval_sign(low: float, high: float) -> int:
    """+1 when the interval lies above 0, −1 when below, 0 when it contains 0 or is undefined (NaN)."""
    if low > 0:
        return 1
    if high < 0:
        return -1
    return 0
