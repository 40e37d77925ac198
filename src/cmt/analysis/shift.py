"""shift.csv and shift_correlations.csv from the per-run shift records that `cmt shift` and `cmt fragility`
write (the measures themselves: `cmt.phases.shift`). A Monte-Carlo KL that `kl_reliable` rejects stays in
shift.csv beside its `_reliable` flag (False) and is left out of the correlations."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cmt.methods.registry import method_names
from cmt.runtime.io import DataError

RUN_KEYS = ["model", "organism", "seed", "method", "k"]
ORGANISM_KEYS = ["model", "organism", "seed"]
SHIFT_MEASURES = (
    "label_ce_token", "label_ce_seq", "kl_realised", "kl_realised_eval", "fragility", "fragility_pair",
)  # fmt: skip
# Monte-Carlo KL estimates: each has a `<prefix>_reliable` flag (kl_reliable).
KL_PREFIXES = ("kl_realised", "kl_realised_eval", "fragility", "fragility_pair")
# An estimate from samples of which more than this share were cut at the token budget is not trusted: it is the
# KL of the budget-truncated distributions, which can sit far below the untruncated one and move with the budget.
MAX_UNFINISHED_SHARE = 0.5


def _kl_block(prefix: str, n_column: str) -> list[str]:
    return [prefix, f"{prefix}_reliable", f"{prefix}_se", n_column, f"{prefix}_frac_unfinished",
            f"{prefix}_frac_retokenized", f"{prefix}_scored_on_ids"]  # fmt: skip


SHIFT_COLUMNS = [
    *RUN_KEYS, "delta_pp", "main_run", "valid",
    "label_ce_token", "label_ce_seq", "n_labels", "n_label_tokens",
    *_kl_block("kl_realised", "n_kl"), *_kl_block("kl_realised_eval", "n_kl_eval"),
    "kl_m", "kl_max_new_tokens",
    *_kl_block("fragility", "fragility_n_prompts"),
    "fragility_ci_low", "fragility_ci_high", "fragility_n_perturbations", "fragility_m",
    *_kl_block("fragility_pair", "fragility_pair_n_prompts"),
]  # fmt: skip
# Counts that are 0, not NaN, when a run has no record of that measure.
COUNT_COLUMNS = ("n_labels", "n_label_tokens", "n_kl", "n_kl_eval", "fragility_n_prompts",
                 "fragility_n_perturbations", "fragility_pair_n_prompts")  # fmt: skip
FLAG_COLUMNS = tuple(f"{p}_{flag}" for p in KL_PREFIXES for flag in ("reliable", "scored_on_ids"))
CORRELATION_COLUMNS = ["organism", "measure", "unit", "n", "n_clusters", "n_unreliable", "pearson_r", "pearson_p",
                       "spearman_r", "spearman_p", "spearman_ci_low", "spearman_ci_high", "spearman_p_perm"]  # fmt: skip
# Measures of the organism, not of the run: every run of a (model, organism, seed) carries the same value.
ORGANISM_MEASURES = ("fragility", "fragility_pair")


def kl_reliable(frac_unfinished: float, frac_retokenized: float, scored_on_ids: bool, n: int) -> bool:
    """Whether a Monte-Carlo KL estimate may be read as a number: it has prompts, every sample was scored as
    the exact sampled outcome (on its token ids, or as text that re-tokenized to the sampled length), and at
    most MAX_UNFINISHED_SHARE of the samples were cut at the token budget. NaN inputs are unreliable."""
    exact = bool(scored_on_ids) or frac_retokenized == 0
    return bool(n > 0 and exact and frac_unfinished <= MAX_UNFINISHED_SHARE)


def read_records(paths: Sequence[str]) -> pd.DataFrame:
    """Per-run JSON records (one object per file) as a DataFrame."""
    rows = []
    for path in paths:
        try:
            with open(path) as fh:
                row = json.load(fh)
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: cannot read a JSON record ({err})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: expected a JSON object")
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Tables


def _require(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}")


def _unique(df: pd.DataFrame, keys: list[str], name: str) -> None:
    dup = df[df.duplicated(keys, keep=False)]
    if not dup.empty:
        raise DataError(f"{name}: more than one row for {dup[keys].drop_duplicates().to_dict('records')[:3]}")


def shift_table(
    records: pd.DataFrame, runs: pd.DataFrame, fragility: pd.DataFrame | None = None
) -> pd.DataFrame:
    """shift.csv: one row per run of `runs` (runs.csv) with its delta and shift measures (SHIFT_COLUMNS).

    `records` holds `shift_record`s keyed by (model, organism, seed, method, k); `fragility` holds
    `fragility_record`s keyed by (model, organism, seed), shared by every run of that organism. A run without a
    record keeps NaN measures with n = 0; a record without a run is an error.
    """
    _require(runs, [*RUN_KEYS, "delta_pp"], "runs table")
    _require(records, RUN_KEYS, "shift records")
    _unique(runs, RUN_KEYS, "runs table")
    _unique(records, RUN_KEYS, "shift records")
    base = runs[[*RUN_KEYS, "delta_pp"]].copy()
    # Older runs tables carry neither column: every run is then a main, valid run.
    base["main_run"] = runs["main_run"].astype(bool) if "main_run" in runs.columns else True
    base["valid"] = runs["valid"].astype(bool) if "valid" in runs.columns else True
    table = base.merge(records.drop(columns=["delta_pp"], errors="ignore"), on=RUN_KEYS, how="left")
    orphans = records.merge(base[RUN_KEYS], on=RUN_KEYS, how="left", indicator=True)
    orphans = orphans[orphans["_merge"] == "left_only"]
    if not orphans.empty:
        raise DataError(
            f"shift records without a run in the runs table: {orphans[RUN_KEYS].to_dict('records')[:3]}"
        )
    if fragility is not None and not fragility.empty:
        _require(fragility, ORGANISM_KEYS, "fragility records")
        if "fragility_n_prompts" not in fragility.columns:
            raise DataError(
                "fragility records predate the perturbation-family fragility: rerun `cmt fragility`"
            )
        _unique(fragility, ORGANISM_KEYS, "fragility records")
        table = table.merge(fragility, on=ORGANISM_KEYS, how="left", suffixes=("", "_fragility_record"))
    _reliability_of_older_records(table)
    for column in SHIFT_COLUMNS:
        if column not in table.columns:
            table[column] = 0 if column in COUNT_COLUMNS else False if column in FLAG_COLUMNS else math.nan
    for column in COUNT_COLUMNS:
        table[column] = table[column].fillna(0).astype(int)
    for column in FLAG_COLUMNS:  # no estimate: unreliable
        table[column] = table[column].astype("boolean").fillna(False).astype(bool)
    return table[SHIFT_COLUMNS].sort_values(RUN_KEYS, kind="stable").reset_index(drop=True)


def _reliability_of_older_records(table: pd.DataFrame) -> None:
    """Records written before ids were scored carry no `_reliable` flag: derive it from their text-scoring
    diagnostics (in place)."""
    for prefix, n_column in (("kl_realised", "n_kl"), ("kl_realised_eval", "n_kl_eval")):
        needed = [f"{prefix}_frac_unfinished", f"{prefix}_frac_retokenized", n_column]
        if f"{prefix}_reliable" in table.columns or any(c not in table.columns for c in needed):
            continue
        table[f"{prefix}_reliable"] = [
            kl_reliable(u, r, False, 0 if pd.isna(n) else int(n))
            for u, r, n in zip(*(table[c] for c in needed), strict=True)
        ]


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of x with the same row of y: Pearson's r of their average ranks, as scipy's
    spearmanr computes it, for all rows at once (NaN where a row is constant)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))


def _weighted_spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman's rho of the sample that holds point i weights[b, i] times, for each row b: Pearson's r of that
    sample's average ranks, as scipy's spearmanr computes it, without building the sample (NaN where a variable
    is constant in it)."""

    def centred_ranks(v: np.ndarray) -> np.ndarray:
        below = (v[None, :] < v[:, None]).astype(float)  # [i, j]: v_j < v_i
        tied = (v[None, :] == v[:, None]).astype(float)
        ranks = weights @ below.T + (weights @ tied.T + 1) / 2
        return ranks - (weights * ranks).sum(axis=1, keepdims=True) / weights.sum(axis=1, keepdims=True)

    def varies(v: np.ndarray) -> np.ndarray:
        drawn = weights > 0
        return np.where(drawn, v, -np.inf).max(axis=1) > np.where(drawn, v, np.inf).min(axis=1)

    rx, ry = centred_ranks(x), centred_ranks(y)
    cov, vx, vy = ((weights * a * b).sum(axis=1) for a, b in ((rx, ry), (rx, rx), (ry, ry)))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cov / np.sqrt(vx * vy)
    return np.where(varies(x) & varies(y), rho, np.nan)


def _spearman_ci_and_permutation(
    x: np.ndarray, y: np.ndarray, clusters: np.ndarray, strata: np.ndarray, n_boot: int, seed: int
) -> tuple[float, ...]:
    """Percentile bootstrap CI of Spearman's rho that resamples whole clusters (each draw of a cluster brings
    all of its points), and its two-sided permutation p, which shuffles y within each stratum only. The
    observed statistic counts once, so p is never 0; strata of one point each leave nothing to shuffle (p = 1).
    `clusters`, `strata`: integer codes from 0."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    n_clusters = int(clusters.max()) + 1
    drawn = rng.integers(0, n_clusters, (n_boot, n_clusters)) + n_clusters * np.arange(n_boot)[:, None]
    counts = np.bincount(drawn.ravel(), minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)
    boot = _weighted_spearman(x, y, counts[:, clusters].astype(float))
    boot = boot[np.isfinite(boot)]
    # Sorting random keys offset by the cluster code groups each row by cluster, in random order within it.
    order = np.argsort(strata[None, :] + rng.random((n_boot, len(y))), axis=1)
    shuffled = np.empty((n_boot, len(y)))
    shuffled[:, np.argsort(strata, kind="stable")] = y[order]
    perm = np.abs(_spearman_rows(np.broadcast_to(x, shuffled.shape), shuffled))
    observed = abs(spearmanr(x, y).statistic)
    low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    p_perm = (1 + int((perm >= observed - 1e-12).sum())) / (1 + n_boot)
    return float(low), float(high), float(p_perm)


def shift_correlations(
    table: pd.DataFrame, measures: Sequence[str] = SHIFT_MEASURES, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Correlation of delta with each measure, per organism and over all (organism "all"), over the main runs
    (k-scaling runs share their draws with the main run) of valid models and no control (the oracle labels are
    not consistency training: their large, known deltas would drive the correlation), where both values are
    finite and, for a KL estimate, reliable (`<measure>_reliable`; n_unreliable counts the finite points left
    out). A run-level measure has one point per run (unit "run"); an organism-level measure (ORGANISM_MEASURES)
    has one point per (model, organism, seed), the mean delta of its runs (unit "organism"), since its runs
    share the one value. n_clusters counts the (model, organism, seed) organisms behind the points. Pearson and
    Spearman with scipy's two-sided p, which treat the points as independent. For run-level measures the
    bootstrap CI of Spearman's rho resamples organisms with all their runs, and the permutation p shuffles the
    measure among the runs of each organism: runs of one organism share its Phase-1 adapter, so it asks whether
    the runs that shift more move M more than other runs of the same organism. For organism-level measures both
    work on the organisms' points. NaN statistics when n < 3 or a variable is constant."""
    from scipy.stats import ConstantInputWarning, pearsonr, spearmanr

    _require(table, [*ORGANISM_KEYS, "delta_pp", *measures], "shift table")
    for column in ("main_run", "valid"):
        if column in table.columns:
            table = table[table[column].astype(bool)]
    if "method" in table.columns:
        table = table[~table["method"].isin(method_names(family="control"))]
    groups = [(str(o), g) for o, g in table.groupby("organism", sort=True)] + [("all", table)]
    rows = []
    for organism, group in groups:
        for measure in measures:
            pair = group[[*ORGANISM_KEYS, "delta_pp", measure]].astype({"delta_pp": float, measure: float})
            finite = np.isfinite(pair["delta_pp"]) & np.isfinite(pair[measure])
            flag = f"{measure}_reliable"
            reliable = group[flag].fillna(False).astype(bool) if flag in group.columns else finite
            unreliable = pair[finite & ~reliable]
            pair = pair[finite & reliable]
            unit = "organism" if measure in ORGANISM_MEASURES else "run"
            if unit == "organism":
                pair = pair.groupby(ORGANISM_KEYS, sort=True).agg(delta_pp=("delta_pp", "mean"),
                                                                  **{measure: (measure, "first")})  # fmt: skip
                pair = pair.reset_index()
                unreliable = unreliable.drop_duplicates(ORGANISM_KEYS)
            clusters = pair.groupby(ORGANISM_KEYS, sort=True).ngroup().to_numpy()
            strata = clusters if unit == "run" else np.zeros(len(pair), dtype=int)
            row = {"organism": organism, "measure": measure, "unit": unit, "n": len(pair),
                   "n_clusters": int(clusters.max()) + 1 if len(pair) else 0, "n_unreliable": len(unreliable),
                   **dict.fromkeys(CORRELATION_COLUMNS[6:], math.nan)}  # fmt: skip
            constant = pair["delta_pp"].nunique() < 2 or pair[measure].nunique() < 2
            if len(pair) >= 3 and not constant:
                delta, value = pair["delta_pp"].to_numpy(), pair[measure].to_numpy()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConstantInputWarning)
                    pearson = pearsonr(delta, value)
                    spearman = spearmanr(delta, value)
                    low, high, p_perm = _spearman_ci_and_permutation(
                        delta, value, clusters, strata, n_boot, seed
                    )
                row.update(
                    pearson_r=float(pearson.statistic),
                    pearson_p=float(pearson.pvalue),
                    spearman_r=float(spearman.statistic),
                    spearman_p=float(spearman.pvalue),
                    spearman_ci_low=low,
                    spearman_ci_high=high,
                    spearman_p_perm=p_perm,
                )
            rows.append(row)
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
