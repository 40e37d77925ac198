import math

import pandas as pd
import pytest

from cmt.stats import sign_test
from cmt.tables import main_table, runs_table


def eval_rows(model, organism, seed, stage, misaligned, method=None, k=None):
    return [
        {"model": model, "organism": organism, "seed": seed, "stage": stage, "method": method, "k": k,
         "scored": True, "misaligned": float(m)}
        for m in misaligned
    ] + [{"model": model, "organism": organism, "seed": seed, "stage": stage, "method": method, "k": k,
          "scored": False, "misaligned": math.nan}]  # fmt: skip


def test_runs_and_main_tables_by_hand():
    rows = []
    for seed, (p1, gst, other) in enumerate([(8, 4, 9), (8, 8, 10), (6, 2, 1)]):
        rows += eval_rows("toy", "sycophancy", seed, "base", [1] + [0] * 9)
        rows += eval_rows("toy", "sycophancy", seed, "phase1", [1] * p1 + [0] * (10 - p1))
        rows += eval_rows("toy", "sycophancy", seed, "phase3", [1] * gst + [0] * (10 - gst), "gst", 1)
        rows += eval_rows("toy", "sycophancy", seed, "phase3", [1] * other + [0] * (10 - other), "other", 4)
    runs = runs_table(pd.DataFrame(rows), min_induction_delta=0.3)
    assert len(runs) == 6
    gst = runs[runs["method"] == "gst"].sort_values("seed")
    assert gst["delta"].tolist() == pytest.approx([-0.4, 0.0, -0.4])
    assert gst["risk_base"].tolist() == pytest.approx([0.1] * 3)
    assert (runs["n_eval"] == 10).all()
    # Seed 2: 0.6 vs 0.1 passes +0.3 but its Wilson intervals overlap, so it is flagged.
    assert runs.groupby("seed")["induced"].first().tolist() == [True, True, False]

    main = main_table(runs).iloc[0]
    deltas = [-0.4, 0.1, 0.0, 0.2, -0.4, -0.5]
    assert main["n_runs"] == 6
    assert (main["n_suppressed"], main["n_amplified"], main["n_ties"]) == (3, 2, 1)
    assert main["suppression_ratio"] == pytest.approx(3 / 5)
    assert main["mean_delta"] == pytest.approx(100 * sum(deltas) / 6)
    assert main["p_sign"] == pytest.approx(sign_test(3, 2))


def test_missing_baseline_is_an_error():
    rows = eval_rows("toy", "sycophancy", 0, "phase1", [1, 0])
    with pytest.raises(ValueError, match="missing base or phase-1"):
        runs_table(pd.DataFrame(rows), 0.3)
