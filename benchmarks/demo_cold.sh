#!/usr/bin/env bash
# Time the default toy grid (what `make demo` runs) from a cold start: no results/, base pretraining included.
# The venv must already exist: this measures the pipeline, not pip. Prints the wall time, then where the time
# went: jobs and summed job seconds per rule family (from Snakemake's benchmark files), and the startup share.
# Usage: benchmarks/demo_cold.sh [workdir] [configfile...]   (defaults: a fresh temporary directory,
# config/config.yaml; several config files merge as Snakemake merges them, e.g. config/config.yaml
# config/overrides/six_seeds.yaml)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
shift || true
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=("$repo/config/config.yaml")
mkdir -p "$work"
# The host's speed today on a fixed workload, before and after: it drifts more than most changes save.
"$repo/.venv/bin/python" "$repo/benchmarks/host_speed.py" | sed 's/^host_speed/host_speed_before/'
start=$(date +%s.%N)
PATH="$repo/.venv/bin:$PATH" "$repo/.venv/bin/snakemake" -s "$repo/Snakefile" --directory "$work" \
    --configfile "${configs[@]}" --replace-workflow-config --cores all >"$work/snakemake.out" 2>&1
end=$(date +%s.%N)
printf 'default_grid_cold_seconds %.1f\ncores %s\nworkdir %s\n' "$(echo "$end - $start" | bc)" "$(nproc)" "$work"
"$repo/.venv/bin/python" "$repo/benchmarks/host_speed.py" | sed 's/^host_speed/host_speed_after/'
# The machine's numeric path: timings and the toy world's models both depend on it (docs/toy-results.md).
"$repo/.venv/bin/python" -c 'import torch; from cmt.runtime.numerics import numeric_path; print("numerics", numeric_path())'
grep -E '^[0-9]+ of [0-9]+ steps' "$work/snakemake.out" | tail -n 1
# Job seconds per rule family (label_gst -> label): the first path component under results/benchmarks, split
# into fixed cost and work. Each job's log ends with `timing job_s= load_s= save_s= work_s=` (cmt.runtime.runlog):
# fixed = start-up (benchmark seconds - job_s: process start or fork, imports, argument parsing) + load + save.
"$repo/.venv/bin/python" - "$work/results/benchmarks" "$work/logs" <<'EOF'
import re
import sys
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

bench_dir, logs_dir = Path(sys.argv[1]), Path(sys.argv[2])
totals, counts = defaultdict(float), defaultdict(int)
for tsv in bench_dir.rglob("*.tsv"):
    rule = tsv.relative_to(bench_dir).parts[0]
    totals[rule] += float(tsv.read_text().splitlines()[-1].split("\t")[0])
    counts[rule] += 1
timing = defaultdict(lambda: defaultdict(float))
for log in logs_dir.rglob("*.log"):
    rule = log.relative_to(logs_dir).parts[0].removesuffix(".log")
    lines = re.findall(r" timing (.*)$", log.read_text(), re.M)
    if lines:  # the last attempt's line
        for key, value in (f.split("=") for f in lines[-1].split()):
            timing[rule][key] += float(value)
        timing[rule]["jobs"] += 1
# pretrain_base has no benchmark file (it is eligible for the between-workflow cache): its seconds come from
# the first and last timestamps of its job log, so its start-up is not counted.
for log in logs_dir.joinpath("pretrain_base").rglob("*.log"):
    stamps = [datetime.strptime(t, "%H:%M:%S") for t in re.findall(r"^(\d\d:\d\d:\d\d) ", log.read_text(), re.M)]
    if len(stamps) >= 2:
        totals["pretrain_base"] += (stamps[-1] - stamps[0]) % timedelta(days=1) / timedelta(seconds=1)
        counts["pretrain_base"] += 1
        timing["pretrain_base"]["job_s"] = totals["pretrain_base"]
print(f"{'rule family':<22}{'jobs':>6}{'job seconds':>13}{'start-up':>10}{'load':>8}{'save':>8}{'work':>9}"
      f"{'fixed %':>9}")
sums = defaultdict(float)
for rule in sorted(totals, key=totals.get, reverse=True):
    t = timing.get(rule, {})
    # start-up is known only when every job of the family logged its timing line
    startup = totals[rule] - t.get("job_s", 0.0) if t.get("jobs", 0) == counts[rule] else float("nan")
    fixed = startup + t.get("load_s", 0.0) + t.get("save_s", 0.0)
    work = totals[rule] - fixed
    share = 100 * fixed / totals[rule] if totals[rule] else float("nan")
    print(f"{rule:<22}{counts[rule]:>6}{totals[rule]:>13.1f}{startup:>10.1f}{t.get('load_s', 0.0):>8.1f}"
          f"{t.get('save_s', 0.0):>8.1f}{work:>9.1f}{share:>9.1f}")
    sums["jobs"] += counts[rule]
    sums["total"] += totals[rule]
    sums["fixed"] += fixed
print(f"{'total':<22}{int(sums['jobs']):>6}{sums['total']:>13.1f}{'':>35}{100 * sums['fixed'] / sums['total']:>9.1f}")
EOF
# What every model job pays before doing any work: starting Python and importing torch, transformers and peft.
import_s=$( { /usr/bin/time -f %e "$repo/.venv/bin/python" -c 'import torch, transformers, peft, cmt.cli' ; } 2>&1 | tail -n 1)
printf 'import_seconds_per_job %s (x the jobs above that load a model: the start-up share)\n' "$import_s"
head -n 3 "$work/results/tables/main.csv"
