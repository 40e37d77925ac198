import math

import pytest
from scipy.stats import binom

from cmt.stats import induction_check, sign_test, wilson_interval


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
