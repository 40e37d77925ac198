"""Figures from the tables in results/tables/, written as PNG and PDF (matplotlib, Agg backend, atomic writes).

- delta_by_method: per organism, every run's delta and each method's mean delta with its 95% CI (runs.csv,
  methods.csv).
- eta_rank / eta_zscore: binned η(s) per (organism, method), one line per k, Wilson 95% bands (eta.csv).
- kscaling: mean delta against k per selecting method with 95% CIs, GST as a reference band (kscaling.csv,
  methods.csv).
- delta_vs_shift: delta against each distribution-shift measure (shift.csv); skipped when shift.csv is absent.

Deltas are shown in percentage points. A table without rows gives a figure that says so, not an empty axis.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cmt.methods.registry import PAPER_FAMILIES as FAMILIES
from cmt.runtime.io import atomic_path

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf")
FAMILY_COLOURS = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:gray"), strict=True))
SHIFT_MEASURES = {
    "label_ce_token": "label cross-entropy under the organism (nats/token)",
    "kl_realised": "realised KL(P3 || P1) (nats/sequence)",
    "fragility": "fragility KL(P1(.|clean) || P1(.|wrapped))",
}
REQUIRED_TABLES = ("runs.csv", "methods.csv", "eta.csv", "kscaling.csv")


def save_figure(fig, out_stem: str | Path) -> list[Path]:
    """Write `fig` to out_stem.png and out_stem.pdf atomically; close it; return the paths."""
    paths = []
    for fmt in FORMATS:
        path = Path(f"{out_stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _no_data(title: str, why: str):
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}\n(no data: {why})", ha="center", va="center")
    return fig


def _panels(n: int, width: float = 4.0, height: float = 3.2, sharey: bool = True):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), sharey=sharey, squeeze=False)
    return fig, axes[0]


def delta_by_method_figure(runs: pd.DataFrame, methods: pd.DataFrame):
    """Per organism: runs' deltas (grey dots) and each method's mean delta ± 95% CI, coloured by family."""
    if methods.empty:
        return _no_data("delta by organism and method", "methods.csv has no rows")
    organisms = sorted(methods["organism"].unique())
    fig, axes = _panels(len(organisms))
    for ax, organism in zip(axes, organisms, strict=True):
        table = methods[methods["organism"] == organism].copy()
        table["family_order"] = table["family"].map({f: i for i, f in enumerate(FAMILIES)})
        table = table.sort_values(["family_order", "method"]).reset_index(drop=True)
        for x, row in table.iterrows():
            deltas = 100 * runs.loc[(runs["organism"] == organism) & (runs["method"] == row["method"])
                                    & (runs["k"] == row["k"]), "delta"].dropna().to_numpy()  # fmt: skip
            offsets = np.linspace(-0.15, 0.15, len(deltas)) if len(deltas) > 1 else np.zeros(len(deltas))
            ax.scatter(x + 0.25 + offsets, deltas, s=8, color="0.6", zorder=1)
            low, high = row["mean_delta_ci_low"], row["mean_delta_ci_high"]
            yerr = (
                [[row["mean_delta"] - low], [high - row["mean_delta"]]]
                if np.isfinite([low, high]).all()
                else None
            )
            ax.errorbar(x, row["mean_delta"], yerr=yerr, fmt="o", capsize=3,
                        color=FAMILY_COLOURS.get(row["family"], "black"), zorder=2)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(table)), table["method"], rotation=60, ha="right")
        ax.set_title(organism)
    axes[0].set_ylabel("delta = M(phase 3) − M(phase 1) (pp)")
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=c, label=f) for f, c in FAMILY_COLOURS.items()
    ]
    fig.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), fontsize="small"
    )
    return fig


def eta_figure(bins: pd.DataFrame, transform: str):
    """Grid of organisms × methods: η per non-empty bin against the bin's mean transformed score, per k."""
    bins = bins[(bins["transform"] == transform) & (bins["n"] > 0)]
    if bins.empty:
        return _no_data(f"eta(s), {transform} transform", "no binned candidates")
    organisms, methods = sorted(bins["organism"].unique()), sorted(bins["method"].unique())
    fig, axes = plt.subplots(len(organisms), len(methods), figsize=(3.2 * len(methods), 2.8 * len(organisms)),
                             sharey=True, squeeze=False)  # fmt: skip
    for i, organism in enumerate(organisms):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            cell = bins[(bins["organism"] == organism) & (bins["method"] == method)]
            for k, curve in cell.groupby("k", sort=True):
                curve = curve.sort_values("score_mean")
                (line,) = ax.plot(curve["score_mean"], curve["eta"], marker="o", markersize=3, label=f"k={k}")
                ax.fill_between(curve["score_mean"], curve["eta_ci_low"], curve["eta_ci_high"],
                                color=line.get_color(), alpha=0.2)  # fmt: skip
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{organism} / {method}", fontsize="small")
            if not cell.empty:
                ax.legend(fontsize="x-small")
            if j == 0:
                ax.set_ylabel("η = P(misaligned | bin)")
            if i == len(organisms) - 1:
                ax.set_xlabel("within-prompt rank" if transform == "rank" else "within-prompt z-score")
    return fig


def kscaling_figure(kscaling: pd.DataFrame, methods: pd.DataFrame):
    """Per organism: mean delta ± 95% CI against k per selecting method; GST's mean and CI as a band."""
    if kscaling.empty:
        return _no_data("delta against k", "kscaling.csv has no rows")
    organisms = sorted(kscaling["organism"].unique())
    fig, axes = _panels(len(organisms))
    for ax, organism in zip(axes, organisms, strict=True):
        cell = kscaling[kscaling["organism"] == organism]
        for method, curve in cell.groupby("method", sort=True):
            curve = curve.sort_values("k")
            low = curve["mean_delta"] - curve["mean_delta_ci_low"]
            high = curve["mean_delta_ci_high"] - curve["mean_delta"]
            ax.errorbar(curve["k"], curve["mean_delta"], yerr=[low.fillna(0), high.fillna(0)], marker="o",
                        capsize=3, label=method)  # fmt: skip
        gst = methods[(methods["organism"] == organism) & (methods["method"] == "gst")]
        if len(gst) and np.isfinite(gst["mean_delta"].iloc[0]):
            row = gst.iloc[0]
            ax.axhline(row["mean_delta"], color="black", linestyle="--", linewidth=1, label="gst (greedy)")
            if np.isfinite([row["mean_delta_ci_low"], row["mean_delta_ci_high"]]).all():
                ax.axhspan(row["mean_delta_ci_low"], row["mean_delta_ci_high"], color="black", alpha=0.1)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ks = sorted(cell["k"].unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("k (candidates per prompt)")
        ax.set_title(organism)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel("mean delta (pp)")
    return fig


def delta_vs_shift_figure(shift: pd.DataFrame):
    """One panel per shift measure: each run's delta (pp) against the measure, coloured by organism."""
    _require_columns(shift, ["organism", "delta"], "shift.csv")
    measures = [m for m in SHIFT_MEASURES if m in shift.columns]
    if not measures:
        return _no_data("delta against distribution shift", f"shift.csv has none of {list(SHIFT_MEASURES)}")
    fig, axes = _panels(len(measures))
    for ax, measure in zip(axes, measures, strict=True):
        points = shift[shift[measure].notna() & shift["delta"].notna()]
        for organism, group in points.groupby("organism", sort=True):
            ax.scatter(group[measure], 100 * group["delta"], s=12, label=organism)
        if points.empty:
            ax.text(0.5, 0.5, "no runs measured", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize="x-small")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel(SHIFT_MEASURES[measure])
    axes[0].set_ylabel("delta (pp)")
    return fig


def _require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def make_figures(tables_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Read the tables in `tables_dir` and write every figure to `out_dir`; return the written paths.

    runs.csv, methods.csv, eta.csv and kscaling.csv are required; shift.csv is optional (its figure is
    skipped, with a logged note, when it is absent).
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    missing = [name for name in REQUIRED_TABLES if not (tables_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{tables_dir}: missing table(s) {missing} needed for the figures")
    runs, methods, bins, kscaling = (pd.read_csv(tables_dir / name) for name in REQUIRED_TABLES)
    _require_columns(runs, ["organism", "method", "k", "delta"], str(tables_dir / "runs.csv"))
    _require_columns(methods, ["organism", "method", "family", "k", "mean_delta", "mean_delta_ci_low",
                               "mean_delta_ci_high"], str(tables_dir / "methods.csv"))  # fmt: skip
    _require_columns(bins, ["organism", "method", "k", "transform", "n", "eta", "eta_ci_low", "eta_ci_high",
                            "score_mean"], str(tables_dir / "eta.csv"))  # fmt: skip
    _require_columns(kscaling, ["organism", "method", "k", "mean_delta", "mean_delta_ci_low",
                                "mean_delta_ci_high"], str(tables_dir / "kscaling.csv"))  # fmt: skip
    written = save_figure(delta_by_method_figure(runs, methods), out_dir / "delta_by_method")
    for transform in ("rank", "zscore"):
        written += save_figure(eta_figure(bins, transform), out_dir / f"eta_{transform}")
    written += save_figure(kscaling_figure(kscaling, methods), out_dir / "kscaling")
    shift_path = tables_dir / "shift.csv"
    if shift_path.is_file():
        written += save_figure(delta_vs_shift_figure(pd.read_csv(shift_path)), out_dir / "delta_vs_shift")
    else:
        log.warning("no %s: skipping the delta-against-shift figure", shift_path)
    return written
