#!/usr/bin/env python
"""Time the paper grid's dry run, for the full grid and for half of it, and say how the time grows.

    benchmarks/dryrun_paper.py [--repeat 3] [--sizes quarter half full]

Runs, from the repository root, what a user types on the login node:

    snakemake -n --profile profiles/slurm -s Snakefile --configfile CONFIG --replace-workflow-config \
        results/tables/main.csv

with CONFIG = config/paper.yaml (full), or a copy of it with only the first half (or quarter) of the organisms.
The organisms multiply every other axis of the grid, so half of them is exactly half of the grid's cells (only
the seven model downloads stay). Prints the wall time (median of --repeat runs), the number of jobs Snakemake
lists, and the full/half ratios. The budget: the full dry run in at most 20 s on the CPU machine. The paper grid
gates its organisms (analysis.induction_gate, on_fail exclude), so a dry run plans the jobs up to the induction
checkpoints (444 jobs on 2026-12-04, against 3145 for the whole grid before the gate); the rest is planned as
each checkpoint's verdict arrives.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"
FRACTIONS = {"quarter": 0.25, "half": 0.5, "full": 1.0}


def grid_config(fraction: float, out_dir: Path) -> Path:
    """config/paper.yaml with the first `fraction` of its organisms (the full grid is the file itself)."""
    if fraction == 1.0:
        return PAPER
    config = yaml.safe_load(PAPER.read_text())
    organisms = list(config["organisms"])
    keep = organisms[: max(1, round(len(organisms) * fraction))]
    config["organisms"] = {name: config["organisms"][name] for name in keep}
    path = out_dir / f"paper_{len(keep)}_organisms.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cells(config_path: Path) -> int:
    """(model, organism, seed, method, k) cells, counted like targets.smk's runs() with per-model seeds."""
    config = yaml.safe_load(config_path.read_text())
    ks = 0
    for name, method in config["methods"].items():
        if "k" in method:  # a selecting method: its own k plus the k-scaling block's
            extra = config.get("kscaling", {}).get("ks", []) if name in config.get("kscaling", {}).get(
                "methods", []) else []  # fmt: skip
            ks += len({method["k"], *extra})
        else:
            ks += 1
    seeds = sum(len(spec.get("seeds") or config["seeds"]) for spec in config["models"].values())
    return seeds * len(config["organisms"]) * ks


def dry_run(config_path: Path, log_path: Path) -> tuple[float, int]:
    snakemake = Path(sys.executable).parent / "snakemake"
    cmd = [str(snakemake), "-n", "--profile", "profiles/slurm", "-s", "Snakefile", "--configfile",
           str(config_path), "--replace-workflow-config", "results/tables/main.csv"]  # fmt: skip
    # A dry run needs no API key; a placeholder keeps the timing comparable with earlier measurements.
    env = dict(os.environ)
    key_env = (yaml.safe_load(config_path.read_text()).get("judge") or {}).get("api_key_env")
    if key_env:
        env.setdefault(key_env, "unused-by-a-dry-run")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    log_path.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        sys.exit(f"dry run failed ({' '.join(cmd)}), exit {proc.returncode}; log {log_path}:\n{tail}")
    match = re.search(r"^total\s+(\d+)\s*$", proc.stdout + proc.stderr, flags=re.MULTILINE)
    if match is None:
        sys.exit(f"no job count ('total N') in the dry run's output; log {log_path}")
    return seconds, int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per grid; the median time is reported")
    parser.add_argument("--sizes", nargs="+", choices=list(FRACTIONS), default=["half", "full"])
    args = parser.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="dryrun_paper."))
    rows = {}
    for size in args.sizes:
        config_path = grid_config(FRACTIONS[size], out_dir)
        times, jobs = [], set()
        for i in range(args.repeat):
            seconds, n_jobs = dry_run(config_path, out_dir / f"{size}.{i}.log")
            times.append(seconds)
            jobs.add(n_jobs)
        if len(jobs) != 1:
            sys.exit(f"{size}: the job count changed between runs: {sorted(jobs)}")
        rows[size] = {"cells": cells(config_path), "jobs": jobs.pop(), "seconds": statistics.median(times),
                      "all": times}  # fmt: skip
    print(f"{'grid':8} {'cells':>7} {'jobs':>7} {'seconds':>9}   runs")
    for size, row in rows.items():
        runs = " ".join(f"{t:.1f}" for t in row["all"])
        print(f"{size:8} {row['cells']:7d} {row['jobs']:7d} {row['seconds']:9.1f}   {runs}")
    if "half" in rows and "full" in rows:
        half, full = rows["half"], rows["full"]
        print(
            f"full/half: jobs x{full['jobs'] / half['jobs']:.2f}, time x{full['seconds'] / half['seconds']:.2f}"
        )
    if "full" in rows:
        verdict = "within" if rows["full"]["seconds"] <= 20 else "OVER"
        print(f"full dry run {rows['full']['seconds']:.1f} s: {verdict} the 20 s budget")
    print(f"logs: {out_dir}")


if __name__ == "__main__":
    main()
