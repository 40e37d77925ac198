#!/usr/bin/env bash
# Time `make demo` from a cold start (no results/, base pretraining included) on this machine.
# The venv must already exist: this measures the pipeline, not pip.
# Usage: benchmarks/demo_cold.sh [workdir]   (default: a fresh temporary directory)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
start=$(date +%s.%N)
PATH="$repo/.venv/bin:$PATH" "$repo/.venv/bin/snakemake" -s "$repo/Snakefile" --directory "$work" \
    --configfile "$repo/config/config.yaml" --cores all results/tables/main.csv >"$work/snakemake.out" 2>&1
end=$(date +%s.%N)
printf 'demo_cold_seconds %.1f\ncores %s\nworkdir %s\n' "$(echo "$end - $start" | bc)" "$(nproc)" "$work"
for tsv in $(find "$work/results/benchmarks" -name '*.tsv' | sort); do
    printf '  %-70s %ss\n' "${tsv#"$work"/results/benchmarks/}" "$(tail -n 1 "$tsv" | cut -f1)"
done
cat "$work/results/tables/runs.csv"
