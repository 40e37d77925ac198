"""What fewer eval prompts for the selecting methods' candidates (candidates_eval) would cost in resolution,
measured on a finished grid without rerunning it.

For each prompt count n, draws `--repeats` seeded sets of n eval prompts per organism and seed (as
`analysis.eta_prompts` would: each seed its own prompts), recomputes eta_summary.csv on their candidates
(`cmt.analysis.eta.eta_summary`, rank transform) and reports, per n: the median width of the eta slope's 95% CI,
the share of (organism, method, k) cells whose slope CI excludes 0, the share whose resolved sign agrees with the
full data's, and the median width of the selection effect's CI. candidates_eval's work scales with the prompts.

Usage: .venv/bin/python benchmarks/eta_size_ci.py RESULTS_DIR [--prompts 0 48 24] [--repeats 5]   (0: all)
"""

from __future__ import annotations

import argparse
import glob
import sys

import numpy as np
import pandas as pd

from cmt.analysis.eta import eta_summary, read_candidates


def subset(candidates: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if n <= 0:
        return candidates
    keep = []
    for _, group in candidates.groupby(["organism", "seed"]):
        ids = np.array(sorted(set(group["prompt_id"]), key=str), dtype=object)
        chosen = set(rng.choice(ids, size=min(n, len(ids)), replace=False))
        keep.append(group[group["prompt_id"].isin(chosen)])
    return pd.concat(keep, ignore_index=True)


def summarise(summary: pd.DataFrame, full: pd.DataFrame) -> dict:
    rank = summary[summary["transform"] == "rank"].set_index(["organism", "method", "k"])
    full_rank = full[full["transform"] == "rank"].set_index(["organism", "method", "k"])
    width = rank["slope_ci_high"] - rank["slope_ci_low"]
    resolved = (rank["slope_ci_low"] > 0) | (rank["slope_ci_high"] < 0)
    # The CI's side of 0, not the slope's sign: separated cells have a Firth CI and no plain slope.
    direction = np.sign(rank["slope_ci_low"] + rank["slope_ci_high"])
    full_direction = np.sign(full_rank["slope_ci_low"] + full_rank["slope_ci_high"]).reindex(rank.index)
    agrees = resolved & (direction == full_direction)
    effect = rank["selection_effect_ci_high"] - rank["selection_effect_ci_low"]
    return {
        "slope_ci_width": float(width.median()),
        "resolved": float(resolved.mean()),
        "resolved_same_sign": float(agrees.mean()),
        "selection_effect_ci_width_pp": float(100 * effect.median()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a finished grid's results/ directory")
    parser.add_argument("--prompts", type=int, nargs="+", default=[0, 48, 24])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-boot", type=int, default=500)
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(f"{args.results}/candidates/*/*/seed*/*/k*.parquet"))
    if not paths:
        print(f"no candidate files under {args.results}/candidates", file=sys.stderr)
        return 2
    candidates = read_candidates(paths)
    full = eta_summary(candidates, n_boot=args.n_boot, seed=0)
    print(
        f"{'prompts':>8} {'slope CI width':>15} {'resolved':>9} {'same sign':>10} {'sel. effect CI (pp)':>20}"
    )
    for n in args.prompts:
        rows = []
        for repeat in range(1 if n <= 0 else args.repeats):
            rng = np.random.default_rng(repeat)
            rows.append(summarise(eta_summary(subset(candidates, n, rng), n_boot=args.n_boot, seed=0), full))
        mean = pd.DataFrame(rows).mean()
        print(f"{n or 'all':>8} {mean['slope_ci_width']:>15.3f} {mean['resolved']:>9.2f}"
              f" {mean['resolved_same_sign']:>10.2f} {mean['selection_effect_ci_width_pp']:>20.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
