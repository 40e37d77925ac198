"""η(s) = P(misaligned | score): is a selecting method's score informative about M?

Input: the candidate parquet of a selecting method on eval prompts (`cmt candidates`), one row per candidate
with its score, whether it was selected, and its M from the eval judge.

Layout (two files):
- eta.csv, `eta_table`: one row per (organism, method, k, transform, bin), `n_bins` bins per transform:
  bin, bin_low, bin_high, n, n_misaligned, eta, eta_ci_low, eta_ci_high (Wilson 95%), score_mean (mean
  transformed score in the bin). An empty bin has n = 0 and NaN eta. bin_low/bin_high are the bin's edges
  on the rank scale; for zscore, the smallest and largest z in the bin (NaN when empty). Then the bin's
  merged group (`merge_bins`): merged_bin (its index, in score order; NA for an empty bin), merged_n,
  merged_eta, merged_eta_ci_low, merged_eta_ci_high (Wilson 95%) and in_flatness (the group entered the
  flatness).
- eta_summary.csv, `eta_summary`: one row per (organism, method, k, transform): counts; min_bin,
  n_bins_flatness and flatness (max − min η over merged groups of ≥ min_bin rows; NaN with fewer than 2);
  the slope of M on the standardised transformed score; and the selection effect E[M(selected)] −
  E[M(uniform candidate)] (the same in both transform rows: it does not use the transform).

Slope columns. `separated`: the score splits M perfectly or up to ties at one threshold (`separation`), so
the ML slope is infinite. slope, slope_se, slope_p, slope_n_groups, slope_reason: the GEE logistic slope with
prompt clusters (`logistic_slope_test`), not fitted when separated (NaN, the reason says so). slope_firth,
slope_firth_p, slope_firth_ci_low, slope_firth_ci_high: Firth's penalised slope with its profile
penalised-likelihood 95% CI (`firth_slope_test`), finite under separation but blind to prompt clusters.
slope_ci_low, slope_ci_high, slope_ci_method: the interval behind the sign: "gee_wald" (slope ± 1.96 slope_se)
when the GEE fitted with a finite se and no convergence warning, else "firth_profile" (the Firth CI), else ""
(NaN). slope_sign: +1 / −1 when that interval lies above / below 0, else 0 (contains 0 or undefined).

Transforms are within one prompt's decoding (the candidates the method compared): `rank` = (average rank − 1)
/ (n − 1) in [0, 1], binned into `n_bins` equal-width bins (deciles of the within-prompt rank); `zscore` =
(score − prompt mean) / prompt std, binned at its pooled deciles by mid-rank percentile (tied z values share
a bin, so with few distinct values some deciles are empty). A prompt whose candidates all tie gets rank
0.5 and z 0; a prompt with one finite score has no transform. Candidates from all models and seeds of an
(organism, method, k) are pooled; only candidates the judge scored (M defined) count toward η, while every
finite-score candidate counts toward its siblings' ranks.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cmt.analysis.stats import (
    cluster_bootstrap_ci,
    firth_slope_test,
    interval_sign,
    logistic_slope_test,
    separation,
    wilson_interval,
)

TRANSFORMS = ("rank", "zscore")
Z_95 = 1.959963984540054  # standard normal 0.975 quantile: the GEE slope's Wald 95% CI
GROUP_KEYS = ["organism", "method", "k"]
CANDIDATE_COLUMNS = [
    "organism",
    "method",
    "k",
    "seed",
    "prompt_id",
    "score",
    "selected",
    "scored",
    "misaligned",
]
BIN_COLUMNS = [
    *GROUP_KEYS, "transform", "bin", "bin_low", "bin_high", "n", "n_misaligned", "eta", "eta_ci_low",
    "eta_ci_high", "score_mean", "merged_bin", "merged_n", "merged_eta", "merged_eta_ci_low",
    "merged_eta_ci_high", "in_flatness",
]  # fmt: skip
SUMMARY_COLUMNS = [
    *GROUP_KEYS, "transform", "n_candidates", "n_scored", "n_used", "n_prompts", "n_bins_nonempty",
    "min_bin", "n_bins_flatness", "flatness", "separated", "slope", "slope_se", "slope_p", "slope_n_groups",
    "slope_reason", "slope_firth", "slope_firth_p", "slope_firth_ci_low", "slope_firth_ci_high",
    "slope_ci_low", "slope_ci_high", "slope_ci_method", "slope_sign", "m_uniform", "m_selected",
    "selection_effect", "selection_effect_ci_low", "selection_effect_ci_high", "n_selection_prompts",
]  # fmt: skip


def read_candidates(paths: list[str]) -> pd.DataFrame:
    """Concatenate candidate parquet files; `source_file` keeps runs apart (files carry no model column)."""
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in CANDIDATE_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"candidate file {path}: missing column(s) {missing}")
        frames.append(frame.assign(source_file=str(path)))
    if not frames:
        return pd.DataFrame(columns=[*CANDIDATE_COLUMNS, "source_file"])
    return pd.concat(frames, ignore_index=True)


def _prompt_keys(df: pd.DataFrame) -> list[str]:
    """Keys of one prompt's decoding: its run (model/seed or file) and its prompt id."""
    run = [c for c in ("model", "source_file") if c in df.columns]
    return [*GROUP_KEYS, "seed", *run, "prompt_id"]


def with_transforms(candidates: pd.DataFrame) -> pd.DataFrame:
    """The candidates with `m` (M where scored, else NaN), `score_rank` and `score_zscore` (see module doc)."""
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidates: missing column(s) {missing}; has {list(candidates.columns)}")
    df = candidates.copy()
    df["m"] = np.where(df["scored"].to_numpy(dtype=bool), df["misaligned"].to_numpy(dtype=float), np.nan)
    score = df["score"].astype(float).where(np.isfinite(df["score"].astype(float)))
    by_prompt = score.groupby([df[k] for k in _prompt_keys(df)], sort=False, dropna=False)
    n = by_prompt.transform("count")
    rank = by_prompt.rank(method="average")
    spread = by_prompt.transform("std", ddof=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        df["score_rank"] = np.where(n > 1, (rank - 1) / (n - 1), np.nan)
        z = np.where(spread > 0, (score - by_prompt.transform("mean")) / spread, 0.0)
    df["score_zscore"] = np.where((n > 1) & score.notna(), z, np.nan)
    df["score_rank"] = df["score_rank"].where(score.notna())
    return df


def _bins(used: pd.DataFrame, transform: str, n_bins: int) -> list[dict]:
    """`n_bins` rows: equal-width bins of the within-prompt rank, or pooled deciles of the z-score."""
    values = used[f"score_{transform}"].to_numpy(dtype=float)
    if transform == "rank":
        position = values
    else:
        # Pooled mid-rank percentile: ties stay in one bin, so repeated z values never straddle an edge.
        position = (pd.Series(values).rank(method="average").to_numpy() - 0.5) / max(len(values), 1)
    # Rounding keeps a position of exactly j/n_bins from falling one bin low through float error.
    index = np.minimum(np.floor(np.round(position * n_bins, 9)), n_bins - 1).astype(int)
    m_all = used["m"].to_numpy(dtype=float)
    rows = []
    for b in range(n_bins):
        in_bin = index == b
        m, scores = m_all[in_bin], values[in_bin]
        n, k = len(m), int(m.sum())
        lo, hi = wilson_interval(k, n)
        if transform == "rank":
            edges = (b / n_bins, (b + 1) / n_bins)
        else:
            edges = (float(scores.min()), float(scores.max())) if n else (math.nan, math.nan)
        rows.append(
            {"bin": b, "bin_low": edges[0], "bin_high": edges[1], "n": n, "n_misaligned": k,
             "eta": k / n if n else math.nan, "eta_ci_low": lo, "eta_ci_high": hi,
             "score_mean": float(scores.mean()) if n else math.nan}
        )  # fmt: skip
    return rows


def merge_bins(counts, min_bin: int) -> list[int | None]:
    """Each bin's merged group (None for an empty bin); groups are numbered 0, 1, ... in score order.

    Only non-empty bins take part, and adjacent means next in score order among them. While more than one
    group remains and some group has fewer than `min_bin` rows, the smallest group (the leftmost on ties)
    merges with its smaller adjacent group (the left one on ties). So every group ends with ≥ min_bin rows,
    or one group remains.
    """
    groups = [[b] for b, n in enumerate(counts) if n > 0]
    sizes = [int(counts[g[0]]) for g in groups]
    while len(groups) > 1 and min(sizes) < min_bin:
        i = min(range(len(sizes)), key=lambda j: (sizes[j], j))
        j = min((j for j in (i - 1, i + 1) if 0 <= j < len(groups)), key=lambda j: (sizes[j], j))
        lo, hi = min(i, j), max(i, j)
        groups[lo : hi + 1] = [groups[lo] + groups[hi]]
        sizes[lo : hi + 1] = [sizes[lo] + sizes[hi]]
    labels: list[int | None] = [None] * len(counts)
    for label, members in enumerate(groups):
        for b in members:
            labels[b] = label
    return labels


def _merged_bins(
    used: pd.DataFrame, transform: str, n_bins: int, min_bin: int
) -> tuple[list[dict], float, int]:
    """`_bins` rows with their merged group's columns, the flatness and how many groups entered it."""
    rows = _bins(used, transform, n_bins)
    labels = merge_bins([row["n"] for row in rows], min_bin)
    totals: dict[int, tuple[int, int]] = {}
    for row, label in zip(rows, labels, strict=True):
        if label is not None:
            n, k = totals.get(label, (0, 0))
            totals[label] = (n + row["n"], k + row["n_misaligned"])
    # One bin (or one merged group) cannot show a slope, so it is not evidence of flatness.
    full = {label: k / n for label, (n, k) in totals.items() if n >= min_bin}
    if len(full) < 2:
        full = {}
    for row, label in zip(rows, labels, strict=True):
        n, k = totals.get(label, (0, 0)) if label is not None else (0, 0)
        lo, hi = wilson_interval(k, n)
        row.update(merged_bin=label, merged_n=n, merged_eta=k / n if n else math.nan, merged_eta_ci_low=lo,
                   merged_eta_ci_high=hi, in_flatness=label in full)  # fmt: skip
    flatness = max(full.values()) - min(full.values()) if full else math.nan
    return rows, float(flatness), len(full)


def eta_table(candidates: pd.DataFrame, n_bins: int = 10, min_bin: int = 10) -> pd.DataFrame:
    """Binned η(s) with Wilson 95% intervals per (organism, method, k, transform, bin), and each bin's merged
    group (groups of ≥ `min_bin` rows, `merge_bins`); see the module doc."""
    df = with_transforms(candidates)
    rows = []
    for keys, group in df.groupby(GROUP_KEYS, sort=True):
        for transform in TRANSFORMS:
            used = group[group["m"].notna() & group[f"score_{transform}"].notna()]
            for row in _merged_bins(used, transform, n_bins, min_bin)[0]:
                rows.append({**dict(zip(GROUP_KEYS, keys, strict=True)), "transform": transform, **row})
    table = pd.DataFrame(rows, columns=BIN_COLUMNS)
    table["merged_bin"] = table["merged_bin"].astype("Int64")  # NA for an empty bin, never a float index
    table["in_flatness"] = table["in_flatness"].astype(bool)
    return table


def slope_columns(used: pd.DataFrame, transform: str) -> dict:
    """The slope columns of eta_summary for one transform's used rows (see the module doc)."""
    m, score, prompts = used["m"], used[f"score_{transform}"], used["prompt_id"]
    separated = separation(m, score)
    if separated:  # the GEE would chase an infinite slope: not fitted
        reason = f"score separates M ({separated}): no slope by maximum likelihood; see slope_firth"
        gee = {"slope": math.nan, "se": math.nan, "p": math.nan, "n_groups": int(prompts.nunique()),
               "reason": reason}  # fmt: skip
    else:
        gee = logistic_slope_test(m, score, prompts)
    firth = firth_slope_test(m, score)
    warned = any(w in gee["reason"] for w in ("ConvergenceWarning", "PerfectSeparationWarning"))
    if np.isfinite(gee["slope"]) and np.isfinite(gee["se"]) and gee["se"] > 0 and not warned:
        half = Z_95 * gee["se"]
        low, high, method = gee["slope"] - half, gee["slope"] + half, "gee_wald"
    elif np.isfinite(firth["slope"]):
        low, high, method = firth["ci_low"], firth["ci_high"], "firth_profile"
    else:
        low, high, method = math.nan, math.nan, ""
    return {"separated": bool(separated), "slope": gee["slope"], "slope_se": gee["se"], "slope_p": gee["p"],
            "slope_n_groups": gee["n_groups"], "slope_reason": gee["reason"], "slope_firth": firth["slope"],
            "slope_firth_p": firth["p"], "slope_firth_ci_low": firth["ci_low"],
            "slope_firth_ci_high": firth["ci_high"], "slope_ci_low": low, "slope_ci_high": high,
            "slope_ci_method": method, "slope_sign": interval_sign(low, high)}  # fmt: skip


def selection_effect(df: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """E[M(selected)] − E[M(uniform candidate)] over prompts whose selected candidate has M.

    Per prompt decoding: M of the selected candidate minus the mean M of its candidates with M (a uniform
    draw among them); averaged over prompts, with a bootstrap CI resampling prompt ids.
    """
    keys = _prompt_keys(df)
    per_prompt = []
    for _, prompt in df[df["m"].notna()].groupby(keys, sort=True):
        chosen = prompt.loc[prompt["selected"].astype(bool), "m"]
        if len(chosen) == 1:
            per_prompt.append((prompt["prompt_id"].iloc[0], float(chosen.iloc[0]), float(prompt["m"].mean())))
    if not per_prompt:
        return {"m_uniform": math.nan, "m_selected": math.nan, "selection_effect": math.nan,
                "selection_effect_ci_low": math.nan, "selection_effect_ci_high": math.nan,
                "n_selection_prompts": 0}  # fmt: skip
    prompt_ids, m_selected, m_uniform = (np.asarray(x) for x in zip(*per_prompt, strict=True))
    effect = m_selected - m_uniform
    lo, hi = cluster_bootstrap_ci(effect, prompt_ids, n_boot, seed)
    return {"m_uniform": float(m_uniform.mean()), "m_selected": float(m_selected.mean()),
            "selection_effect": float(effect.mean()), "selection_effect_ci_low": lo,
            "selection_effect_ci_high": hi, "n_selection_prompts": len(effect)}  # fmt: skip


def eta_summary(
    candidates: pd.DataFrame, n_bins: int = 10, n_boot: int = 2000, seed: int = 0, min_bin: int = 10
) -> pd.DataFrame:
    """Per (organism, method, k, transform): flatness, slopes and selection effect; see the module doc.

    flatness = max − min of the merged groups' η (`merge_bins`, groups of ≥ `min_bin` rows); NaN with fewer
    than 2 such groups. The GEE slope (`logistic_slope_test`) clusters by prompt id, pooled over runs: the
    same prompt's candidates in different runs share its content.
    """
    df = with_transforms(candidates)
    rows = []
    for keys, group in df.groupby(GROUP_KEYS, sort=True):
        effect = selection_effect(group, n_boot, seed)
        for transform in TRANSFORMS:
            used = group[group["m"].notna() & group[f"score_{transform}"].notna()]
            binned, flatness, n_flat = _merged_bins(used, transform, n_bins, min_bin)
            rows.append(
                {
                    **dict(zip(GROUP_KEYS, keys, strict=True)),
                    "transform": transform,
                    "n_candidates": len(group),
                    "n_scored": int(group["m"].notna().sum()),
                    "n_used": len(used),
                    "n_prompts": int(used["prompt_id"].nunique()),
                    "n_bins_nonempty": sum(row["n"] > 0 for row in binned),
                    "min_bin": min_bin,
                    "n_bins_flatness": n_flat,
                    "flatness": flatness,
                    **slope_columns(used, transform),
                    **effect,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
