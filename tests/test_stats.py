import itertools
import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.stats import binom, wilcoxon

from cmt.analysis import stats
from cmt.analysis.stats import (
    cluster_bootstrap_ci,
    cluster_sign_flip_p,
    holm_adjust,
    induction_check,
    logistic_slope_test,
    paired_bootstrap_diff_ci,
    sign_test,
    wilcoxon_p,
    wilson_interval,
)


def test_sign_test_small_counts_by_hand():
    # 0 of 10 suppressed: two-sided p = 2 * 0.5**10.
    assert sign_test(0, 10) == pytest.approx(2 * 0.5**10)
    # 8 of 10: P(X <= 2) + P(X >= 8) = 2 * (1 + 10 + 45) / 1024.
    assert sign_test(8, 2) == pytest.approx(2 * 56 / 1024)
    assert sign_test(5, 5) == pytest.approx(1.0)
    assert sign_test(1, 0) == pytest.approx(1.0)


def test_sign_test_empty_is_nan_not_zero():
    assert math.isnan(sign_test(0, 0))


@pytest.mark.parametrize(
    ("suppressed", "n", "expected"),
    [
        (110, 175, 8.3e-4),  # reward hacking: 63% of 175
        (115, 160, 3.0e-8),  # emergent misalignment: 72% of 160
        (44, 174, 4.7e-11),  # sycophancy: 25% of 174
    ],
)
def test_sign_test_matches_paper(suppressed, n, expected):
    p = sign_test(suppressed, n - suppressed)
    assert p == pytest.approx(expected, rel=0.06)
    assert p == pytest.approx(
        2 * min(binom.cdf(suppressed, n, 0.5), binom.sf(suppressed - 1, n, 0.5)), rel=1e-9
    )


def test_sign_test_paper_balanced_case():
    assert sign_test(86, 87) == pytest.approx(1.0)  # spurious: 50% of 173


def test_wilson_interval_by_hand():
    k, n, z = 7, 20, 1.959963984540054
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9)
    assert hi == pytest.approx(centre + half, abs=1e-9)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_induction_check():
    base = [0] * 95 + [1] * 5
    strong = [1] * 80 + [0] * 20
    weak = [1] * 12 + [0] * 88
    assert induction_check(base, strong, 0.3)["induced"] is True
    assert induction_check(base, weak, 0.3)["induced"] is False
    report = induction_check(base, strong, 0.3)
    assert report["risk_base"] == pytest.approx(0.05)
    assert report["risk_phase1"] == pytest.approx(0.8)
    assert report["n_base"] == 100


def test_cluster_bootstrap_matches_exact_enumeration():
    # 5 equal-size clusters: the bootstrap distribution of the pooled mean is the mean of 5 cluster means
    # drawn with replacement, which has 5**5 equally likely outcomes; its percentiles are the exact CI.
    cluster_means = np.array([0.0, 1.0, 3.0, 7.0, 15.0])
    values = np.repeat(cluster_means, 3) + np.tile([-0.5, 0.0, 0.5], 5)
    clusters = np.repeat(["a", "b", "c", "d", "e"], 3)
    exact = [np.mean(c) for c in itertools.product(cluster_means, repeat=5)]
    lo, hi = cluster_bootstrap_ci(values, clusters, n_boot=20000, seed=3)
    assert lo == pytest.approx(np.percentile(exact, 2.5), abs=0.3)
    assert hi == pytest.approx(np.percentile(exact, 97.5), abs=0.3)
    assert lo < values.mean() < hi


def test_cluster_bootstrap_is_seeded_and_resamples_clusters_not_rows():
    rng = np.random.default_rng(0)
    # 6 clusters of 40 near-identical rows: the CI must reflect 6 cluster means, not 240 rows.
    means = rng.normal(0, 1, 6)
    values = np.repeat(means, 40) + rng.normal(0, 0.01, 240)
    clusters = np.repeat(np.arange(6), 40)
    first = cluster_bootstrap_ci(values, clusters, n_boot=500, seed=7)
    assert first == cluster_bootstrap_ci(values, clusters, n_boot=500, seed=7)
    assert first != cluster_bootstrap_ci(values, clusters, n_boot=500, seed=8)
    cluster_width = first[1] - first[0]
    row_width = cluster_bootstrap_ci(values, np.arange(240), n_boot=500, seed=7)
    assert cluster_width > 3 * (row_width[1] - row_width[0])
    assert cluster_width == pytest.approx(2 * 1.96 * means.std(ddof=0) / math.sqrt(6), rel=0.35)


def test_cluster_bootstrap_degenerate_cases_are_nan():
    assert all(math.isnan(x) for x in cluster_bootstrap_ci([1.0, 2.0], ["a", "a"]))
    assert all(math.isnan(x) for x in cluster_bootstrap_ci([], []))
    # NaN values are dropped, not counted as zeros: two clusters are left.
    lo, hi = cluster_bootstrap_ci([1.0, math.nan, 3.0], ["a", "a", "b"], n_boot=2000, seed=0)
    assert (lo, hi) == pytest.approx((1.0, 3.0))
    with pytest.raises(ValueError, match="3 values but 2 cluster labels"):
        cluster_bootstrap_ci([1, 2, 3], ["a", "b"])


def test_paired_bootstrap_matches_binomial_of_discordant_prompts():
    # Phase 1 misaligned on prompts 0-59, phase 3 on 0-39: 20 of 100 prompts move 1 -> 0, none move up.
    # Resampling prompts, delta = -(discordant prompts drawn)/100 ~ -Binomial(100, 0.2)/100.
    prompts = [f"p{i}" for i in range(100)]
    before = [1.0] * 60 + [0.0] * 40
    after = [1.0] * 40 + [0.0] * 60
    lo, hi = paired_bootstrap_diff_ci(before, prompts, after, prompts, n_boot=20000, seed=1)
    assert lo == pytest.approx(-binom.ppf(0.975, 100, 0.2) / 100, abs=0.011)
    assert hi == pytest.approx(-binom.ppf(0.025, 100, 0.2) / 100, abs=0.011)
    # Unpaired, the same marginals would give a CI about 1.7 times wider; pairing must narrow it.
    assert hi - lo < 0.17


def test_paired_bootstrap_aligns_by_prompt_id_and_drops_unscored():
    before = [1.0, 0.0, math.nan, 1.0]
    after = [0.0, math.nan, 1.0, 1.0]
    # Same rows, shuffled order: the prompt ids, not positions, pair the stages.
    a = paired_bootstrap_diff_ci(before, ["a", "b", "c", "d"], after, ["a", "b", "c", "d"], 500, 4)
    b = paired_bootstrap_diff_ci(before, ["a", "b", "c", "d"], after[::-1], ["d", "c", "b", "a"], 500, 4)
    assert a == pytest.approx(b)
    point = np.nanmean(after) - np.nanmean(before)
    assert a[0] <= point <= a[1]
    assert all(math.isnan(x) for x in paired_bootstrap_diff_ci([math.nan], ["a"], [1.0], ["a"]))


def test_cluster_sign_flip_tests_the_pooled_mean_that_the_tables_report():
    """Clusters a (-10, -10, -10), b (20) and c (-5, -5): sums -30, 20, -10 over 6 values, pooled mean -20/6.
    The 8 sign flips give totals |-20|, 0, |-60|, |-40|, 40, 60, 0, 20: six reach |-20|, so p = 6/8. The mean of
    the cluster means (-10, 20, -5 -> 5/3) would give p = 1: every flip of (10, 20, 5) reaches 5/3."""
    values = [-10, -10, -10, 20, -5, -5, math.nan]
    clusters = ["a", "a", "a", "b", "c", "c", "c"]
    assert cluster_sign_flip_p(values, clusters) == pytest.approx(6 / 8)
    # One cluster: both of its 2 flips reach the observed |mean|.
    assert cluster_sign_flip_p([-3.0, -1.0], ["a", "a"]) == pytest.approx(1.0)
    assert math.isnan(cluster_sign_flip_p([math.nan], ["a"]))
    with pytest.raises(ValueError, match="3 values but 2 cluster labels"):
        cluster_sign_flip_p([1, 2, 3], ["a", "b"])


def test_cluster_sign_flip_draws_flips_above_the_exact_limit(monkeypatch):
    """Above EXACT_SIGN_FLIP_CLUSTERS the flips are drawn: the p-value is seeded, never 0, and within Monte-Carlo
    error of the exact enumeration (here of 2^14 assignments); 27 clusters, the paper grid's, give a p-value."""
    rng = np.random.default_rng(7)
    sums = rng.normal(-2.0, 6.0, 14)
    exact_flips = np.array(list(itertools.product([-1.0, 1.0], repeat=14)))
    p_exact = np.mean(np.abs(exact_flips @ sums) >= abs(sums.sum()) - 1e-9)
    assert 0.005 < p_exact < 0.5  # a p-value the draws can miss
    monkeypatch.setattr(stats, "EXACT_SIGN_FLIP_CLUSTERS", 10)
    drawn = cluster_sign_flip_p(sums, range(14), seed=1, n_resamples=4000)
    assert drawn == cluster_sign_flip_p(sums, range(14), seed=1, n_resamples=4000)
    assert abs(drawn - p_exact) < 4 * math.sqrt(p_exact * (1 - p_exact) / 4000)
    monkeypatch.undo()
    assert cluster_sign_flip_p(sums, range(14)) == pytest.approx(p_exact)
    # No drawn flip reaches all 27 negative: each one-sided p counts only the observed (1/1000), doubled.
    assert cluster_sign_flip_p([-5.0] * 27, range(27), n_resamples=999) == pytest.approx(2 / 1000)


def test_wilcoxon_exact_by_enumeration():
    d = [1.0, 2.0, -3.0, 4.0, 5.0, -6.0]
    ranks = np.arange(1, 7)
    negative_rank_sum = 3 + 6
    # Under H0 every sign pattern is equally likely; two-sided p = 2 * P(W- <= observed).
    sums = [ranks[list(s)].sum() for r in range(7) for s in itertools.combinations(range(6), r)]
    p_hand = min(1.0, 2 * np.mean(np.array(sums) <= negative_rank_sum))
    assert wilcoxon_p(d) == pytest.approx(p_hand)
    assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue)


def test_wilcoxon_rounds_and_drops_zeros():
    assert math.isnan(wilcoxon_p([0.0, 0.0, math.nan]))
    assert math.isnan(wilcoxon_p([]))
    # 0.3 - 0.1 and 0.2 differ by round-off; rounded they tie, as they should.
    d = [0.3 - 0.1, 0.2, -0.1, 0.4, 0.0]
    assert wilcoxon_p(d) == pytest.approx(wilcoxon([0.2, 0.2, -0.1, 0.4]).pvalue)


def test_holm_matches_hand_step_down():
    p = np.array([0.01, 0.04, 0.03, 0.005, math.nan, 0.5])
    finite = p[~np.isnan(p)]
    m = len(finite)
    order = np.argsort(finite)
    hand = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * finite[j]))
        hand[j] = running
    adjusted = holm_adjust(p)
    assert math.isnan(adjusted[4])
    assert adjusted[~np.isnan(p)] == pytest.approx(hand)
    assert adjusted[3] == pytest.approx(5 * 0.005)
    assert all(math.isnan(x) for x in holm_adjust([math.nan]))


def _clustered_candidates(slope, n_prompts=150, k=4, seed=0):
    rng = np.random.default_rng(seed)
    score = rng.normal(size=(n_prompts, k))
    prompt_effect = rng.normal(0, 0.5, size=(n_prompts, 1))
    p = 1 / (1 + np.exp(-(slope * score + prompt_effect)))
    m = (rng.random((n_prompts, k)) < p).astype(float)
    return m.ravel(), score.ravel(), np.repeat(np.arange(n_prompts), k)


def test_logistic_slope_recovers_a_rising_eta():
    m, s, g = _clustered_candidates(slope=1.5)
    result = logistic_slope_test(m, s, g)
    assert result["reason"] == ""
    assert result["slope"] > 0 and result["p"] < 1e-6
    # The per-SD slope agrees with an independent logit fit on the standardised score.
    z = (s - s.mean()) / s.std()
    logit = sm.Logit(m, sm.add_constant(z)).fit(disp=0)
    assert result["slope"] == pytest.approx(logit.params[1], rel=0.1)
    assert (result["n"], result["n_groups"]) == (600, 150)


def test_logistic_slope_is_near_zero_when_flat():
    m, s, g = _clustered_candidates(slope=0.0, seed=2)
    result = logistic_slope_test(m, s, g)
    assert abs(result["slope"]) < 0.2
    assert result["p"] > 0.05


def test_logistic_slope_degenerate_cases():
    groups = [0, 0, 1, 1]
    for m, s, why in (
        ([0, 0, 0, 0], [1, 2, 3, 4], "M is constant"),
        ([1, 1, 1, 1], [1, 2, 3, 4], "M is constant"),
        ([0, 1, 0, 1], [2, 2, 2, 2], "score is constant"),
    ):
        result = logistic_slope_test(m, s, groups)
        assert why in result["reason"]
        assert math.isnan(result["slope"]) and math.isnan(result["p"])
    one_group = logistic_slope_test([0, 1, 0, 1], [1, 2, 3, 4], [0, 0, 0, 0])
    assert "fewer than 2 prompt clusters" in one_group["reason"]
    empty = logistic_slope_test([math.nan], [1.0], [0])
    assert empty["n"] == 0 and math.isnan(empty["slope"])


def _penalised_loglik_by_hand(y, x, b0, b1):
    """Log-likelihood + ½ log det of the Fisher information, written out for one covariate."""
    eta = b0 + b1 * x
    p = 1 / (1 + np.exp(-eta))
    loglik = -np.sum(y * np.logaddexp(0, -eta) + (1 - y) * np.logaddexp(0, eta))  # log p, log(1 − p) stably
    w = p * (1 - p)
    info = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum()]])
    return loglik + 0.5 * np.log(np.linalg.det(info))


def test_separation_complete_quasi_and_overlap():
    from cmt.analysis.stats import separation

    assert separation([0, 0, 1, 1], [1, 2, 3, 4]) == "complete"
    assert separation([1, 1, 0, 0], [1, 2, 3, 4]) == "complete"  # falling scores separate too
    assert separation([0, 0, 1, 0, 1], [1, 2, 2, 2, 3]) == "quasi-complete"  # ties only at the threshold 2
    assert separation([0, 1, 0, 1], [1, 2, 3, 4]) == ""
    assert separation([0, 0, 0], [1, 2, 3]) == ""  # M constant is a degenerate case, reported apart
    assert separation([0, 1, math.nan, 1], [1, 3, 2, math.nan]) == "complete"  # NaN rows dropped
    # The criterion is exactly whether the MLE is finite: an overlapping sample fits to finite values.
    fit = sm.Logit(np.array([0, 1, 0, 1.0]), sm.add_constant(np.array([1, 2, 3, 4.0]))).fit(disp=0)
    assert np.all(np.isfinite(fit.params)) and fit.mle_retvals["converged"]


@pytest.mark.parametrize(
    "a, b, c, d",  # x = 1: a misaligned, b not; x = 0: c misaligned, d not
    [(7, 3, 2, 9), (12, 0, 3, 8), (1, 20, 0, 30), (5, 5, 5, 5)],
)
def test_firth_two_by_two_is_the_log_odds_ratio_with_half_added(a, b, c, d):
    from cmt.analysis.stats import firth_logistic, firth_slope_test

    x = np.repeat([1.0, 1.0, 0.0, 0.0], [a, b, c, d])
    y = np.repeat([1.0, 0.0, 1.0, 0.0], [a, b, c, d])
    fit = firth_logistic(y, np.column_stack([np.ones(len(x)), x]))
    assert fit["converged"]
    log_or = math.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    assert fit["beta"][1] == pytest.approx(log_or, abs=1e-6)
    assert fit["beta"][0] == pytest.approx(math.log((c + 0.5) / (d + 0.5)), abs=1e-6)
    # Standardising x rescales the slope by its SD (Firth's estimate is invariant to affine recoding).
    assert firth_slope_test(y, x)["slope"] == pytest.approx(log_or * x.std(), abs=1e-6)


def test_firth_profile_ci_and_p_by_independent_optimisation():
    from scipy.optimize import minimize, minimize_scalar
    from scipy.stats import chi2

    from cmt.analysis.stats import firth_slope_test

    s = np.arange(20.0)
    y = (s >= 9).astype(float)  # complete separation: the MLE slope is infinite, Firth's is not
    result = firth_slope_test(y, s)
    x = (s - s.mean()) / s.std()
    top = minimize(lambda b: -_penalised_loglik_by_hand(y, x, *b), [0.0, 1.0], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000})  # fmt: skip
    assert result["slope"] == pytest.approx(top.x[1], abs=1e-5)

    def profile(b1):
        return -minimize_scalar(lambda b0: -_penalised_loglik_by_hand(y, x, b0, b1), bounds=(-50, 50),
                                method="bounded", options={"xatol": 1e-12}).fun  # fmt: skip

    crit = chi2.ppf(0.95, 1)
    assert result["ci_low"] < result["slope"] < result["ci_high"] < math.inf
    for end in (result["ci_low"], result["ci_high"]):
        assert 2 * (-top.fun - profile(end)) == pytest.approx(crit, abs=1e-4)
    assert result["p"] == pytest.approx(chi2.sf(2 * (-top.fun - profile(0.0)), 1), rel=1e-3)


def test_firth_matches_the_mle_on_a_large_sample():
    from cmt.analysis.stats import firth_slope_test

    rng = np.random.default_rng(3)
    s = rng.normal(size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.3 + 0.8 * s)))).astype(float)
    result = firth_slope_test(y, s)
    logit = sm.Logit(y, sm.add_constant((s - s.mean()) / s.std())).fit(disp=0)
    assert result["slope"] == pytest.approx(logit.params[1], abs=0.005)
    assert abs(result["slope"]) < abs(logit.params[1])  # the penalty shrinks toward 0
    wald = logit.conf_int()[1]
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((wald[0], wald[1]), abs=0.01)
    assert result["p"] < 1e-10 and result["reason"] == ""


def test_firth_degenerate_cases_and_interval_sign():
    from cmt.analysis.stats import firth_slope_test, interval_sign

    for m, s, why in (
        ([0, 0, 0, 0], [1, 2, 3, 4], "M is constant"),
        ([0, 1, 0, 1], [2, 2, 2, 2], "score is constant"),
        ([math.nan], [1.0], "no rows"),
    ):
        result = firth_slope_test(m, s)
        assert why in result["reason"] and math.isnan(result["slope"]) and math.isnan(result["ci_low"])
    assert interval_sign(0.1, 0.5) == 1
    assert interval_sign(-0.5, -0.1) == -1
    assert interval_sign(-0.1, 0.2) == 0
    assert interval_sign(0.0, 1.0) == 0  # touching 0 is not a sign
    assert interval_sign(math.nan, math.nan) == 0
