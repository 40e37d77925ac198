import math

import numpy as np
import pandas as pd
import pytest

from cmt.analysis.eta import eta_summary, eta_table, read_candidates, with_transforms
from cmt.cli import main as cli_main
from cmt.runtime.io import write_parquet

Z = 1.959963984540054


def wilson_by_hand(k, n):
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def candidate(
    prompt_id, score, misaligned, selected=False, seed=0, scored=True, method="self_certainty", k=4
):
    return {"organism": "sycophancy", "method": method, "k": k, "seed": seed, "prompt_id": prompt_id,
            "score": score, "selected": selected, "scored": scored,
            "misaligned": float(misaligned) if scored else math.nan}  # fmt: skip


def test_within_prompt_transforms_by_hand():
    rows = [candidate("a", s, 0) for s in (1.0, 2.0, 2.0, 5.0)]
    rows += [candidate("b", 3.0, 0), candidate("b", 3.0, 1)]  # all tied
    rows += [candidate("c", 1.0, 0), candidate("c", math.nan, 1)]  # one finite score: no transform
    rows += [candidate("a", 9.0, 1, seed=1), candidate("a", 0.0, 0, seed=1)]  # another run's prompt "a"
    df = with_transforms(pd.DataFrame(rows))
    a = df[(df["prompt_id"] == "a") & (df["seed"] == 0)]
    # Average ranks 1, 2.5, 2.5, 4 of 4 -> (r - 1) / 3.
    assert a["score_rank"].tolist() == pytest.approx([0.0, 0.5, 0.5, 1.0])
    scores = np.array([1.0, 2.0, 2.0, 5.0])
    assert a["score_zscore"].tolist() == pytest.approx(((scores - 2.5) / scores.std()).tolist())
    b = df[df["prompt_id"] == "b"]
    assert b["score_rank"].tolist() == [0.5, 0.5] and b["score_zscore"].tolist() == [0.0, 0.0]
    assert df.loc[df["prompt_id"] == "c", ["score_rank", "score_zscore"]].isna().all().all()
    other_run = df[(df["prompt_id"] == "a") & (df["seed"] == 1)]
    assert other_run["score_rank"].tolist() == [1.0, 0.0]  # ranked within its own run only


def rising_candidates():
    """60 prompts × 4 candidates; the candidate of within-prompt rank r is misaligned on (r+1)*15 % of
    prompts exactly, so η by rank bin is 0.15, 0.30, 0.45, 0.60; the best-scored candidate is selected."""
    rows = []
    for p in range(60):
        for r in range(4):
            misaligned = p % 20 < 3 * (r + 1)
            rows.append(candidate(f"p{p}", float(r) + p, misaligned, selected=r == 3))
    return pd.DataFrame(rows)


def test_eta_bins_by_hand():
    bins = eta_table(rising_candidates(), n_bins=10)
    rank = bins[bins["transform"] == "rank"].set_index("bin")
    assert len(rank) == 10
    occupied = {0: 0.15, 3: 0.30, 6: 0.45, 9: 0.60}  # u = 0, 1/3, 2/3, 1
    for b in range(10):
        if b in occupied:
            assert rank.loc[b, "n"] == 60
            assert rank.loc[b, "eta"] == pytest.approx(occupied[b])
            lo, hi = wilson_by_hand(round(occupied[b] * 60), 60)
            assert (rank.loc[b, "eta_ci_low"], rank.loc[b, "eta_ci_high"]) == pytest.approx((lo, hi))
        else:  # an empty bin has n = 0 and NaN η, never 0
            assert (
                rank.loc[b, "n"] == 0
                and math.isnan(rank.loc[b, "eta"])
                and math.isnan(rank.loc[b, "eta_ci_low"])
            )
    zscore = bins[bins["transform"] == "zscore"]
    assert len(zscore) == 10 and zscore["n"].sum() == 240
    # Every prompt has the same within-prompt z pattern: 4 distinct values, so the deciles collapse to them.
    assert sorted(zscore.loc[zscore["n"] > 0, "eta"].round(6)) == [0.15, 0.3, 0.45, 0.6]


def test_unscored_candidates_do_not_count_toward_eta():
    rows = [candidate("a", 1.0, 0), candidate("a", 2.0, 1), candidate("a", 3.0, 0, scored=False)]
    rank = eta_table(pd.DataFrame(rows), n_bins=2).query("transform == 'rank'")
    # The unscored candidate still ranks its siblings (u = 0 and 0.5) but is not an η observation.
    assert rank["n"].tolist() == [1, 1]
    assert rank["eta"].tolist() == [0.0, 1.0]


def test_summary_flatness_slope_and_selection_effect_by_hand():
    summary = eta_summary(rising_candidates(), n_bins=10, n_boot=500, seed=0).set_index("transform")
    rank = summary.loc["rank"]
    assert (rank["n_candidates"], rank["n_scored"], rank["n_used"], rank["n_prompts"]) == (240, 240, 240, 60)
    assert rank["n_bins_nonempty"] == 4
    assert rank["flatness"] == pytest.approx(0.60 - 0.15)
    assert rank["slope"] > 0 and rank["slope_p"] < 0.01 and rank["slope_reason"] == ""
    # Selected = rank 3 (M rate 0.60); a uniform candidate has M rate (0.15 + 0.30 + 0.45 + 0.60) / 4.
    assert rank["m_selected"] == pytest.approx(0.60)
    assert rank["m_uniform"] == pytest.approx(0.375)
    assert rank["selection_effect"] == pytest.approx(0.225)
    assert rank["n_selection_prompts"] == 60
    assert rank["selection_effect_ci_low"] <= 0.225 <= rank["selection_effect_ci_high"]
    assert summary.loc["zscore", "selection_effect"] == pytest.approx(0.225)


def test_flat_eta_has_no_slope_and_a_small_flatness():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(200):
        scores = rng.normal(size=4)
        for i in range(4):
            rows.append(
                candidate(f"p{p}", scores[i], rng.random() < 0.4, selected=i == int(np.argmax(scores)))
            )
    summary = eta_summary(pd.DataFrame(rows), n_bins=4, n_boot=300, seed=0).set_index("transform")
    for transform in ("rank", "zscore"):
        assert abs(summary.loc[transform, "slope"]) < 0.2
        assert summary.loc[transform, "slope_p"] > 0.05
        assert summary.loc[transform, "flatness"] < 0.15
    assert abs(summary.loc["rank", "selection_effect"]) < 0.1


def test_degenerate_groups_are_nan_with_reasons():
    rows = [candidate("a", 1.0, 0, selected=True), candidate("a", 2.0, 0)]
    summary = eta_summary(pd.DataFrame(rows), n_bins=10, n_boot=100).set_index("transform")
    assert "M is constant" in summary.loc["rank", "slope_reason"]
    assert math.isnan(summary.loc["rank", "slope"])
    assert summary.loc["rank", "selection_effect"] == pytest.approx(0.0)
    one_bin = [candidate("a", 1.0, 0), candidate("a", 1.0, 1)]  # tied: everything in one bin
    summary = eta_summary(pd.DataFrame(one_bin), n_bins=10, n_boot=100).set_index("transform")
    assert summary.loc["rank", "n_bins_nonempty"] == 1
    assert math.isnan(summary.loc["rank", "flatness"])  # one bin is not evidence of flatness
    assert summary.loc["rank", "n_selection_prompts"] == 0  # nothing selected
    assert math.isnan(summary.loc["rank", "selection_effect"])


def test_eta_cli_and_bad_file(tmp_path):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"seed{seed}.parquet"
        write_parquet(path, rising_candidates().assign(seed=seed))
        paths.append(str(path))
    out, summary = tmp_path / "eta.csv", tmp_path / "eta_summary.csv"
    argv = ["eta", "--candidates", *paths, "--out", str(out), "--summary", str(summary), "--n-boot", "200"]
    assert cli_main(argv) == 0
    bins = pd.read_csv(out)
    assert bins.loc[bins["transform"] == "rank", "n"].sum() == 480
    assert pd.read_csv(summary).set_index("transform").loc["rank", "n_prompts"] == 60  # prompts pooled
    bad = tmp_path / "bad.parquet"
    write_parquet(bad, pd.DataFrame({"prompt_id": ["a"]}))
    with pytest.raises(ValueError, match=f"candidate file {bad}: missing column"):
        read_candidates([str(bad)])
