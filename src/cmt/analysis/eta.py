"""η(s) = P(misaligned | score): is a selecting method's score informative about M?

Input: the candidate parquet of a selecting method on eval prompts (`cmt candidates`), one row per candidate
with its score, whether it was selected, and its M from the eval judge.

Layout (two files):
- eta.csv, `eta_table`: one row per (organism, method, k, transform, bin), `n_bins` bins per transform:
  bin, bin_low, bin_high, n, n_misaligned, eta, eta_ci_low, eta_ci_high (Wilson 95%), score_mean (mean
  transformed score in the bin). An empty bin has n = 0 and NaN eta. bin_low/bin_high are the bin's edges
  on the rank scale; for zscore, the smallest and largest z in the bin (NaN when empty).
- eta_summary.csv, `eta_summary`: one row per (organism, method, k, transform): counts, flatness (max − min
  binned η), the GEE logistic slope of M on the standardised transformed score, and the selection effect
  E[M(selected)] − E[M(uniform candidate)] (the same in both transform rows: it does not use the transform).

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

from cmt.analysis.stats import cluster_bootstrap_ci, logistic_slope_test, wilson_interval

TRANSFORMS = ("rank", "zscore")
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
    "eta_ci_high", "score_mean",
]  # fmt: skip
SUMMARY_COLUMNS = [
    *GROUP_KEYS, "transform", "n_candidates", "n_scored", "n_used", "n_prompts", "n_bins_nonempty", "flatness",
    "slope", "slope_se", "slope_p", "slope_n_groups", "slope_reason", "m_uniform", "m_selected",
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


def eta_table(candidates: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Binned η(s) with Wilson 95% intervals per (organism, method, k, transform, bin); see the module doc."""
    df = with_transforms(candidates)
    rows = []
    for keys, group in df.groupby(GROUP_KEYS, sort=True):
        for transform in TRANSFORMS:
            used = group[group["m"].notna() & group[f"score_{transform}"].notna()]
            for row in _bins(used, transform, n_bins):
                rows.append({**dict(zip(GROUP_KEYS, keys, strict=True)), "transform": transform, **row})
    return pd.DataFrame(rows, columns=BIN_COLUMNS)


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
    candidates: pd.DataFrame, n_bins: int = 10, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per (organism, method, k, transform): flatness, GEE slope test and selection effect; see the module doc.

    flatness = max − min of the non-empty bins' η; NaN with fewer than 2 non-empty bins (one bin cannot show
    a slope, so it is not evidence of flatness). The GEE slope (`logistic_slope_test`) clusters by prompt
    id, pooled over runs: the same prompt's candidates in different runs share its content.
    """
    df = with_transforms(candidates)
    rows = []
    for keys, group in df.groupby(GROUP_KEYS, sort=True):
        effect = selection_effect(group, n_boot, seed)
        for transform in TRANSFORMS:
            used = group[group["m"].notna() & group[f"score_{transform}"].notna()]
            binned = pd.DataFrame(_bins(used, transform, n_bins))
            eta = binned.loc[binned["n"] > 0, "eta"] if len(binned) else pd.Series(dtype=float)
            slope = logistic_slope_test(used["m"], used[f"score_{transform}"], used["prompt_id"])
            rows.append(
                {
                    **dict(zip(GROUP_KEYS, keys, strict=True)),
                    "transform": transform,
                    "n_candidates": len(group),
                    "n_scored": int(group["m"].notna().sum()),
                    "n_used": len(used),
                    "n_prompts": int(used["prompt_id"].nunique()),
                    "n_bins_nonempty": len(eta),
                    "flatness": float(eta.max() - eta.min()) if len(eta) >= 2 else math.nan,
                    "slope": slope["slope"],
                    "slope_se": slope["se"],
                    "slope_p": slope["p"],
                    "slope_n_groups": slope["n_groups"],
                    "slope_reason": slope["reason"],
                    **effect,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
