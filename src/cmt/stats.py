"""Statistics used by the tables. Every function wraps a scipy/statsmodels call where one exists."""

from __future__ import annotations

import math

import numpy as np


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
    base = np.asarray(base, dtype=float)
    organism = np.asarray(organism, dtype=float)
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
