"""The η(s) figure (eta_rank, eta_zscore): binned η per (organism, method), one line per k, from eta.csv's merged
groups of bins, with Wilson 95% bands on a shared [0, 1] x-axis; a panel without a slope says why."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cmt.analysis.plotting import grid, no_data
from cmt.analysis.stats import FIT_WARNED


def _eta_x(bins: pd.DataFrame, transform: str) -> pd.Series:
    """x in [0, 1]: the bin's mean within-prompt rank, or the bin centre on the pooled percentile scale of the
    z-score (its bins are pooled deciles, so the z values themselves are unbounded)."""
    if transform == "rank":
        return bins["score_mean"]
    n_bins = bins.groupby(["organism", "method", "k"])["bin"].transform("size")
    return (bins["bin"] + 0.5) / n_bins


def _wrap(text: str, width: int = 38) -> str:
    """A panel title line wrapped to its panel's width, so neighbouring titles do not run into each other."""
    return textwrap.fill(text, width, break_long_words=False)


def _eta_points(curve: pd.DataFrame) -> pd.DataFrame:
    """The points one k's curve draws: one per merged group (eta.csv's merged_* columns: bins under
    analysis.eta_min_bin rows joined to a neighbour, as the flatness and the slope see them), at the mean x of
    its bins weighted by their rows; older tables without those columns draw the raw bins."""
    if "merged_bin" not in curve.columns or curve["merged_bin"].isna().all():
        return curve[["x", "eta", "eta_ci_low", "eta_ci_high"]].assign(in_flatness=True)
    used = curve[curve["merged_bin"].notna() & (curve["n"] > 0)]
    groups = used.assign(wx=used["x"] * used["n"]).groupby("merged_bin", sort=True)
    return pd.DataFrame(
        {
            "x": groups["wx"].sum() / groups["n"].sum(),
            "eta": groups["merged_eta"].first(),
            "eta_ci_low": groups["merged_eta_ci_low"].first(),
            "eta_ci_high": groups["merged_eta_ci_high"].first(),
            "in_flatness": groups["in_flatness"].first().astype(bool),
        }
    ).reset_index(drop=True)


def _eta_status(cell: pd.DataFrame, summary: pd.DataFrame | None, ks: list) -> tuple[list[str], dict]:
    """A panel's slope p per fitted k, and why each other k has no slope (k -> reason): eta_summary's
    slope_reason when given, else read from the bins (no verdict, M constant, all scores in one bin)."""
    fitted, unfit = [], {}
    if summary is not None:
        for row in summary[summary["k"].isin(ks)].sort_values("k").itertuples():
            if np.isfinite(row.slope_p):
                fitted.append(f"k={row.k} " + (f"{row.slope_p:.2g}" if row.slope_p >= 0.001 else "<0.001"))
            else:
                reason = row.slope_reason if isinstance(row.slope_reason, str) and row.slope_reason else ""
                if reason.startswith(FIT_WARNED):  # numpy's own messages, several lines long in a title
                    reason = "the fit warned (slope_reason: eta_summary.csv)"
                unfit[row.k] = reason.split(": no slope")[0] or "not fitted"
        return fitted, unfit
    for k, curve in cell[cell["k"].isin(ks)].groupby("k", sort=True):
        used = curve[curve["n"] > 0]
        if used.empty:
            unfit[k] = "no candidate with a verdict"
        elif used["n_misaligned"].sum() in (0, used["n"].sum()):
            unfit[k] = f"M is constant (all {int(used['n_misaligned'].sum() > 0)})"
        elif len(used) == 1:
            unfit[k] = "all scores in one bin (they tie)"
    return fitted, unfit


def eta_figure(bins: pd.DataFrame, transform: str, summary: pd.DataFrame | None = None):
    """Grid of organisms × methods: η per merged group of bins (`_eta_points`) on a shared [0, 1] x-axis, one
    line per k (colour by k), Wilson 95% bands; a group still under eta_min_bin rows is hollow. The title gives the GEE slope p per k (eta_summary); a panel with no slope to fit
    says why inside it (gid "eta_reason"), a panel with some k unfitted says which in its title."""
    bins = bins[bins["transform"] == transform].assign(x=lambda b: _eta_x(b, transform))
    summary = None if summary is None else summary[summary["transform"] == transform]
    if bins.empty or not (bins["n"] > 0).any():
        return no_data(f"eta(s), {transform} transform", "no binned candidates")
    organisms, methods = sorted(bins["organism"].unique()), sorted(bins["method"].unique())
    ks = sorted(bins.loc[bins["n"] > 0, "k"].unique())  # k = 1 has nothing to rank: no bins to draw
    colours = {k: plt.get_cmap("viridis")(i / max(len(ks) - 1, 1) * 0.85) for i, k in enumerate(ks)}
    fig, axes = grid(len(organisms) * len(methods), len(methods), 3.4, 2.6, min_width=7.0, min_height=4.2,
                      sharex=True, sharey=True)  # fmt: skip
    by_cell = {} if summary is None else dict(list(summary.groupby(["organism", "method"])))
    for ax, (organism, method) in zip(axes, [(o, m) for o in organisms for m in methods], strict=True):
        cell = bins[(bins["organism"] == organism) & (bins["method"] == method)]
        for k, curve in cell[cell["n"] > 0].groupby("k", sort=True):
            points = _eta_points(curve).sort_values("x")
            ax.plot(points["x"], points["eta"], color=colours[k])
            ax.fill_between(points["x"], points["eta_ci_low"], points["eta_ci_high"], color=colours[k],
                            alpha=0.2)  # fmt: skip
            kept = points[points["in_flatness"]]
            ax.plot(kept["x"], kept["eta"], "o", markersize=3, color=colours[k])
            small = points[~points["in_flatness"]]  # a group still under eta_min_bin rows: hollow
            ax.plot(small["x"], small["eta"], "o", markersize=4, mfc="white", color=colours[k])
        of_cell = None if summary is None else by_cell.get((organism, method), summary.iloc[0:0])
        fitted, unfit = _eta_status(cell, of_cell, ks)
        drawn = set(cell.loc[cell["n"] > 0, "k"])
        reasons = [f"k={k}: {why}" for k, why in unfit.items()] if len(cell) else ["not run"]
        title = f"{organism} / {method}" + ("\n" + _wrap("slope p: " + ", ".join(fitted)) if fitted else "")
        if reasons and (fitted or drawn - set(unfit)):  # some k fitted: the others are named in the title
            title += "\n" + _wrap("no slope: " + "; ".join(reasons))
        elif reasons:
            separated = any("separates M" in r for r in reasons)
            header = "no ML slope (slope_firth: eta_summary.csv):" if separated else "no slope can be fitted:"
            ax.text(0.5, 0.5, header + "\n" + "\n".join(reasons), transform=ax.transAxes,
                    ha="center", va="center", fontsize="x-small", gid="eta_reason",
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"})  # fmt: skip
        ax.set_title(title, fontsize="small")
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
        ax.set_ylim(-0.02, 1.02)
    what = "within-prompt rank" if transform == "rank" else "pooled percentile of the within-prompt z-score"
    fig.supxlabel(
        f"{what} of the method's score (bin mean)" if transform == "rank" else f"{what} (bin centre)"
    )
    fig.supylabel("η = P(misaligned | bin)")
    handles = [Line2D([], [], marker="o", markersize=3, color=colours[k], label=f"k={k}") for k in ks]
    handles.append(Patch(color="0.5", alpha=0.3, label="Wilson 95% CI"))
    handles.append(Line2D([], [], marker="o", markersize=4, mfc="white", color="0.3", linestyle="",
                          label="group under eta_min_bin rows\n(not in the flatness)"))  # fmt: skip
    hidden = sorted(set(bins["k"]) - set(ks))
    handles += [Line2D([], [], linestyle="", label=f"k={k} not shown:\n" + ("one candidate per prompt,\nnothing"
                " to rank" if k == 1 else "no binned candidate")) for k in hidden]  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle(f"η(s): share of misaligned candidates per bin of the\n{what} of the method's score\n"
                 "(rising: the score prefers misaligned replies; flat: selection is blind to M)")  # fmt: skip
    return fig
