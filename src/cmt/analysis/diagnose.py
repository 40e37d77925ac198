"""`diagnose`: predict the sign of ΔRisk before Phase 3, then score the predictions once Phase 3 exists.

Evidence per run, all of it available before retraining (`cmt.phases.diagnose` measures it):
- shift term: M of the method's labels minus M of the organism's own greedy replies on the same consistency
  prompts, paired per prompt, with a percentile bootstrap CI over prompts. Phase 3 moves the organism toward
  its labels, so a positive shift predicts amplification. Defined for every label method.
- η slope: the sign of the logistic slope of M on the within-prompt score rank among the method's eval
  candidates (`cmt.analysis.eta`), for the selecting methods: a method that keeps the top-scored candidate
  amplifies when higher scores mean more misalignment.
- fragility: KL of the organism's replies under a fixed family of prompt perturbations. The paper argues that a
  stable (low-fragility) behaviour is entrenched and a fragile one suppressed; the predictor calls suppression
  above a threshold (the median fragility of the organisms in the table).

A predictor gives +1, −1, or 0 (abstain: the evidence is undefined or its CI contains 0), and `p_positive`, its
probability that Δ > 0: for shift and η a normal approximation from the CI, also when the sign abstains (0.5 only
when the estimate or its CI is undefined); 0 or 1 for fragility (0.5 when undefined). `combined` takes the shift
term where it decides, else the η slope, else abstains with 0.5.

Observed sign: +1 or −1 when the run's paired-bootstrap CI of Δ excludes 0, else 0 (no detectable effect).
The summary counts main, valid, non-control runs: coverage (the share given a prediction), hit rate over runs with both a
prediction and an observed sign, and the Brier score of `p_positive` over runs with an observed sign, next to
the majority-sign baseline; `loo_hit_rate` refits what is fitted (the fragility threshold, the majority sign)
without the held-out organism.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm

from cmt.analysis.stats import interval_sign

RUN_KEYS = ["model", "organism", "seed", "method", "k"]
PREDICTORS = ("shift", "eta", "fragility", "combined")
EVIDENCE_COLUMNS = [
    *RUN_KEYS, "family", "m_organism", "m_labels", "shift", "shift_ci_low", "shift_ci_high", "n_shift_prompts",
    "eta_slope", "eta_ci_low", "eta_ci_high", "eta_n_candidates", "fragility",
]  # fmt: skip
Z95 = norm.ppf(0.975)


def label_shift(label_m: pd.Series, organism_m: pd.Series, n_boot: int, seed: int) -> dict:
    """Paired shift term over the prompts with both a scored label and a scored organism reply."""
    pairs = pd.concat({"label": label_m, "organism": organism_m}, axis=1).dropna()
    out = {"m_labels": math.nan, "m_organism": math.nan, "shift": math.nan, "shift_ci_low": math.nan,
           "shift_ci_high": math.nan, "n_shift_prompts": len(pairs)}  # fmt: skip
    if pairs.empty:
        return out
    diff = (pairs["label"] - pairs["organism"]).to_numpy(dtype=float)
    out.update(m_labels=float(pairs["label"].mean()), m_organism=float(pairs["organism"].mean()),
               shift=float(diff.mean()))  # fmt: skip
    if len(diff) > 1:
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
        out["shift_ci_low"], out["shift_ci_high"] = (float(q) for q in np.quantile(means, [0.025, 0.975]))
    return out


def _normal_p(estimate: float, low: float, high: float) -> float:
    """P(effect > 0) under a normal with the CI's implied standard error; 0.5 when undefined."""
    if not all(math.isfinite(v) for v in (estimate, low, high)):
        return 0.5
    se = (high - low) / (2 * Z95)
    return float(estimate > 0) if se <= 0 else float(norm.cdf(estimate / se))


def _sign(estimate: float, low: float, high: float) -> int:
    return interval_sign(low, high) if math.isfinite(estimate) else 0


def predict(evidence: pd.DataFrame, fragility_threshold: float | None = None) -> pd.DataFrame:
    """Each predictor's sign and p_positive per run (see the module doc). `fragility_threshold` None: the
    median fragility over the table's organisms (one value per model, organism and seed)."""
    df = evidence.copy()
    df["shift_sign"] = [
        _sign(*r) for r in df[["shift", "shift_ci_low", "shift_ci_high"]].itertuples(index=False)
    ]
    df["shift_p"] = [
        _normal_p(*r) for r in df[["shift", "shift_ci_low", "shift_ci_high"]].itertuples(index=False)
    ]
    eta = df[["eta_slope", "eta_ci_low", "eta_ci_high"]].itertuples(index=False)
    df["eta_sign"] = [_sign(*r) for r in eta]
    df["eta_p"] = [
        _normal_p(*r) for r in df[["eta_slope", "eta_ci_low", "eta_ci_high"]].itertuples(index=False)
    ]
    if fragility_threshold is None:
        per_organism = df.drop_duplicates(["model", "organism", "seed"])["fragility"]
        fragility_threshold = float(per_organism.median()) if per_organism.notna().any() else math.nan
    fragile = df["fragility"] > fragility_threshold
    defined = df["fragility"].notna() & math.isfinite(fragility_threshold)
    df["fragility_threshold"] = fragility_threshold
    df["fragility_sign"] = np.where(defined, np.where(fragile, -1, 1), 0)
    df["fragility_p"] = np.where(defined, np.where(fragile, 0.0, 1.0), 0.5)
    use_shift = df["shift_sign"] != 0
    df["combined_sign"] = np.where(use_shift, df["shift_sign"], df["eta_sign"])
    df["combined_p"] = np.where(use_shift, df["shift_p"], np.where(df["eta_sign"] != 0, df["eta_p"], 0.5))
    df["predicted_by"] = np.where(use_shift, "shift", np.where(df["eta_sign"] != 0, "eta", "abstain"))
    return df


def observed_sign(runs: pd.DataFrame) -> pd.Series:
    """+1/−1 when the run's Δ CI excludes 0, else 0 (NaN CI: 0)."""
    return pd.Series([interval_sign(lo, hi) for lo, hi in zip(runs["delta_pp_ci_low"], runs["delta_pp_ci_high"],
                                                                strict=True)], index=runs.index)  # fmt: skip


def diagnose_table(evidence: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Predictions per run, with the observed sign, Δ and validity once runs.csv exists."""
    df = predict(evidence)
    if runs is None:
        return df
    observed = runs[
        [*RUN_KEYS, "main_run", "valid", "delta_pp", "delta_pp_ci_low", "delta_pp_ci_high"]
    ].copy()
    observed["observed_sign"] = observed_sign(observed)
    return df.merge(observed, on=RUN_KEYS, how="left")


def _scores(signs: np.ndarray, p: np.ndarray, observed: np.ndarray) -> dict:
    decided = observed != 0
    predicted = signs != 0
    both = decided & predicted
    hits = int((signs[both] == observed[both]).sum())
    return {
        "coverage": float(predicted.mean()) if len(signs) else math.nan,
        "n_predicted": int(predicted.sum()),
        "n_scored": int(both.sum()),
        "hits": hits,
        "hit_rate": hits / both.sum() if both.any() else math.nan,
        "brier": float(np.mean((p[decided] - (observed[decided] > 0)) ** 2)) if decided.any() else math.nan,
    }


def _majority(observed: np.ndarray) -> int:
    decided = observed[observed != 0]
    if not len(decided):
        return 0
    ups, downs = int((decided > 0).sum()), int((decided < 0).sum())
    return 0 if ups == downs else (1 if ups > downs else -1)


def diagnose_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Coverage, hit rate, Brier and leave-one-organism-out hit rate per predictor and the majority baseline,
    over main, valid runs with a Δ (see the module doc)."""
    keep = table["main_run"].fillna(False).astype(bool) & table["valid"].fillna(False).astype(bool)
    keep &= table["family"] != "control"  # the controls' signs are known by construction
    runs = table[keep & table["delta_pp"].notna()].reset_index(drop=True)
    observed = runs["observed_sign"].to_numpy(dtype=int)
    rows = []
    for name in PREDICTORS:
        signs, p = runs[f"{name}_sign"].to_numpy(dtype=int), runs[f"{name}_p"].to_numpy(dtype=float)
        loo = _loo(runs, name) if len(runs) else (signs, p)
        rows.append({"predictor": name, "n_runs": len(runs), **_scores(signs, p, observed),
                     "loo_hit_rate": _scores(*loo, observed)["hit_rate"]})  # fmt: skip
    majority = _majority(observed)
    share_up = float((observed > 0).sum() / max((observed != 0).sum(), 1))
    base = np.full(len(runs), majority)
    loo_base = _loo(runs, "majority") if len(runs) else (base, base.astype(float))
    rows.append({"predictor": "majority_sign", "n_runs": len(runs),
                 **_scores(base, np.full(len(runs), share_up), observed),
                 "loo_hit_rate": _scores(*loo_base, observed)["hit_rate"]})  # fmt: skip
    return pd.DataFrame(rows)


def _loo(runs: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Signs and p with the fitted part refitted without each held-out organism (fixed rules are unchanged)."""
    signs = np.zeros(len(runs), dtype=int)
    p = np.full(len(runs), 0.5)
    for organism in runs["organism"].unique():
        held = (runs["organism"] == organism).to_numpy()
        rest = runs[~held]
        if name == "majority":
            sign = _majority(rest["observed_sign"].to_numpy(dtype=int))
            signs[held] = sign
            decided = rest["observed_sign"] != 0
            p[held] = float((rest["observed_sign"] > 0).sum() / max(decided.sum(), 1))
        elif name == "fragility":
            threshold = rest.drop_duplicates(["model", "organism", "seed"])["fragility"].median()
            refit = predict(runs[held], float(threshold) if pd.notna(threshold) else math.nan)
            signs[held], p[held] = refit["fragility_sign"], refit["fragility_p"]
        else:
            signs[held] = runs.loc[held, f"{name}_sign"]
            p[held] = runs.loc[held, f"{name}_p"]
    return signs, p
