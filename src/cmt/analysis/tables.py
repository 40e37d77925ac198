"""The summary tables (main.csv, methods.csv, kscaling.csv, controls.csv) from runs.csv.

Which runs count: a summary of the paper's families takes main runs (each method's own k) that have a delta and
are valid (`cmt.analysis.runs`); invalid runs are counted in n_invalid and runs without a delta in n_no_delta,
never in the statistics. Controls (family `control`) have their own table and never enter the paper's families
or their sign tests. Every delta is in percentage points (`_pp` in the column name).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from cmt.analysis.runs import RUN_KEYS, family_of
from cmt.analysis.stats import (
    cluster_bootstrap_ci,
    cluster_sign_flip_p,
    holm_adjust,
    sign_test,
    wilcoxon_p,
)
from cmt.methods.registry import PAPER_FAMILIES, get_spec

log = logging.getLogger(__name__)

FAMILY_ROWS = ("all", *PAPER_FAMILIES)
SUMMARY_COLUMNS = [
    "n_runs", "n_suppressed", "n_amplified", "n_ties", "suppression_ratio",
    "mean_delta_pp", "mean_delta_pp_ci_low", "mean_delta_pp_ci_high", "n_clusters", "p_sign", "p_cluster",
    "n_effective", "n_invalid", "n_no_delta",
]  # fmt: skip
MAIN_COLUMNS = [
    "organism", "family", *SUMMARY_COLUMNS, "p_wilcoxon",
    "mean_delta_pp_base", "mean_delta_pp_instruct", "n_base", "n_instruct",
]  # fmt: skip
METHODS_COLUMNS = [
    "organism", "method", "family", "k", "n_runs", "n_suppressed", "n_amplified", "n_ties",
    "sign_consistency", "sign_agreement", "mean_delta_pp", "mean_delta_pp_ci_low", "mean_delta_pp_ci_high",
    "n_clusters", "p_sign", "p_cluster", "p_sign_holm", "holm_family", "n_effective", "n_invalid", "n_no_delta",
]  # fmt: skip
KSCALING_COLUMNS = [
    "organism", "method", "family", "k", "n_runs", "mean_delta_pp", "mean_delta_pp_ci_low",
    "mean_delta_pp_ci_high", "n_clusters", "minus_gst_pp", "minus_gst_pp_ci_low", "minus_gst_pp_ci_high",
    "n_gst_pairs", "n_invalid",
]  # fmt: skip
CONTROLS_COLUMNS = [
    "model", "organism", "seed", "method", "expected_sign", "delta_pp", "delta_pp_ci_low", "delta_pp_ci_high",
    "valid", "passed",
]  # fmt: skip
# The sign each control must produce: the aligned oracle lowers M, the misaligned one raises it.
CONTROL_SIGNS = {"oracle_aligned": -1, "oracle_misaligned": 1}


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def _cluster_ids(df: pd.DataFrame) -> pd.Series:
    """One label per (model, seed) organism, e.g. "toy/0": its runs share one Phase-1 adapter (not independent)."""
    return pd.Series(
        [f"{m}/{s}" for m, s in zip(df["model"], df["seed"], strict=True)], index=df.index, dtype=object
    )


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if len(values) else math.nan


def _valid(runs: pd.DataFrame) -> pd.Series:
    return runs["valid"].astype(bool) if "valid" in runs.columns else pd.Series(True, index=runs.index)


def effective_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that are independent in their labels: of the runs of one organism (model, organism, seed) that
    trained on a byte-identical label set, the first (two methods that chose the same labels trained one model
    twice: on the default grid gst and self_certainty did, with the same delta); runs without a recorded label
    set each count."""
    if "label_set" not in runs.columns:
        return runs
    label_set = runs["label_set"].fillna("").astype(str)
    recorded = label_set != ""
    repeated = recorded & runs.assign(_set=label_set).duplicated(["model", "organism", "seed", "_set"])
    return runs[~repeated]


def _delta_summary(group: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Counts, mean delta (pp) with its (model, seed)-cluster bootstrap CI, the run-level sign test (the
    paper's, over the effective runs: a run that repeats another's labels is the same model, not another draw),
    the cluster-level sign-flip test, and n_effective, over the valid runs that have a delta."""
    has_delta = group["delta_pp"].notna()
    valid = _valid(group)
    counted = group[has_delta & valid]
    delta = counted["delta_pp"].to_numpy(dtype=float)
    n_sup, n_amp = int((delta < 0).sum()), int((delta > 0).sum())
    effective = effective_runs(counted)["delta_pp"]
    clusters = _cluster_ids(counted)
    ci = cluster_bootstrap_ci(delta, clusters, n_boot, seed)
    return {
        "n_runs": len(delta),
        "n_suppressed": n_sup,
        "n_amplified": n_amp,
        "n_ties": int((delta == 0).sum()),
        "suppression_ratio": n_sup / (n_sup + n_amp) if n_sup + n_amp else math.nan,
        "mean_delta_pp": _mean(delta),
        "mean_delta_pp_ci_low": ci[0],
        "mean_delta_pp_ci_high": ci[1],
        "n_clusters": int(clusters.nunique()),
        "p_sign": sign_test(int((effective < 0).sum()), int((effective > 0).sum())),
        "p_cluster": cluster_sign_flip_p(delta, clusters, seed),
        "n_effective": len(effective),
        "n_invalid": int((has_delta & ~valid).sum()),
        "n_no_delta": int((~has_delta).sum()),
    }


def _main_runs(runs: pd.DataFrame) -> pd.DataFrame:
    _require(runs, ["model", "organism", "method", "k", "seed", "delta_pp"], "runs table")
    if "family" not in runs.columns:
        runs = runs.assign(family=[family_of(m) for m in runs["method"]])
    if "main_run" in runs.columns:
        runs = runs[runs["main_run"].astype(bool)]
    several = runs.groupby(["model", "organism", "seed", "method"])["k"].nunique()
    several = several[several > 1]
    if len(several):
        methods = sorted(several.index.get_level_values("method").unique())
        raise ValueError(f"method(s) {methods} have several main-run k: runs.csv needs its main_run column")
    return runs[runs["family"].isin(PAPER_FAMILIES)]


def main_table(runs: pd.DataFrame, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """The paper's first table: one row per organism and family ("all" and each paper family), over the main
    runs. Columns: docs/analysis.md. A family without runs keeps n_runs = 0 and NaN statistics."""
    runs = _main_runs(runs)
    counted = runs["delta_pp"].notna() & _valid(runs)
    instruct = runs["instruct"] if "instruct" in runs.columns else pd.Series(None, index=runs.index)
    rows = []
    for organism in sorted(runs["organism"].unique()):
        of_organism = runs["organism"] == organism
        for family in FAMILY_ROWS:
            in_family = of_organism if family == "all" else of_organism & (runs["family"] == family)
            group = runs[in_family]
            base = runs.loc[in_family & counted & instruct.eq(False), "delta_pp"]
            inst = runs.loc[in_family & counted & instruct.eq(True), "delta_pp"]
            rows.append(
                {
                    "organism": organism,
                    "family": family,
                    **_delta_summary(group, n_boot, seed),
                    "p_wilcoxon": wilcoxon_p(effective_runs(runs[in_family & counted])["delta_pp"]),
                    "mean_delta_pp_base": _mean(base),
                    "mean_delta_pp_instruct": _mean(inst),
                    "n_base": len(base),
                    "n_instruct": len(inst),
                }
            )
    return pd.DataFrame(rows, columns=MAIN_COLUMNS)


def methods_table(runs: pd.DataFrame, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """One row per (organism, method) over models × seeds, at the method's own k (main runs).

    sign_consistency: fraction of counted runs with delta < 0 (ties in the denominator, as in the paper).
    sign_agreement: fraction whose sign equals the sign of the mean. p_sign_holm: Holm-adjusted over every
    testable (organism, method) cell of this table, the family named in holm_family.
    """
    runs = _main_runs(runs)
    rows = []
    for (organism, method), group in runs.groupby(["organism", "method"], sort=True):
        summary = _delta_summary(group, n_boot, seed)
        delta = group.loc[group["delta_pp"].notna() & _valid(group), "delta_pp"].to_numpy(dtype=float)
        n = len(delta)
        mean_sign = np.sign(delta.mean()) if n else math.nan
        rows.append(
            {
                "organism": organism,
                "method": method,
                "family": group["family"].iloc[0],
                "k": int(group["k"].iloc[0]),
                **summary,
                "sign_consistency": summary["n_suppressed"] / n if n else math.nan,
                "sign_agreement": float((np.sign(delta) == mean_sign).mean()) if n else math.nan,
            }
        )
    table = pd.DataFrame(rows, columns=METHODS_COLUMNS)
    table["p_sign_holm"] = holm_adjust(table["p_sign"])
    table["holm_family"] = f"organism x method grid, m={int(table['p_sign'].notna().sum())}"
    return table


def kscaling_table(runs: pd.DataFrame, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """Delta against k for each selecting method: one row per (organism, method, k), valid runs only.

    minus_gst_pp: mean over (model, seed) of delta(method, k) − delta(gst), paired on the organism where both
    runs exist and are valid (n_gst_pairs), with a cluster bootstrap CI; the k=1 row contrasts one T>0 sample
    with greedy.
    """
    _require(runs, ["model", "organism", "method", "k", "seed", "delta_pp"], "runs table")
    if "family" not in runs.columns:
        runs = runs.assign(family=[family_of(m) for m in runs["method"]])
    counted = runs[runs["delta_pp"].notna() & _valid(runs)]
    selecting = [m for m in sorted(runs["method"].unique()) if get_spec(m).selects]
    gst = counted.loc[counted["method"] == "gst", [*RUN_KEYS, "delta_pp"]].rename(
        columns={"delta_pp": "gst_pp"}
    )
    rows = []
    for (organism, method, k), group in runs[runs["method"].isin(selecting)].groupby(
        ["organism", "method", "k"], sort=True
    ):
        summary = _delta_summary(group, n_boot, seed)
        pairs = group[group["delta_pp"].notna() & _valid(group)].merge(gst, on=RUN_KEYS, how="inner")
        diff = (pairs["delta_pp"] - pairs["gst_pp"]).to_numpy(dtype=float)
        diff_ci = cluster_bootstrap_ci(diff, _cluster_ids(pairs), n_boot, seed)
        rows.append(
            {
                "organism": organism,
                "method": method,
                "family": group["family"].iloc[0],
                "k": int(k),
                **{
                    c: summary[c]
                    for c in (
                        "n_runs",
                        "mean_delta_pp",
                        "mean_delta_pp_ci_low",
                        "mean_delta_pp_ci_high",
                        "n_clusters",
                        "n_invalid",
                    )
                },
                "minus_gst_pp": _mean(diff),
                "minus_gst_pp_ci_low": diff_ci[0],
                "minus_gst_pp_ci_high": diff_ci[1],
                "n_gst_pairs": len(diff),
            }
        )
    return pd.DataFrame(rows, columns=KSCALING_COLUMNS)


def controls_table(runs: pd.DataFrame) -> pd.DataFrame:
    """controls.csv: one row per control run. passed: the run is valid and its prompt-bootstrap CI of delta lies
    wholly on the control's expected side of 0 (the aligned oracle must lower M, the misaligned one raise it)."""
    _require(runs, ["model", "organism", "method", "seed", "delta_pp", "delta_pp_ci_low", "delta_pp_ci_high"],
             "runs table")  # fmt: skip
    controls = runs[runs["method"].isin(CONTROL_SIGNS)]
    rows = []
    for row in controls.sort_values(["organism", "model", "seed", "method"]).itertuples(index=False):
        sign = CONTROL_SIGNS[row.method]
        valid = bool(getattr(row, "valid", True))
        low, high = row.delta_pp_ci_low, row.delta_pp_ci_high
        passed = valid and bool(high < 0 if sign < 0 else low > 0)
        rows.append({"model": row.model, "organism": row.organism, "seed": int(row.seed), "method": row.method,
                     "expected_sign": sign, "delta_pp": row.delta_pp, "delta_pp_ci_low": low,
                     "delta_pp_ci_high": high, "valid": valid, "passed": passed})  # fmt: skip
    return pd.DataFrame(rows, columns=CONTROLS_COLUMNS)
