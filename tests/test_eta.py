import math

import numpy as np
import pandas as pd
import pytest

from cmt.analysis.eta import eta_summary, eta_table, merge_bins, read_candidates, with_transforms
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
    assert cli_main([*argv, "--min-bin", "200"]) == 0
    bins = pd.read_csv(out)
    assert bins.loc[bins["transform"] == "rank", "n"].sum() == 480
    rank = pd.read_csv(summary).set_index("transform").loc["rank"]
    assert rank["n_prompts"] == 60  # prompts pooled
    # Bins of 120 at ranks 0, 1/3, 2/3, 1 merge pairwise into two groups of 240: η (0.15 + 0.30) / 2 and
    # (0.45 + 0.60) / 2.
    assert rank["min_bin"] == 200 and rank["n_bins_flatness"] == 2
    assert rank["flatness"] == pytest.approx(0.525 - 0.225)
    bad = tmp_path / "bad.parquet"
    write_parquet(bad, pd.DataFrame({"prompt_id": ["a"]}))
    with pytest.raises(ValueError, match=f"candidate file {bad}: missing column"):
        read_candidates([str(bad)])


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([1, 189, 2], [0, 0, 0]),  # 1 joins 189, then 2 joins them: one group
        ([5, 30, 4, 3, 40, 12], [0, 0, 0, 0, 1, 2]),  # 3+4, then 5+30, then 7 joins the smaller 35
        ([20, 3, 20], [0, 0, 1]),  # equal neighbours: the left one
        ([0, 4, 0, 30, 8, 0, 25], [None, 0, None, 0, 1, None, 1]),  # empty bins take no part
        ([10, 10], [0, 1]),
        ([0, 0], [None, None]),
    ],
)
def test_merge_bins_by_hand(counts, expected):
    assert merge_bins(counts, 10) == expected


def merged_candidates():
    """40 prompts × 4 candidates (rank bins 0, 3, 6, 9); verdicts only on some, so the bins hold 5, 40, 40
    and 3 rows with 5, 10, 20 and 3 misaligned."""
    rows = []
    for p in range(40):
        for r, scored, misaligned in (
            (0, p < 5, True),
            (1, True, p < 10),
            (2, True, p < 20),
            (3, p < 3, True),
        ):
            rows.append(candidate(f"p{p}", float(r) + p, misaligned, selected=r == 3, scored=scored))
    return pd.DataFrame(rows)


def test_flatness_uses_merged_groups_by_hand():
    bins = eta_table(merged_candidates(), n_bins=10).query("transform == 'rank'").set_index("bin")
    assert bins.loc[[0, 3, 6, 9], "n"].tolist() == [5, 40, 40, 3]
    # 3 (bin 9) joins its only neighbour 40 (bin 6); then 5 (bin 0) joins 40 (bin 3): groups of 45 and 43.
    assert bins.loc[[0, 3, 6, 9], "merged_bin"].tolist() == [0, 0, 1, 1]
    assert bins.loc[[1, 2, 4, 5, 7, 8], "merged_bin"].isna().all()
    assert bins.loc[[0, 3, 6, 9], "merged_n"].tolist() == [45, 45, 43, 43]
    assert bins.loc[0, "merged_eta"] == pytest.approx(15 / 45)
    assert bins.loc[9, "merged_eta"] == pytest.approx(23 / 43)
    assert (bins.loc[6, "merged_eta_ci_low"], bins.loc[6, "merged_eta_ci_high"]) == pytest.approx(
        wilson_by_hand(23, 43)
    )
    assert bins["in_flatness"].tolist() == [b in (0, 3, 6, 9) for b in range(10)]
    summary = eta_summary(merged_candidates(), n_bins=10, n_boot=100).set_index("transform")
    rank = summary.loc["rank"]
    # Unmerged, bins 0 and 9 (all misaligned, 5 and 3 rows) against bin 3 would give 1 − 0.25 = 0.75.
    assert rank["flatness"] == pytest.approx(23 / 43 - 15 / 45)
    assert (rank["n_bins_flatness"], rank["min_bin"], rank["n_bins_nonempty"]) == (2, 10, 4)
    with_small_bins = eta_summary(merged_candidates(), n_bins=10, n_boot=100, min_bin=1)
    assert with_small_bins.set_index("transform").loc["rank", "flatness"] == pytest.approx(0.75)


def test_singleton_bins_never_give_flatness():
    """Rank bins of 1, 189 and 2 rows (the case seen on a real run): unmerged, flatness would be 1.0."""
    rows = [candidate("p0", 0.0, 1), candidate("p0", 1.0, 0), candidate("p0", 2.0, 0)]
    for p in range(1, 189):  # only the middle candidate has a verdict
        rows += [candidate(f"p{p}", s, p % 2, scored=s == 1.0) for s in (0.0, 1.0, 2.0)]
    rows += [candidate("p189", s, 0, scored=s == 2.0) for s in (0.0, 1.0, 2.0)]
    bins = eta_table(pd.DataFrame(rows), n_bins=10).query("transform == 'rank'").set_index("bin")
    assert bins.loc[[0, 5, 9], "n"].tolist() == [1, 189, 2]
    assert bins.loc[[0, 5, 9], "merged_bin"].tolist() == [0, 0, 0] and not bins["in_flatness"].any()
    rank = eta_summary(pd.DataFrame(rows), n_bins=10, n_boot=100).set_index("transform").loc["rank"]
    assert math.isnan(rank["flatness"]) and rank["n_bins_flatness"] == 0


def test_separated_scores_get_a_firth_slope_not_a_gee_one():
    # M = 1 exactly for the better of two candidates: the ML slope is infinite.
    rows = [candidate(f"p{p}", s + p, s == 1.0, selected=s == 1.0) for p in range(30) for s in (0.0, 1.0)]
    summary = eta_summary(pd.DataFrame(rows), n_bins=10, n_boot=100).set_index("transform")
    for transform in ("rank", "zscore"):
        row = summary.loc[transform]
        assert row["separated"]
        assert math.isnan(row["slope"]) and "score separates M (complete)" in row["slope_reason"]
        # The score is binary, so Firth's slope is the 2×2 log odds ratio with ½ added to each cell,
        # log(30.5² / 0.5²) = 2 log 61, per step from worse to better candidate. That step is 2 SD (rank 0 → 1
        # with SD ½; z −1 → 1 with SD 1), so the slope per SD is log 61.
        assert row["slope_firth"] == pytest.approx(math.log(61), abs=1e-6)
        assert 0 < row["slope_firth_ci_low"] < row["slope_firth"] < row["slope_firth_ci_high"] < math.inf
        assert row["slope_ci_method"] == "firth_profile"
        assert (row["slope_ci_low"], row["slope_ci_high"]) == (
            row["slope_firth_ci_low"],
            row["slope_firth_ci_high"],
        )
        assert row["slope_sign"] == 1
    # Quasi-complete: misaligned only among the better candidates, aligned on both sides.
    rows = [candidate(f"p{p}", s + p, s == 1.0 and p % 3 == 0) for p in range(30) for s in (0.0, 1.0)]
    row = eta_summary(pd.DataFrame(rows), n_bins=10, n_boot=100).set_index("transform").loc["rank"]
    assert row["separated"] and "quasi-complete" in row["slope_reason"] and row["slope_sign"] == 1


def test_overlapping_scores_keep_the_gee_slope_and_its_wald_ci():
    summary = eta_summary(rising_candidates(), n_bins=10, n_boot=100).set_index("transform")
    for transform in ("rank", "zscore"):
        row = summary.loc[transform]
        assert not row["separated"] and row["slope_ci_method"] == "gee_wald"
        half = 1.959963984540054 * row["slope_se"]
        assert (row["slope_ci_low"], row["slope_ci_high"]) == pytest.approx(
            (row["slope"] - half, row["slope"] + half)
        )
        assert row["slope_sign"] == 1 and row["slope_firth"] > 0 and row["slope_firth_p"] < 0.01
    assert summary.loc["rank", "n_bins_flatness"] == 4
    flat = []
    rng = np.random.default_rng(1)
    for p in range(100):
        flat += [candidate(f"p{p}", rng.normal(), rng.random() < 0.4) for _ in range(4)]
    row = eta_summary(pd.DataFrame(flat), n_bins=4, n_boot=100).set_index("transform").loc["rank"]
    assert not row["separated"] and row["slope_ci_low"] < 0 < row["slope_ci_high"] and row["slope_sign"] == 0
