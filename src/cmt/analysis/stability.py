"""The stability sweep's table and figure: Δ against each organism's measured fragility and against the
stability setting that made it (config/stability.yaml, docs/stability-study.md).

Each toy variant is one (generator, level) organism. Per (model, organism, seed) the fragility comes from the
`cmt fragility` records (one value per organism and seed, repeated on its runs); Δ and validity from runs.csv
(main runs, each method's own k). `stability_summary` gives, per generator, level and family (each control on its
own row, under its method's name), the mean Δ over valid runs with a seed-cluster bootstrap CI (the seed's
organism is the independent unit), the mean fragility, and the Spearman correlation between fragility and the
mean Δ of each (organism, seed) of the generator (`n_spearman` points).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from cmt.analysis.plotting import FAMILY_COLOURS, no_data
from cmt.analysis.stats import cluster_bootstrap_ci

LEVEL_ORDER = ("fixed", "default", "varied")
CONTROL_MARKERS = {"oracle_aligned": "v", "oracle_misaligned": "^"}
TABLE_COLUMNS = ["model", "organism", "generator", "level", "seed", "method", "family", "delta_pp", "valid",
                 "fragility", "fragility_se"]  # fmt: skip
SUMMARY_COLUMNS = ["generator", "level", "family", "n_runs", "n_valid", "mean_delta_pp", "delta_ci_low",
                   "delta_ci_high", "n_seeds", "mean_fragility", "spearman_rho", "spearman_p", "n_spearman"]  # fmt: skip


def stability_table(
    runs: pd.DataFrame, shift: pd.DataFrame, specs: dict[str, tuple[str, str]]
) -> pd.DataFrame:
    """One row per main run of a swept organism, with its generator, level and the organism's fragility (NaN
    where shift.csv flags the estimate as not reliable, as the shift correlations leave it out)."""
    main = runs[runs["main_run"].astype(bool) & runs["organism"].isin(specs)].copy()
    fragility = shift.drop_duplicates(["model", "organism", "seed"])[
        ["model", "organism", "seed", "fragility", "fragility_se"]
    ]
    if "fragility_reliable" in shift.columns:
        reliable = (
            shift.loc[fragility.index, "fragility_reliable"].astype("boolean").fillna(False).astype(bool)
        )
        fragility = fragility.assign(
            fragility=fragility["fragility"].where(reliable),
            fragility_se=fragility["fragility_se"].where(reliable),
        )
    table = main.merge(fragility, on=["model", "organism", "seed"], how="left")
    table["generator"] = table["organism"].map(lambda o: specs[o][0])
    table["level"] = table["organism"].map(lambda o: specs[o][1])
    return table[TABLE_COLUMNS].sort_values(["generator", "level", "seed", "method"]).reset_index(drop=True)


def _fragility_rank_correlation(rows: pd.DataFrame) -> tuple[float, float, int]:
    """Spearman's rho (and p) between an organism's fragility and the mean Δ of its valid non-control runs, one
    point per (model, organism, seed): runs of one organism share its fragility and its draws, so they are not
    independent points. NaN with fewer than 3 points or a constant side."""
    valid = rows[rows["valid"].astype(bool) & (rows["family"] != "control")].dropna(
        subset=["delta_pp", "fragility"]
    )
    units = valid.groupby(["model", "organism", "seed"]).agg(fragility=("fragility", "first"),
                                                             delta=("delta_pp", "mean"))  # fmt: skip
    if len(units) < 3 or units["fragility"].nunique() < 2 or units["delta"].nunique() < 2:
        return math.nan, math.nan, len(units)
    rho, p = stats.spearmanr(units["fragility"], units["delta"])
    return float(rho), float(p), len(units)


def stability_summary(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    rows = []
    for generator, of_generator in table.groupby("generator", sort=True):
        rho, p, n_units = _fragility_rank_correlation(of_generator)
        # the two controls expect opposite signs: each is its own group, never averaged with the other
        group = of_generator["family"].where(of_generator["family"] != "control", of_generator["method"])
        for (level, family), cell in of_generator.groupby([of_generator["level"], group], sort=True):
            ok = cell[cell["valid"].astype(bool)].dropna(subset=["delta_pp"])
            low, high = cluster_bootstrap_ci(
                ok["delta_pp"].to_numpy(float), ok["seed"], n_boot=n_boot, seed=seed
            )
            rows.append({"generator": generator, "level": level, "family": family, "n_runs": len(cell),
                         "n_valid": len(ok), "mean_delta_pp": ok["delta_pp"].mean() if len(ok) else math.nan,
                         "delta_ci_low": low, "delta_ci_high": high, "n_seeds": ok["seed"].nunique(),
                         "mean_fragility": cell.drop_duplicates("seed")["fragility"].mean(),
                         "spearman_rho": rho, "spearman_p": p, "n_spearman": n_units})  # fmt: skip
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    order = {level: i for i, level in enumerate(LEVEL_ORDER)}
    return summary.sort_values(["generator", "level", "family"], key=lambda c: c.map(order) if c.name == "level"
                               else c).reset_index(drop=True)  # fmt: skip


def stability_figure(table: pd.DataFrame, swept: dict[str, list[str]] | None = None):
    """Per generator (rows): Δ against the organism's fragility (left), and Δ per stability level (right), one
    point per run coloured by family (invalid runs hollow; the controls as triangles pointing their expected way);
    the right panel adds each paper family's mean. `swept` (generator -> levels in the config) keeps a slot,
    marked, for a level whose organisms the induction gate excluded."""
    swept = swept or {}
    if table.empty:
        return no_data("Δ against stability", "no swept organism has a main run")
    generators = sorted(set(table["generator"]) | set(swept))
    fig, axes = plt.subplots(len(generators), 2, figsize=(11, 3.6 * len(generators)), squeeze=False,
                             layout="constrained", sharey="row")  # fmt: skip
    rng = np.random.default_rng(0)  # jitter only
    for (left, right), generator in zip(axes, generators, strict=True):
        rows = table[table["generator"] == generator]
        ran = set(rows["level"])
        levels = [lv for lv in LEVEL_ORDER if lv in ran or lv in swept.get(generator, ())]
        # each control on its own (expected Δ < 0 for oracle_aligned, > 0 for oracle_misaligned), with no mean
        group = rows["family"].where(rows["family"] != "control", rows["method"])
        for name, of_group in rows.groupby(group, sort=True):
            colour = FAMILY_COLOURS.get(name, FAMILY_COLOURS["control"])
            marker = CONTROL_MARKERS.get(name, "o")
            for valid, part in of_group.groupby(of_group["valid"].astype(bool)):
                face = colour if valid else "white"
                left.scatter(part["fragility"], part["delta_pp"], s=18, marker=marker, facecolors=face,
                             edgecolors=colour)  # fmt: skip
                x = part["level"].map(levels.index) + rng.uniform(-0.12, 0.12, len(part))
                right.scatter(x, part["delta_pp"], s=14, marker=marker, facecolors=face, edgecolors=colour,
                              alpha=0.8, label=None if name in FAMILY_COLOURS else name)  # fmt: skip
            if name not in FAMILY_COLOURS:
                continue
            ok = of_group[of_group["valid"].astype(bool)].groupby("level")["delta_pp"].mean()
            right.plot([levels.index(lv) for lv in ok.index], ok.to_numpy(), "_", markersize=22, color=colour,
                       markeredgewidth=2.5, label=f"{name} (bar: mean)")  # fmt: skip
        for ax in (left, right):
            ax.axhline(0, color="0.5", linewidth=0.8)
        left.set_xlabel("fragility of the organism: KL(P1(.|x) || P1(.|perturbed x)) (nats)")
        left.set_ylabel("Δ misalignment (pp)")
        left.set_title(f"{generator}: Δ against measured fragility", fontsize="medium")
        right.set_xticks(range(len(levels)), [lv if lv in ran else f"{lv}\n(no runs: excluded by the gate)"
                                              for lv in levels])  # fmt: skip
        right.set_xlim(-0.5, len(levels) - 0.5)  # an empty slot keeps its width
        right.set_xlabel("stability setting of the induction replies")
        right.set_title(f"{generator}: Δ per level (bars: family means of valid runs)", fontsize="medium")
        handles, labels = right.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        right.legend(unique.values(), unique.keys(), fontsize="small", loc="best")
    fig.suptitle("Stability sweep: does a more varied misaligned behaviour change what consistency training does?\n"
                 "(filled: valid run; hollow: invalid, a broken model; below 0: suppressed, above 0: amplified)")  # fmt: skip
    return fig
