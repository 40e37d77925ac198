"""What a smaller eval split would cost in resolution, measured on a finished grid without rerunning it.

For each share f of the eval prompts, draws `--repeats` seeded subsets of f of each organism's eval prompts (the
same prompts for every stage and run, as `eval.size` would), recomputes runs.csv on them
(`cmt.analysis.runs.runs_table`) and reports, per share: the median width of the paired-bootstrap Delta CI of the main runs and of the controls, the share of
controls that still pass (significant in the expected direction and valid), and the share of main runs whose CI
excludes 0. Evaluation work scales with the number of prompts, so f is about the share of the evaluate and
candidates_eval job seconds that remain.

Usage: .venv/bin/python benchmarks/eval_size_ci.py RESULTS_DIR [--shares 1 0.5 0.25] [--repeats 10]
"""

from __future__ import annotations

import argparse
import glob
import sys

import numpy as np
import pandas as pd

from cmt.analysis.runs import read_evals, runs_table

CONTROL_SIGN = {"oracle_aligned": -1, "oracle_misaligned": 1}


def subset_prompts(evals: pd.DataFrame, share: float, rng: np.random.Generator) -> pd.DataFrame:
    """The rows of `share` of each organism's eval prompts, drawn without replacement; capability rows stay
    whole, because a size cut applies to the prompts M is measured on."""
    keep = []
    for _, group in evals.groupby("organism"):
        scored = group[group["metric_group"].fillna("") != "capability"]
        ids = np.array(sorted(set(scored["prompt_id"]), key=str), dtype=object)
        chosen = set(rng.choice(ids, size=max(2, round(share * len(ids))), replace=False))
        keep.append(group[group["prompt_id"].isin(chosen) | (group["metric_group"] == "capability")])
    return pd.concat(keep, ignore_index=True)


def summarise(runs: pd.DataFrame) -> dict:
    width = runs["delta_pp_ci_high"] - runs["delta_pp_ci_low"]
    controls = runs["method"].isin(CONTROL_SIGN)
    main = runs["main_run"].astype(bool) & ~controls
    sign = runs["method"].map(CONTROL_SIGN)
    passed = runs["valid"].astype(bool) & (
        ((sign < 0) & (runs["delta_pp_ci_high"] < 0)) | ((sign > 0) & (runs["delta_pp_ci_low"] > 0))
    )
    excludes_zero = (runs["delta_pp_ci_low"] > 0) | (runs["delta_pp_ci_high"] < 0)
    return {
        "main_ci_width_pp": float(width[main].median()),
        "control_ci_width_pp": float(width[controls].median()),
        "controls_passed": float(passed[controls].mean()),
        "main_ci_excludes_0": float(excludes_zero[main].mean()),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument(
        "--main-k", default="self_certainty=4,dual_decoding=4,self_rewarding=4,rejection_sampling=4"
    )
    args = parser.parse_args(argv)
    paths = [p for p in glob.glob(f"{args.results}/eval/**/*.parquet", recursive=True) if "harmful" not in p]
    evals = read_evals(sorted(paths))
    main_k = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in args.main_k.split(",")}
    full = evals[evals["metric_group"].fillna("") != "capability"].groupby("organism")["prompt_id"].nunique()
    print(f"eval prompts per organism: {full.to_dict()}")
    print(f"{'share':>5} {'repeats':>8} {'main CI width':>14} {'control CI width':>17} {'controls passed':>16} "
          f"{'main CI excl. 0':>16}")  # fmt: skip
    for share in args.shares:
        rng = np.random.default_rng(round(1000 * share))
        repeats = 1 if share >= 1 else args.repeats
        rows = []
        for _ in range(repeats):
            sub = evals if repeats == 1 else subset_prompts(evals, share, rng)
            rows.append(summarise(runs_table(sub, 0.2, None, args.n_boot, 0, main_k)))
        mean = pd.DataFrame(rows).mean()
        print(f"{share:>5} {repeats:>8} {mean['main_ci_width_pp']:>14.1f} {mean['control_ci_width_pp']:>17.1f} "
              f"{mean['controls_passed']:>16.3f} {mean['main_ci_excludes_0']:>16.3f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
