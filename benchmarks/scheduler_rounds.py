"""Snakemake's scheduling rounds and its own CPU time on a workflow of short jobs, with Snakemake's re-evaluation
timers as they are and with cmt.runtime.scheduler_timer installed (docs/benchmarks.md).

Usage: benchmarks/scheduler_rounds.py [--jobs 200] [--sleep 0.4] [--cores 2]
Prints one JSON line per mode: rounds (job_selector calls), the Snakemake process's CPU seconds (its own, not
the jobs'), and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Run in a fresh interpreter per mode: the replacement is process-wide.
RUN = """
import json, resource, sys, time
from snakemake.scheduling import job_scheduler
rounds = []
selector = job_scheduler.JobScheduler.job_selector
def counting_selector(self, jobs):
    rounds.append(time.monotonic())
    return selector(self, jobs)
job_scheduler.JobScheduler.job_selector = counting_selector
mode, snakefile, workdir, cores = sys.argv[1:5]
if mode == "install":
    from cmt.runtime import scheduler_timer
    assert scheduler_timer.install()
from snakemake.cli import main
start = time.monotonic()
try:
    main(["--cores", cores, "--quiet", "all", "--snakefile", snakefile, "--directory", workdir])
except SystemExit as exit:
    assert not exit.code, exit.code
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"mode": mode, "rounds": len(rounds), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
                  "wall_seconds": round(time.monotonic() - start, 2),
                  "round_span_seconds": round(rounds[-1] - rounds[0], 2)}))
"""

SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))
rule one:
    output: "out/{{i}}.txt"
    shell: "sleep {sleep}; echo {{wildcards.i}} > {{output}}"
"""


def run(mode: str, jobs: int, sleep: float, cores: int, root: Path) -> dict:
    workdir = root / mode
    workdir.mkdir()
    snakefile = root / "Snakefile"
    snakefile.write_text(SNAKEFILE.format(jobs=jobs, sleep=sleep))
    done = subprocess.run(
        [sys.executable, "-c", RUN, mode, str(snakefile), str(workdir), str(cores)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"snakemake ({mode}) failed:\n{done.stderr[-3000:]}")
    written = len(list((workdir / "out").glob("*.txt")))
    if written != jobs:
        raise SystemExit(f"snakemake ({mode}) wrote {written} of {jobs} outputs")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.4, help="seconds each job sleeps")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("stock", "install"):
            results.append(run(mode, args.jobs, args.sleep, args.cores, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
