#!/usr/bin/env bash
# Time the default toy grid (what `make demo` runs) from a cold start: no results/, base pretraining included.
# The venv must already exist: this measures the pipeline, not pip. Prints the wall time, then where the time
# went: jobs and summed job seconds per rule family (from Snakemake's benchmark files), and the startup share.
# Usage: benchmarks/demo_cold.sh [workdir] [configfile]   (defaults: a fresh temporary directory, config/config.yaml)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
config="${2:-$repo/config/config.yaml}"
mkdir -p "$work"
start=$(date +%s.%N)
PATH="$repo/.venv/bin:$PATH" "$repo/.venv/bin/snakemake" -s "$repo/Snakefile" --directory "$work" \
    --configfile "$config" --replace-workflow-config --cores all >"$work/snakemake.out" 2>&1
end=$(date +%s.%N)
printf 'default_grid_cold_seconds %.1f\ncores %s\nworkdir %s\n' "$(echo "$end - $start" | bc)" "$(nproc)" "$work"
grep -E '^[0-9]+ of [0-9]+ steps' "$work/snakemake.out" | tail -n 1
# Job seconds per rule family (label_gst -> label): the first path component under results/benchmarks.
"$repo/.venv/bin/python" - "$work/results/benchmarks" <<'EOF'
import sys
from collections import defaultdict
from pathlib import Path

totals, counts = defaultdict(float), defaultdict(int)
for tsv in Path(sys.argv[1]).rglob("*.tsv"):
    rule = tsv.relative_to(sys.argv[1]).parts[0]
    totals[rule] += float(tsv.read_text().splitlines()[-1].split("\t")[0])
    counts[rule] += 1
# pretrain_base has no benchmark file (it is eligible for the between-workflow cache): its seconds come from
# the first and last timestamps of its job log.
import re
from datetime import datetime, timedelta

for log in Path(sys.argv[1]).parent.parent.joinpath("logs", "pretrain_base").glob("*.log"):
    stamps = [datetime.strptime(t, "%H:%M:%S") for t in re.findall(r"^(\d\d:\d\d:\d\d) ", log.read_text(), re.M)]
    if len(stamps) >= 2:
        totals["pretrain_base"] += (stamps[-1] - stamps[0]) % timedelta(days=1) / timedelta(seconds=1)
        counts["pretrain_base"] += 1
print(f"{'rule family':<22}{'jobs':>6}{'job seconds':>14}")
for rule in sorted(totals, key=totals.get, reverse=True):
    print(f"{rule:<22}{counts[rule]:>6}{totals[rule]:>14.1f}")
print(f"{'total':<22}{sum(counts.values()):>6}{sum(totals.values()):>14.1f}")
EOF
# What every model job pays before doing any work: starting Python and importing torch, transformers and peft.
import_s=$( { /usr/bin/time -f %e "$repo/.venv/bin/python" -c 'import torch, transformers, peft, cmt.cli' ; } 2>&1 | tail -n 1)
printf 'import_seconds_per_job %s (x the jobs above that load a model: the start-up share)\n' "$import_s"
head -n 3 "$work/results/tables/main.csv"
