"""Figures from the tables in results/tables/, written as PNG and PDF (matplotlib, Agg backend, atomic writes).

Each figure states what it shows in its own title and legend, so a PNG read alone is not misleading:

- delta_by_method: per organism, every main run's delta (valid runs as grey dots, invalid ones as red crosses,
  runs without a Phase 3 as hollow diamonds on the zero line), each method's mean delta with its 95% CI
  coloured by family, and the controls' runs with their own CIs (runs.csv, methods.csv, controls.csv if given).
- eta_rank / eta_zscore: binned η(s) per (organism, method), one line per k, Wilson 95% bands, on a shared
  [0, 1] x-axis (the within-prompt rank, or the pooled percentile of the within-prompt z-score); a panel
  without a slope says why inside it (eta.csv, eta_summary.csv if given).
- kscaling: mean delta against k per selecting method with 95% CIs, methods dodged along x, GST as a
  reference band (kscaling.csv, methods.csv).
- delta_vs_shift: delta against each distribution-shift measure, organism by colour and method by marker
  (shift.csv); skipped when shift.csv is absent.

Deltas are in percentage points. A table without rows gives a figure that says so, not an empty axis.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from cmt.analysis.eta_figure import eta_figure
from cmt.analysis.plotting import FAMILY_COLOURS, grid, no_data, save_figure
from cmt.analysis.runs import family_of
from cmt.analysis.tables import CONTROL_SIGNS, controls_table
from cmt.methods.registry import FAMILIES, PAPER_FAMILIES

log = logging.getLogger(__name__)

RUN_COLOUR, INVALID_COLOUR = "0.55", "red"
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "*")
SHIFT_MEASURES = {
    "label_ce_token": "label cross-entropy under the organism (nats/token)",
    "kl_realised": "realised KL(P3 || P1) (nats/sequence)",
    "fragility": "fragility: KL(P1(.|x) || P1(.|perturbed x))",
}
REQUIRED_TABLES = ("runs.csv", "methods.csv", "eta.csv", "kscaling.csv")
# Legend labels, also read by the tests.
LABEL_VALID = "valid run"
LABEL_INVALID = "invalid run (broken model)"
LABEL_NO_DELTA = "no Phase 3 (no labels), drawn at 0"
LABEL_CONTROL = "control run ± 95% CI (filled: CI on the expected side)"
LABEL_UNRELIABLE = "KL estimate unreliable (hollow; left out of the correlations)"


def _flag(df: pd.DataFrame, column: str, default: bool) -> pd.Series:
    if column not in df.columns:
        return pd.Series(default, index=df.index, dtype=bool)
    return df[column].fillna(default).astype(bool)


def _yerr(centre, low, high):
    """Error-bar lengths from a CI, zero where the CI is missing."""
    centre, low, high = (np.asarray(v, dtype=float) for v in (centre, low, high))
    return np.nan_to_num(np.vstack([centre - low, high - centre]), nan=0.0).clip(min=0)


def _with_family(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its `family` column, from the method registry where the table has none."""
    return (
        table if "family" in table.columns else table.assign(family=[family_of(m) for m in table["method"]])
    )


def _run_marks(ax, x: float, runs: pd.DataFrame, control: bool) -> dict[str, int]:
    """One organism's main runs of one method, beside its mean at x (controls, which have no mean, at x):
    valid, invalid and no-delta runs, each with its own mark (gid: the mark's kind, for the tests) and each
    delta's own CI as a thin line. Returns the count of each kind."""
    if runs.empty:
        return {}
    xs = x + (0 if control else 0.25) + (np.linspace(-0.1, 0.1, len(runs)) if len(runs) > 1 else np.zeros(1))
    delta = runs["delta_pp"].to_numpy(dtype=float)
    has, valid = np.isfinite(delta), _flag(runs, "valid", True).to_numpy()
    colour = FAMILY_COLOURS["control"] if control else RUN_COLOUR
    if {"delta_pp_ci_low", "delta_pp_ci_high"} <= set(runs.columns):
        err = _yerr(delta, runs["delta_pp_ci_low"], runs["delta_pp_ci_high"])
        ax.errorbar(xs[has], delta[has], yerr=err[:, has], fmt="none", ecolor=colour,
                    elinewidth=0.8, alpha=0.6, zorder=1)  # fmt: skip
    ok = has & valid
    if control:
        passed = _flag(runs, "passed", False).to_numpy()
        for keep, face in ((ok & passed, colour), (ok & ~passed, "none")):
            ax.scatter(xs[keep], delta[keep], s=22, marker="D", facecolors=face, edgecolors=colour,
                       zorder=3, gid="control")  # fmt: skip
    else:
        ax.scatter(xs[ok], delta[ok], s=12, color=colour, zorder=3, gid="valid")
    ax.scatter(xs[has & ~valid], delta[has & ~valid], s=30, marker="x", color=INVALID_COLOUR, linewidths=1.3,
               zorder=4, gid="invalid")  # fmt: skip
    ax.scatter(xs[~has], np.zeros(int((~has).sum())), s=22, marker="D", facecolors="none", edgecolors="black",
               zorder=4, gid="no_delta")  # fmt: skip
    n_ok = {"control" if control else "valid": int(ok.sum())}
    return {**n_ok, "invalid": int((has & ~valid).sum()), "no_delta": int((~has).sum())}


def excluded_seeds(induction: pd.DataFrame | None) -> dict[str, list[int]]:
    """organism -> the seeds whose organism the induction gate left out: induction.csv's in_band false under
    on_fail exclude (without a gate, or with fail, no cell is left out)."""
    if induction is None or not len(induction):
        return {}
    outside = induction["in_band"].astype(str).str.lower() == "false"
    out = induction[outside & (induction["on_fail"] == "exclude")]
    return {o: sorted(int(s) for s in group["seed"]) for o, group in out.groupby("organism")}


def delta_by_method_figure(
    runs: pd.DataFrame,
    methods: pd.DataFrame,
    controls: pd.DataFrame | None = None,
    induction: pd.DataFrame | None = None,
):
    """Per organism: each main run's delta (valid, invalid, without Phase 3: each its own mark), each method's
    mean delta ± 95% CI coloured by family, and the control runs with their CIs (controls.csv when given,
    else the runs of family `control`). With `induction` (induction.csv), a panel names the seeds the gate left
    out, and an organism left out on every seed gets a panel that says so, rather than no panel."""
    runs = _with_family(runs)
    runs = runs[_flag(runs, "main_run", True)]
    if controls is None:
        control_runs = runs[runs["family"] == "control"]
        controls = controls_table(control_runs) if len(control_runs) else None
    paper_runs = runs[runs["family"].isin(PAPER_FAMILIES)]
    excluded = excluded_seeds(induction)
    organisms = sorted(set(methods["organism"]) | set(paper_runs["organism"]) | set(excluded))
    if not organisms:
        return no_data("delta by organism and method", "no main runs and methods.csv has no rows")
    width = 0.55 * max(len(set(paper_runs["method"]) | set(methods["method"])) + 2, 6)
    fig, axes = grid(len(organisms), 2, width, 4.2, min_width=11.0, sharey=True)
    counts = dict.fromkeys(("valid", "control", "invalid", "no_delta"), 0)
    for ax, organism in zip(axes, organisms, strict=True):
        of_runs = paper_runs[paper_runs["organism"] == organism]
        of_controls = methods.iloc[0:0] if controls is None else controls[controls["organism"] == organism]
        of_methods = methods[methods["organism"] == organism].set_index("method")
        left_out = ", ".join(str(seed) for seed in excluded.get(organism, []))
        if not len(of_runs) and not len(of_methods) and not len(of_controls):
            ax.set_xticks([])
            ax.text(0.5, 0.5, f"no runs: the induction gate left out\nthe organism on seed(s) {left_out}\n"
                    "(induction.csv says why)", transform=ax.transAxes, ha="center", va="center")  # fmt: skip
            ax.set_title(f"{organism}: excluded at the induction gate", fontsize="medium")
            ax.axhline(0, color="black", linewidth=0.8)
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel("Δ = M(Phase 3) − M(Phase 1) (pp)")
            continue
        family = {**dict(zip(of_runs["method"], of_runs["family"], strict=True)), **of_methods["family"]}
        names = sorted(family, key=lambda m: (FAMILIES.index(family[m]), m))
        names += sorted(set(of_controls["method"]), key=lambda m: (m not in CONTROL_SIGNS, m))
        n = dict.fromkeys(counts, 0)
        for x, method in enumerate(names):
            control = method in set(of_controls["method"])
            cell = of_controls if control else of_runs
            marked = _run_marks(ax, x, cell[cell["method"] == method], control)
            n = {key: n[key] + marked.get(key, 0) for key in n}
            if control or method not in of_methods.index:
                continue
            row = of_methods.loc[method]
            if np.isfinite(row["mean_delta_pp"]):
                err = _yerr(*([row[f"mean_delta_pp{end}"]] for end in ("", "_ci_low", "_ci_high")))
                ax.errorbar(x, row["mean_delta_pp"], yerr=err, fmt="o", markersize=6, capsize=3, zorder=2,
                            color=FAMILY_COLOURS.get(row["family"], "black"))  # fmt: skip
            else:
                ax.text(x, 0.98, "no mean\n(no valid delta)", transform=blended_transform_factory(ax.transData,
                        ax.transAxes), ha="center", va="top", fontsize="x-small", rotation=90)  # fmt: skip
        counts = {key: counts[key] + n[key] for key in counts}
        n_controls = len(set(of_controls["method"]))
        if 0 < n_controls < len(names):  # a dotted line between the methods and the controls
            ax.axvline(len(names) - n_controls - 0.5, color="0.7", linestyle=":")
        ax.axhline(0, color="black", linewidth=0.8)
        labels = [f"{m}\n(expect Δ{'<' if CONTROL_SIGNS.get(m, 0) < 0 else '>'}0)" if m in CONTROL_SIGNS else m
                  for m in names]  # fmt: skip
        ax.set_xticks(range(len(names)), labels, rotation=55, ha="right", rotation_mode="anchor",
                      fontsize="small")  # fmt: skip
        ax.set_xlim(-0.6, len(names) - 0.2)
        gate_note = f"\nseed(s) {left_out} excluded at the induction gate" if left_out else ""
        ax.set_title(f"{organism}: {sum(n.values())} main runs, {n['invalid']} invalid, "
                     f"{n['no_delta']} without Phase 3{gate_note}", fontsize="medium")  # fmt: skip
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("Δ = M(Phase 3) − M(Phase 1) (pp)")
    families = sorted(set(methods["family"]) & set(PAPER_FAMILIES), key=FAMILIES.index)
    handles = [Line2D([], [], marker="o", color=FAMILY_COLOURS[f], label=f"{f}: mean ± 95% CI")
               for f in families]  # fmt: skip
    handles += [
        Line2D([], [], marker="o", linestyle="", markersize=4, color=RUN_COLOUR,
               label=f"{LABEL_VALID} (thin line: its 95% CI), n = {counts['valid']}"),
        Line2D([], [], marker="x", linestyle="", color=INVALID_COLOUR,
               label=f"{LABEL_INVALID}, n = {counts['invalid']}"),
        Line2D([], [], marker="D", linestyle="", markerfacecolor="none", color="black",
               label=f"{LABEL_NO_DELTA}, n = {counts['no_delta']}"),
    ]  # fmt: skip
    if controls is not None and len(controls):
        label = f"{LABEL_CONTROL}, n = {counts['control']}"
        handles.append(Line2D([], [], marker="D", linestyle="", color=FAMILY_COLOURS["control"], label=label))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small")
    fig.suptitle("Δ misalignment after Phase 3, per organism and method (each method's own k; "
                 "below 0: suppressed, above 0: amplified)")  # fmt: skip
    return fig


def kscaling_figure(kscaling: pd.DataFrame, methods: pd.DataFrame, induction: pd.DataFrame | None = None):
    """Per organism: mean delta ± 95% CI against k per selecting method, each method dodged along x with its
    own colour and marker; GST's mean and CI as a band; a point that leaves out invalid runs is ringed. With
    `induction`, a panel names its seeds the induction gate left out, and the title the organisms left out on
    every seed."""
    if kscaling.empty:
        return no_data("delta against k", "kscaling.csv has no rows")
    organisms, names = sorted(kscaling["organism"].unique()), sorted(kscaling["method"].unique())
    excluded = excluded_seeds(induction)
    style = {m: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, m in enumerate(names)}
    fig, axes = grid(len(organisms), 2, 5.0, 3.6, sharey=True)
    ks = sorted(kscaling["k"].unique())
    ringed = False
    for ax, organism in zip(axes, organisms, strict=True):
        cell = kscaling[kscaling["organism"] == organism]
        for i, method in enumerate(names):
            curve = cell[cell["method"] == method].sort_values("k")
            x = curve["k"] * 2 ** (0.09 * (i - (len(names) - 1) / 2))
            err = _yerr(curve["mean_delta_pp"], curve["mean_delta_pp_ci_low"], curve["mean_delta_pp_ci_high"])
            colour, marker = style[method]
            ax.errorbar(
                x, curve["mean_delta_pp"], yerr=err, marker=marker, color=colour, capsize=2, markersize=5
            )
            invalid = curve.get("n_invalid", pd.Series(0, index=curve.index)).fillna(0).to_numpy() > 0
            ax.scatter(x[invalid], curve["mean_delta_pp"][invalid], s=110, facecolors="none", zorder=3,
                       edgecolors=INVALID_COLOUR, gid="invalid")  # fmt: skip
            ringed |= bool(invalid.any())
        gst = methods[(methods["organism"] == organism) & (methods["method"] == "gst")]
        if len(gst) and np.isfinite(gst["mean_delta_pp"].iloc[0]):
            row = gst.iloc[0]
            ax.axhline(row["mean_delta_pp"], color="black", linestyle="--", linewidth=1)
            if np.isfinite([row["mean_delta_pp_ci_low"], row["mean_delta_pp_ci_high"]]).all():
                ax.axhspan(
                    row["mean_delta_pp_ci_low"], row["mean_delta_pp_ci_high"], color="black", alpha=0.1
                )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlim(min(ks) / 1.5, max(ks) * 1.5)
        ax.set_xlabel("k (candidates per prompt; methods offset)")
        left_out = ", ".join(str(seed) for seed in excluded.get(organism, []))
        ax.set_title(
            f"{organism}\nseed(s) {left_out} excluded at the induction gate" if left_out else organism
        )
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("mean Δ = M(Phase 3) − M(Phase 1) (pp)")
    handles = [Line2D([], [], color=c, marker=mk, label=m) for m, (c, mk) in style.items()]
    handles.append(
        Patch(facecolor="0.9", edgecolor="black", linestyle="--", label="gst (greedy): mean, 95% CI")
    )
    if ringed:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markersize=9,
                              color=INVALID_COLOUR, label="mean leaves out invalid runs"))  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize="small")
    absent = sorted(set(excluded) - set(organisms))
    note = f"\n(excluded at the induction gate on every seed: {', '.join(absent)})" if absent else ""
    fig.suptitle(f"Mean Δ misalignment (pp, 95% cluster-bootstrap CI) against k, per selecting method{note}")
    return fig


def delta_vs_shift_figure(shift: pd.DataFrame):
    """One panel per shift measure: each main run's delta (pp) against the measure (valid runs, plus invalid ones
    crossed out in red; no control), organism by colour, method by marker. shift_correlations counts the runs of
    a run-level measure and, for fragility, each organism once."""
    _require_columns(shift, ["organism", "method", "delta_pp"], "shift.csv")
    shift = shift[_flag(shift, "main_run", True)]
    shift = shift[[family_of(m) != "control" for m in shift["method"]]]
    measures = [m for m in SHIFT_MEASURES if m in shift.columns]
    if not measures:
        return no_data("delta against distribution shift", f"shift.csv has none of {list(SHIFT_MEASURES)}")
    organisms, names = sorted(shift["organism"].unique()), sorted(shift["method"].unique())
    colours = {o: f"C{i % 10}" for i, o in enumerate(organisms)}
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(names)}
    fig, axes = grid(len(measures), 3, 4.2, 3.6, sharey=True)
    invalid_any = unreliable_any = False
    for ax, measure in zip(axes, measures, strict=True):
        points = shift[shift[measure].notna() & shift["delta_pp"].notna()]
        reliable = _flag(points, f"{measure}_reliable", True)
        for (organism, method), group in points.groupby(["organism", "method"], sort=True):
            solid = reliable.loc[group.index]
            ax.scatter(group.loc[solid, measure], group.loc[solid, "delta_pp"], s=18, color=colours[organism],
                       marker=markers[method], alpha=0.8)  # fmt: skip
            ax.scatter(group.loc[~solid, measure], group.loc[~solid, "delta_pp"], s=18, facecolors="none",
                       edgecolors=colours[organism], marker=markers[method], gid="unreliable")  # fmt: skip
        unreliable_any |= bool((~reliable).any())
        invalid = points[~_flag(points, "valid", True)]
        ax.scatter(
            invalid[measure], invalid["delta_pp"], s=60, marker="x", color=INVALID_COLOUR, gid="invalid"
        )
        invalid_any |= len(invalid) > 0
        ax.axhline(0, color="black", linewidth=0.8)
        if points.empty:
            ax.set_xticks([])
            ax.text(0.5, 0.5, "no runs measured", ha="center", va="center", transform=ax.transAxes,
                    bbox={"facecolor": "white", "edgecolor": "0.6"})  # fmt: skip
        ax.set_xlabel(SHIFT_MEASURES[measure])
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("Δ = M(Phase 3) − M(Phase 1) (pp)")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=o) for o, c in colours.items()]
    fig.legend(handles=handles, title="organism (colour)", loc="outside right upper", fontsize="small")
    handles = [Line2D([], [], marker=mk, linestyle="", color="0.3", label=m) for m, mk in markers.items()]
    if invalid_any:
        handles.append(Line2D([], [], marker="x", linestyle="", color=INVALID_COLOUR, label=LABEL_INVALID))
    if unreliable_any:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.3",
                              label=LABEL_UNRELIABLE))  # fmt: skip
    fig.legend(handles=handles, title="method (marker)", loc="outside right lower", fontsize="small")
    fig.suptitle("Δ misalignment (pp) of each main run against measures of distribution shift")
    return fig


def _require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def _optional(path: Path, columns: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    _require_columns(table, columns, str(path))
    return table


def make_figures(tables_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Read the tables in `tables_dir` and write every figure to `out_dir`; return the written paths.

    runs.csv, methods.csv, eta.csv and kscaling.csv are required. Optional: controls.csv (else the controls
    come from runs.csv), induction.csv (the cells the gate left out, named in the Δ and k figures),
    eta_summary.csv (the reason a panel has no slope; else read from the bins) and shift.csv (its figure is
    skipped, with a logged note, when it is absent).
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    missing = [name for name in REQUIRED_TABLES if not (tables_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{tables_dir}: missing table(s) {missing} needed for the figures")
    runs, methods, bins, kscaling = (pd.read_csv(tables_dir / name) for name in REQUIRED_TABLES)
    _require_columns(runs, ["organism", "method", "k", "delta_pp"], str(tables_dir / "runs.csv"))
    _require_columns(methods, ["organism", "method", "family", "k", "mean_delta_pp", "mean_delta_pp_ci_low",
                               "mean_delta_pp_ci_high"], str(tables_dir / "methods.csv"))  # fmt: skip
    _require_columns(bins, ["organism", "method", "k", "transform", "bin", "n", "n_misaligned", "eta",
                            "eta_ci_low", "eta_ci_high", "score_mean"], str(tables_dir / "eta.csv"))  # fmt: skip
    _require_columns(kscaling, ["organism", "method", "k", "mean_delta_pp", "mean_delta_pp_ci_low",
                                "mean_delta_pp_ci_high"], str(tables_dir / "kscaling.csv"))  # fmt: skip
    controls = _optional(tables_dir / "controls.csv", ["organism", "method", "delta_pp", "delta_pp_ci_low",
                                                       "delta_pp_ci_high", "valid", "passed"])  # fmt: skip
    summary = _optional(tables_dir / "eta_summary.csv", ["organism", "method", "k", "transform", "slope",
                                                        "slope_p", "slope_reason"])  # fmt: skip
    induction = _optional(tables_dir / "induction.csv", ["organism", "seed", "in_band", "on_fail"])
    written = save_figure(
        delta_by_method_figure(runs, methods, controls, induction), out_dir / "delta_by_method"
    )
    for transform in ("rank", "zscore"):
        written += save_figure(eta_figure(bins, transform, summary), out_dir / f"eta_{transform}")
    written += save_figure(kscaling_figure(kscaling, methods, induction), out_dir / "kscaling")
    shift_path = tables_dir / "shift.csv"
    if shift_path.is_file():
        written += save_figure(delta_vs_shift_figure(pd.read_csv(shift_path)), out_dir / "delta_vs_shift")
    else:
        log.warning("no %s: skipping the delta-against-shift figure", shift_path)
    return written
