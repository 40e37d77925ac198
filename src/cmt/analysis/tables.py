"""Aggregate per-row eval parquet into the run table and the paper's tables (main, methods, k-scaling).

Units: runs.csv keeps delta and its CI as differences of rates (fractions); main.csv, methods.csv and
kscaling.csv report mean deltas in percentage points. Empty groups keep their n (0) and get NaN statistics.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd

from cmt.analysis.stats import (
    cluster_bootstrap_ci,
    holm_adjust,
    induction_check,
    paired_bootstrap_diff_ci,
    sign_test,
    wilcoxon_p,
)
from cmt.methods.registry import PAPER_FAMILIES, get_spec

log = logging.getLogger(__name__)

RUN_KEYS = ["model", "organism", "seed"]
EVAL_COLUMNS = ["model", "organism", "stage", "method", "k", "seed", "prompt_id", "scored", "misaligned"]
RUNS_COLUMNS = [
    "model", "organism", "method", "family", "k", "seed", "instruct",
    "risk_base", "risk_phase1", "risk_phase3", "delta", "delta_ci_low", "delta_ci_high",
    "n_eval", "n_eval_phase1", "n_train", "noise_floor", "induced",
]  # fmt: skip
FAMILY_ROWS = ("all", *PAPER_FAMILIES)
MAIN_COLUMNS = [
    "organism", "family", "n_runs", "n_suppressed", "n_amplified", "n_ties", "suppression_ratio",
    "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "n_clusters", "p_sign", "p_wilcoxon",
    "mean_delta_base", "mean_delta_instruct", "n_base", "n_instruct", "n_no_delta",
]  # fmt: skip
METHODS_COLUMNS = [
    "organism", "method", "family", "k", "n_runs", "n_suppressed", "n_amplified", "n_ties",
    "sign_consistency", "sign_agreement", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
    "n_clusters", "p_sign", "p_sign_holm", "holm_family",
]  # fmt: skip
KSCALING_COLUMNS = [
    "organism", "method", "family", "k", "n_runs", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
    "n_clusters", "minus_gst_mean", "minus_gst_ci_low", "minus_gst_ci_high", "n_gst_pairs",
]  # fmt: skip


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def _scored(df: pd.DataFrame) -> np.ndarray:
    return df.loc[df["scored"], "misaligned"].to_numpy(dtype=float)


def _scored_or_nan(df: pd.DataFrame) -> np.ndarray:
    """M per eval row, NaN where the judge did not score it (so prompts stay aligned)."""
    return np.where(df["scored"].to_numpy(dtype=bool), df["misaligned"].to_numpy(dtype=float), np.nan)


def family_of(method: str) -> str:
    """The method's family from its module (its `SPEC` in `cmt.methods.<name>`); unknown methods are errors."""
    return get_spec(method).family


def runs_table(
    evals: pd.DataFrame,
    min_induction_delta: float,
    instruct: dict[str, bool] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (model, organism, method, k, seed): risks before/after and delta = phase3 − phase1.

    family: the method's family. instruct: the model's flag from `instruct` ({model: bool}); None leaves the
    column empty (unknown, not False). delta_ci_low/high: percentile bootstrap CI of delta resampling eval
    prompt ids, phase 1 and phase 3 rows of a prompt together (`n_boot` resamples, seeded from `seed`).
    n_train: Phase-3 training examples (selected labels, or act/bct pairs); a run with 0 (every prompt dropped)
    has no Phase 3 and is kept with delta NaN, never silently skipped. noise_floor: |M(Phase-3 epoch 0) − M(Phase 1)| is NaN: the pipeline does not evaluate Phase 3 before its
    first update, so the judge/decoding noise floor is not measured. n_eval / n_eval_phase1: scored rows.
    """
    _require(evals, EVAL_COLUMNS, "eval rows")
    if instruct is not None:
        unknown = sorted(set(evals["model"]) - set(instruct))
        if unknown:
            raise ValueError(f"instruct flag missing for model(s) {unknown}; given for {sorted(instruct)}")
    rows = []
    for (model, organism, run_seed), group in evals.groupby(RUN_KEYS, sort=True):
        check = induction_check_of(group, min_induction_delta)
        phase1 = group[group["stage"] == "phase1"]
        retrained = group[group["stage"] == "phase3"]
        for (method, k), run in retrained.groupby(["method", "k"], sort=True):
            n_train = _n_train(run)
            m3 = _scored(run)
            # No training example (e.g. multi_view dropped every prompt): there was no Phase 3, so no delta.
            risk3 = float(m3.mean()) if len(m3) and n_train != 0 else math.nan
            ci = paired_bootstrap_diff_ci(
                _scored_or_nan(phase1),
                phase1["prompt_id"],
                _scored_or_nan(run),
                run["prompt_id"],
                n_boot,
                seed,
            )
            rows.append(
                {
                    "model": model,
                    "organism": organism,
                    "method": method,
                    "family": family_of(method),
                    "k": int(k),
                    "seed": int(run_seed),
                    "instruct": instruct[model] if instruct is not None else None,
                    "risk_base": check["risk_base"],
                    "risk_phase1": check["risk_phase1"],
                    "risk_phase3": risk3,
                    "delta": risk3 - check["risk_phase1"],
                    "delta_ci_low": ci[0],
                    "delta_ci_high": ci[1],
                    "n_eval": len(m3),
                    "n_eval_phase1": check["n_phase1"],
                    "n_train": n_train,
                    "noise_floor": math.nan,
                    "induced": check["induced"],
                }
            )
    return pd.DataFrame(rows, columns=RUNS_COLUMNS)


def _n_train(run: pd.DataFrame) -> float:
    """Phase-3 training examples of a run (labels, or act/bct pairs), from its eval rows; NaN if unrecorded."""
    if "n_train" not in run.columns or run["n_train"].isna().all():
        return math.nan
    return float(run["n_train"].dropna().iloc[0])


def select_main_runs(runs: pd.DataFrame, main_k: dict[str, int] | None) -> pd.DataFrame:
    """The runs of each method's own k (the paper's grid), dropping the extra k-scaling runs.

    main_k maps a method to its configured k; methods not in it must have a single k per organism and seed.
    Without main_k every method must have a single k: counting k-scaling runs as extra runs would inflate n.
    """
    main_k = main_k or {}
    keep = pd.Series(True, index=runs.index)
    for method, k in main_k.items():
        keep &= (runs["method"] != method) | (runs["k"] == int(k))
    selected = runs[keep]
    ks_per_cell = selected.groupby(["model", "organism", "seed", "method"])["k"].nunique()
    several = ks_per_cell[ks_per_cell > 1]
    if len(several):
        methods = sorted(several.index.get_level_values("method").unique())
        raise ValueError(
            f"method(s) {methods} have runs at several k (k-scaling); pass main_k, e.g. --main-k "
            + " ".join(f"{m}=K" for m in methods)
        )
    return selected


def _with_family(runs: pd.DataFrame) -> pd.DataFrame:
    if "family" in runs.columns:
        return runs
    return runs.assign(family=[family_of(m) for m in runs["method"]])


def _cluster_ids(df: pd.DataFrame) -> pd.Series:
    """One label per (model, seed) organism, e.g. "toy/0": its runs share one Phase-1 adapter (not independent)."""
    return pd.Series(
        [f"{model}/{seed}" for model, seed in zip(df["model"], df["seed"], strict=True)],
        index=df.index,
        dtype=object,
    )


def _pp(values) -> float:
    values = np.asarray(values, dtype=float)
    return 100 * float(values.mean()) if len(values) else math.nan


def _delta_summary(group: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Counts, mean delta (pp) with its (model, seed)-cluster bootstrap CI, and the sign tests."""
    valid = group[group["delta"].notna()]
    delta = valid["delta"].to_numpy(dtype=float)
    n_sup, n_amp = int((delta < 0).sum()), int((delta > 0).sum())
    clusters = _cluster_ids(valid)
    ci = cluster_bootstrap_ci(100 * delta, clusters, n_boot, seed)
    return {
        "n_runs": len(delta),
        "n_suppressed": n_sup,
        "n_amplified": n_amp,
        "n_ties": int((delta == 0).sum()),
        "suppression_ratio": n_sup / (n_sup + n_amp) if n_sup + n_amp else math.nan,
        "mean_delta": _pp(delta),
        "mean_delta_ci_low": ci[0],
        "mean_delta_ci_high": ci[1],
        "n_clusters": int(clusters.nunique()),
        "p_sign": sign_test(n_sup, n_amp),
        "n_no_delta": int(group["delta"].isna().sum()),
    }


def main_table(
    runs: pd.DataFrame, seed: int = 0, n_boot: int = 2000, main_k: dict[str, int] | None = None
) -> pd.DataFrame:
    """The paper's first table: one row per organism and family ("all" and each method family).

    n_runs counts runs with a delta (n_no_delta those without). suppression_ratio = suppressed / (suppressed +
    amplified), ties excluded. mean_delta is in percentage points, with a 95% percentile cluster-bootstrap CI
    resampling organisms, i.e. (model, seed) clusters (n_clusters of them; fewer than 2 give NaN). p_sign:
    exact two-sided binomial sign test of suppressed vs amplified; p_wilcoxon: Wilcoxon signed-rank on
    delta. mean_delta_base / _instruct split by the runs' instruct flag (n_base / n_instruct runs; runs with
    an unknown flag are in neither). A family without runs keeps n_runs = 0 and NaN statistics.
    """
    _require(runs, ["model", "organism", "method", "k", "seed", "delta"], "runs table")
    runs = _with_family(select_main_runs(runs, main_k))
    instruct = runs["instruct"] if "instruct" in runs.columns else pd.Series(None, index=runs.index)
    rows = []
    for organism in sorted(runs["organism"].unique()):
        of_organism = runs["organism"] == organism
        for family in FAMILY_ROWS:
            in_family = of_organism if family == "all" else of_organism & (runs["family"] == family)
            group = runs[in_family]
            valid = group["delta"].notna()
            base = group.loc[valid & instruct[in_family].eq(False), "delta"]
            inst = group.loc[valid & instruct[in_family].eq(True), "delta"]
            summary = _delta_summary(group, n_boot, seed)
            rows.append(
                {
                    "organism": organism,
                    "family": family,
                    **summary,
                    "p_wilcoxon": wilcoxon_p(group["delta"]),
                    "mean_delta_base": _pp(base),
                    "mean_delta_instruct": _pp(inst),
                    "n_base": len(base),
                    "n_instruct": len(inst),
                }
            )
    return pd.DataFrame(rows, columns=MAIN_COLUMNS)


def methods_table(
    runs: pd.DataFrame, seed: int = 0, n_boot: int = 2000, main_k: dict[str, int] | None = None
) -> pd.DataFrame:
    """One row per (organism, method) over models × seeds, at the method's own k.

    sign_consistency: fraction of runs with delta < 0 (ties count in the denominator, as in the paper).
    sign_agreement: fraction of runs whose sign equals the sign of the mean delta. mean_delta (pp) with a
    (model, seed) cluster-bootstrap CI. p_sign: raw exact sign test; p_sign_holm: Holm-adjusted over every
    testable (organism, method) cell of this table, the family named in holm_family.
    """
    _require(runs, ["model", "organism", "method", "k", "seed", "delta"], "runs table")
    runs = _with_family(select_main_runs(runs, main_k))
    rows = []
    for (organism, method), group in runs.groupby(["organism", "method"], sort=True):
        summary = _delta_summary(group, n_boot, seed)
        delta = group["delta"].dropna().to_numpy(dtype=float)
        n = len(delta)
        mean_sign = np.sign(delta.mean()) if n else math.nan
        rows.append(
            {
                "organism": organism,
                "method": method,
                "family": group["family"].iloc[0],
                "k": int(group["k"].iloc[0]),
                **{c: summary[c] for c in ("n_runs", "n_suppressed", "n_amplified", "n_ties")},
                "sign_consistency": summary["n_suppressed"] / n if n else math.nan,
                "sign_agreement": float((np.sign(delta) == mean_sign).mean()) if n else math.nan,
                **{
                    c: summary[c]
                    for c in ("mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "n_clusters")
                },
                "p_sign": summary["p_sign"],
            }
        )
    table = pd.DataFrame(rows, columns=METHODS_COLUMNS)
    table["p_sign_holm"] = holm_adjust(table["p_sign"])
    n_tests = int(table["p_sign"].notna().sum())
    table["holm_family"] = f"organism x method grid, m={n_tests}"
    return table


def kscaling_table(runs: pd.DataFrame, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """Delta against k for each selecting method: one row per (organism, method, k).

    mean_delta (pp) with a (model, seed) cluster-bootstrap CI. minus_gst_*: mean over (model, seed) of
    delta(method, k) − delta(gst) in pp, paired on the organism where both runs exist (n_gst_pairs), with a
    bootstrap CI over those pairs; the k=1 row is the paper's contrast of one T>0 sample against greedy.
    """
    _require(runs, ["model", "organism", "method", "k", "seed", "delta"], "runs table")
    runs = _with_family(runs)
    selecting = [m for m in sorted(runs["method"].unique()) if get_spec(m).selects]
    gst = runs.loc[(runs["method"] == "gst") & runs["delta"].notna(), [*RUN_KEYS, "delta"]]
    gst = gst.rename(columns={"delta": "delta_gst"})
    rows = []
    for (organism, method, k), group in runs[runs["method"].isin(selecting)].groupby(
        ["organism", "method", "k"], sort=True
    ):
        summary = _delta_summary(group, n_boot, seed)
        pairs = group[group["delta"].notna()].merge(gst, on=RUN_KEYS, how="inner")
        diff = 100 * (pairs["delta"] - pairs["delta_gst"]).to_numpy(dtype=float)
        diff_ci = cluster_bootstrap_ci(diff, _cluster_ids(pairs), n_boot, seed)
        rows.append(
            {
                "organism": organism,
                "method": method,
                "family": group["family"].iloc[0],
                "k": int(k),
                **{
                    c: summary[c] for c in ("n_runs", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high")
                },
                "n_clusters": summary["n_clusters"],
                "minus_gst_mean": float(diff.mean()) if len(diff) else math.nan,
                "minus_gst_ci_low": diff_ci[0],
                "minus_gst_ci_high": diff_ci[1],
                "n_gst_pairs": len(diff),
            }
        )
    return pd.DataFrame(rows, columns=KSCALING_COLUMNS)


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
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        _require(frame, EVAL_COLUMNS, f"eval file {path}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def induction_report(base_path: str, phase1_path: str, min_delta: float) -> dict:
    report = induction_check_of(read_evals([base_path, phase1_path]), min_delta)
    if not report["induced"]:
        log.warning(
            "induction did not clearly raise M: base %.3f %s vs organism %.3f %s (need +%.2f, no CI overlap)",
            report["risk_base"], report["risk_base_ci"], report["risk_phase1"], report["risk_phase1_ci"], min_delta,
        )  # fmt: skip
    return report
