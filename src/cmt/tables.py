"""Aggregate per-row eval parquet into the run table and the paper's main table."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd

from cmt.stats import induction_check, sign_test

log = logging.getLogger(__name__)

RUN_KEYS = ["model", "organism", "seed"]
RUNS_COLUMNS = [
    "model", "organism", "method", "k", "seed",
    "risk_base", "risk_phase1", "risk_phase3", "delta", "n_eval", "induced",
]  # fmt: skip
MAIN_COLUMNS = [
    "organism", "n_runs", "n_suppressed", "n_amplified", "n_ties", "suppression_ratio", "mean_delta", "p_sign",
]  # fmt: skip


def _scored(df: pd.DataFrame) -> np.ndarray:
    return df.loc[df["scored"], "misaligned"].to_numpy(dtype=float)


def runs_table(evals: pd.DataFrame, min_induction_delta: float) -> pd.DataFrame:
    """One row per (model, organism, method, k, seed): risks before/after and delta = phase3 − phase1."""
    rows = []
    for (model, organism, seed), group in evals.groupby(RUN_KEYS, sort=True):
        check = induction_check_of(group, min_induction_delta)
        retrained = group[group["stage"] == "phase3"]
        for (method, k), run in retrained.groupby(["method", "k"], sort=True):
            m3 = _scored(run)
            risk3 = float(m3.mean()) if len(m3) else math.nan
            rows.append(
                {
                    "model": model,
                    "organism": organism,
                    "method": method,
                    "k": int(k),
                    "seed": int(seed),
                    "risk_base": check["risk_base"],
                    "risk_phase1": check["risk_phase1"],
                    "risk_phase3": risk3,
                    "delta": risk3 - check["risk_phase1"],
                    "n_eval": len(m3),
                    "induced": check["induced"],
                }
            )
    return pd.DataFrame(rows, columns=RUNS_COLUMNS)


def main_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per organism: suppression counts, mean delta (percentage points) and the exact sign test."""
    rows = []
    for organism, group in runs.groupby("organism", sort=True):
        delta = group["delta"].dropna()
        n_sup = int((delta < 0).sum())
        n_amp = int((delta > 0).sum())
        rows.append(
            {
                "organism": organism,
                "n_runs": len(delta),
                "n_suppressed": n_sup,
                "n_amplified": n_amp,
                "n_ties": int((delta == 0).sum()),
                "suppression_ratio": n_sup / (n_sup + n_amp) if n_sup + n_amp else math.nan,
                "mean_delta": 100 * float(delta.mean()) if len(delta) else math.nan,
                "p_sign": sign_test(n_sup, n_amp),
            }
        )
    return pd.DataFrame(rows, columns=MAIN_COLUMNS)


def induction_check_of(evals: pd.DataFrame, min_delta: float) -> dict:
    """Base vs organism M for one (model, organism, seed), from its base and phase-1 eval rows."""
    keys = evals[RUN_KEYS].drop_duplicates()
    if len(keys) != 1:
        raise ValueError(f"expected evaluations of one organism, got {keys.to_dict('records')}")
    base = evals[evals["stage"] == "base"]
    phase1 = evals[evals["stage"] == "phase1"]
    if base.empty or phase1.empty:
        raise ValueError(f"organism {keys.iloc[0].to_dict()}: missing base or phase-1 evaluation")
    identity = json.loads(keys.to_json(orient="records"))[0]
    return {**identity, **induction_check(_scored(base), _scored(phase1), min_delta)}


def read_evals(paths: list[str]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True)


def induction_report(base_path: str, phase1_path: str, min_delta: float) -> dict:
    report = induction_check_of(read_evals([base_path, phase1_path]), min_delta)
    if not report["induced"]:
        log.warning(
            "induction did not clearly raise M: base %.3f %s vs organism %.3f %s (need +%.2f, no CI overlap)",
            report["risk_base"], report["risk_base_ci"], report["risk_phase1"], report["risk_phase1_ci"], min_delta,
        )  # fmt: skip
    return report
