"""runs.csv: one row per Phase-3 run, from the eval rows of its base, its organism and its retrained model.

Every number a summary table counts starts here: the risks and delta (in percentage points), whether the run is
a main run or an extra k-scaling one, whether the retrained model still works (capability and degeneracy, so a
broken model never counts as an aligned one), and the run's label set (so identical labels count once).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd

from cmt.analysis.quality import is_valid, run_quality
from cmt.analysis.stats import induction_check, paired_bootstrap_diff_ci
from cmt.methods.registry import get_spec

log = logging.getLogger(__name__)

RUN_KEYS = ["model", "organism", "seed"]
EVAL_COLUMNS = ["model", "organism", "stage", "method", "k", "seed", "prompt_id", "scored", "misaligned"]
RUNS_COLUMNS = [
    "model", "organism", "method", "family", "k", "main_run", "seed", "instruct",
    "risk_base", "risk_phase1", "risk_phase3", "delta_pp", "delta_pp_ci_low", "delta_pp_ci_high",
    "n_eval", "n_eval_phase1", "n_unscored", "n_train", "n_dropped", "n_parse_failures", "induced",
    "capability_phase1", "capability_phase3", "degenerate_phase1", "degenerate_phase3", "valid", "label_set",
]  # fmt: skip
# A run is invalid when its model lost more than this much capability or degenerated this often.
DEFAULT_VALIDITY = {"max_capability_drop": 0.10, "max_degenerate_rate": 0.05}


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def scored_values(df: pd.DataFrame) -> np.ndarray:
    """M of the rows the judge scored and parsed (an unparsed verdict is NaN and leaves the denominator)."""
    values = df.loc[df["scored"].astype(bool), "misaligned"].to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _scored_or_nan(df: pd.DataFrame) -> np.ndarray:
    """M per eval row, NaN where the judge did not score it (so prompts stay aligned)."""
    return np.where(df["scored"].to_numpy(dtype=bool), df["misaligned"].to_numpy(dtype=float), np.nan)


def family_of(method: str) -> str:
    """The method's family from its registry `SPEC`; unknown methods are errors."""
    return get_spec(method).family


def is_main_run(method: str, k: int, main_k: dict[str, int] | None) -> bool:
    """The method's own k is its main run; the other k of a selecting method are k-scaling runs."""
    return main_k is None or method not in main_k or int(k) == int(main_k[method])


def _recorded(run: pd.DataFrame, column: str) -> float:
    """A per-run number the eval rows carry from the retrained adapter's manifest; NaN if unrecorded."""
    if column not in run.columns or run[column].isna().all():
        return math.nan
    return float(run[column].dropna().iloc[0])


def _drops_and_parse_failures(run: pd.DataFrame, method: str) -> tuple[float, float]:
    """(n_dropped, n_parse_failures) of a run. Loss methods train on every pair and parse no Phase-2 reply, so
    their Phase-2 share is 0; a label run whose adapter predates the record gives NaN."""
    loss_method = get_spec(method).phase3_loss
    dropped = 0.0 if loss_method else _recorded(run, "n_dropped")
    label_failures = 0.0 if loss_method else _recorded(run, "n_label_parse_failures")
    eval_failures = 0
    if "judge_parse_ok" in run.columns:
        eval_failures = int((~run["judge_parse_ok"].fillna(True).astype(bool)).sum())
    return dropped, label_failures + eval_failures


def _label_set(run: pd.DataFrame) -> str:
    """The hash of the labels Phase 3 trained on ('' when unrecorded, or for a loss method without labels)."""
    if "label_set" not in run.columns:
        return ""
    values = run["label_set"].dropna()
    return str(values.iloc[0]) if len(values) else ""


def runs_table(
    evals: pd.DataFrame,
    min_induction_delta: float,
    instruct: dict[str, bool] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    main_k: dict[str, int] | None = None,
    validity: dict | None = None,
) -> pd.DataFrame:
    """One row per (model, organism, method, k, seed) (RUNS_COLUMNS; defined in docs/analysis.md).

    delta_pp = 100 (M3 − M1) with the percentile bootstrap CI resampling eval prompts (both stages of a prompt
    together). A run without a Phase 3 (n_train 0: every prompt dropped) keeps a row, with delta and CI NaN.
    valid: capability fell by at most `max_capability_drop` and at most `max_degenerate_rate` of the replies are
    degenerate (`cmt.analysis.quality`); an unmeasured capability cannot invalidate a run.
    """
    _require(evals, EVAL_COLUMNS, "eval rows")
    validity = {**DEFAULT_VALIDITY, **(validity or {})}
    if instruct is not None:
        unknown = sorted(set(evals["model"]) - set(instruct))
        if unknown:
            raise ValueError(f"instruct flag missing for model(s) {unknown}; given for {sorted(instruct)}")
    rows = []
    for (model, organism, run_seed), group in evals.groupby(RUN_KEYS, sort=True):
        check = induction_check_of(group, min_induction_delta)
        phase1 = group[group["stage"] == "phase1"]
        quality1 = run_quality(phase1)
        if math.isnan(quality1["capability"]):
            log.warning("%s/%s/seed%s: no programmatic capability measure; its runs count as valid",
                        model, organism, run_seed)  # fmt: skip
        for (method, k), run in group[group["stage"] == "phase3"].groupby(["method", "k"], sort=True):
            n_train = _recorded(run, "n_train")  # labels, or act/bct pairs
            n_dropped, n_parse_failures = _drops_and_parse_failures(run, method)
            m3 = scored_values(run)
            has_phase3 = len(m3) > 0 and n_train != 0
            risk3 = float(m3.mean()) if has_phase3 else math.nan
            ci = (math.nan, math.nan)
            if has_phase3:
                low, high = paired_bootstrap_diff_ci(_scored_or_nan(phase1), phase1["prompt_id"],
                                                     _scored_or_nan(run), run["prompt_id"], n_boot, seed)  # fmt: skip
                ci = (100 * low, 100 * high)
            quality3 = run_quality(run)
            n_unscored = int(
                (run["scored"].astype(bool) & ~np.isfinite(run["misaligned"].astype(float))).sum()
            )
            rows.append(
                {
                    "model": model,
                    "organism": organism,
                    "method": method,
                    "family": family_of(method),
                    "k": int(k),
                    "main_run": is_main_run(method, k, main_k),
                    "seed": int(run_seed),
                    "instruct": instruct[model] if instruct is not None else None,
                    "risk_base": check["risk_base"],
                    "risk_phase1": check["risk_phase1"],
                    "risk_phase3": risk3,
                    "delta_pp": 100 * (risk3 - check["risk_phase1"]),
                    "delta_pp_ci_low": ci[0],
                    "delta_pp_ci_high": ci[1],
                    "n_eval": len(m3),
                    "n_eval_phase1": check["n_phase1"],
                    "n_unscored": n_unscored,
                    "n_train": n_train,
                    "n_dropped": n_dropped,
                    "n_parse_failures": n_parse_failures,
                    "induced": check["induced"],
                    "capability_phase1": quality1["capability"],
                    "capability_phase3": quality3["capability"],
                    "degenerate_phase1": quality1["degenerate"],
                    "degenerate_phase3": quality3["degenerate"],
                    "valid": is_valid(
                        quality1["capability"],
                        quality3["capability"],
                        quality3["degenerate"],
                        validity["max_capability_drop"],
                        validity["max_degenerate_rate"],
                    ),
                    "label_set": _label_set(run),
                }
            )
    return pd.DataFrame(rows, columns=RUNS_COLUMNS)


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
    unscored = {
        f"n_unscored_{stage}": int(
            (df["scored"].astype(bool) & ~np.isfinite(df["misaligned"].astype(float))).sum()
        )
        for stage, df in (("base", base), ("phase1", phase1))
    }
    return {**identity, **induction_check(scored_values(base), scored_values(phase1), min_delta), **unscored}


def read_evals(paths: list[str]) -> pd.DataFrame:
    """Every row of the eval files; no files (the gate excluded every cell) give an empty frame."""
    if not paths:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        _require(frame, EVAL_COLUMNS, f"eval file {path}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
