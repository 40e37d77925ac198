"""Load: more than 200 small jobs of the toy world through the real single-node Slurm (slow; `make test-slow`).

The grid is tests/configs/mini.yaml cut to one organism and the gst baseline, with many seeds and tiny sizes, on
the CPU partition (`gpus: 0`), so every seed adds its own induce, label, retrain, evaluate and shift jobs. The
test checks that every job went through sbatch and completed and that no output is missing, and prints how long
Slurm took to start each job after its submission (from squeue's submit and start times, polled during the run
while MinJobAge keeps finished jobs listed).
"""

from __future__ import annotations

import statistics
import subprocess
import threading
from datetime import datetime

import pytest
import yaml
from helpers import REPO
from test_slurm import PROFILES, TARGET, ok, queue, slurm_cluster, snakemake  # noqa: F401 - slurm_cluster: fixture

SEEDS = 34  # about six cluster jobs per seed: 205 jobs
MIN_JOBS = 200


def load_config(path):
    config = yaml.safe_load((REPO / "tests" / "configs" / "mini.yaml").read_text())
    config["seeds"] = list(range(SEEDS))
    config["organisms"] = {"sycophancy": {"source": "toy"}}
    config["methods"] = {"gst": {}}
    config["models"]["toy"]["gpus"] = 0
    config["models"]["toy"]["phase1"]["epochs"] = 2
    config["models"]["toy"]["phase3"]["epochs"] = 1
    toy = config["toy"]
    toy["sizes"] = {"induction": 32, "consistency": 16, "act_bct": 8, "eval": 8}
    toy["corpus"] = {"sycophancy": 300}
    toy["harmful"] = {"corpus": 40, "eval": 8}
    toy["model"].update(hidden_size=32, intermediate_size=64, num_layers=1)
    toy["pretrain"].update(epochs=1, min_heldout_accuracy=0.0)  # scheduling is under test, not the base model
    config["analysis"]["n_boot"] = 100
    config["analysis"]["shift"] = {"m": 1, "size": 4, "splits": ["eval"]}
    path.write_text(yaml.safe_dump(config))
    return path


class QueuePoller(threading.Thread):
    """Polls squeue for the run's jobs and keeps each job's submit and start times."""

    def __init__(self, workdir):
        super().__init__(daemon=True)
        self.workdir = workdir
        self.times: dict[str, tuple[str, str, str]] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(5):
            out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%V|%S|%e|%T"],
                                 capture_output=True, text=True).stdout  # fmt: skip
            for line in out.splitlines():
                job, submitted, started, ended, state = line.strip().split("|")
                if state == "COMPLETED":
                    self.times[job] = (submitted, started, ended)


@pytest.mark.slow
@pytest.mark.integration
def test_two_hundred_jobs_through_slurm_all_complete(slurm_cluster, tmp_path):  # noqa: F811
    config = load_config(tmp_path / "load.yaml")
    workdir = tmp_path / "work"
    workdir.mkdir()
    planned = snakemake(workdir, config, 300, "-n", profiles=PROFILES)
    ok(planned)
    poller = QueuePoller(workdir)
    poller.start()
    try:
        run = snakemake(workdir, config, 3600)
    finally:
        poller.stop.set()
        poller.join()
    ok(run)
    assert (workdir / TARGET).is_file()
    submitted = {slurm_id: job for job, slurm_id, _ in run.submissions}
    assert len(submitted) >= MIN_JOBS, f"only {len(submitted)} Slurm jobs"
    assert len(run.submissions) == len(submitted)  # no job needed a retry
    # Every job slurmctld still lists completed (after MinJobAge, 3600 s here, it drops the oldest from squeue).
    states = {job["state"] for job in queue(run.run_id).values()}
    assert states <= {"COMPLETED"}, states
    # No output lost: a dry run finds nothing left to do.
    again = snakemake(workdir, config, 300, "-n", profiles=PROFILES)
    ok(again)
    assert "Nothing to be done" in again.log, again.log[-3000:]

    # Scheduling: submission to start per job, and the wall time beyond what the jobs themselves ran.
    def seconds(a, b):
        return (
            datetime.strptime(b, "%Y-%m-%dT%H:%M:%S") - datetime.strptime(a, "%Y-%m-%dT%H:%M:%S")
        ).total_seconds()

    seen = {job: times for job, times in poller.times.items() if job in submitted}
    assert len(seen) >= 0.9 * len(submitted)
    waits = [seconds(sub, started) for sub, started, _ in seen.values()]
    busy = sum(seconds(started, ended) for _, started, ended in seen.values())
    print(
        f"{len(submitted)} Slurm jobs in {run.seconds:.0f} s on 2 CPUs; jobs ran {busy:.0f} s in all, so "
        f"{(run.seconds - busy / 2) / len(submitted):.1f} s of wall time per job went to scheduling and polling; "
        f"submit-to-start median {statistics.median(waits):.0f} s, max {max(waits):.0f} s ({len(seen)} jobs)"
    )
