"""The mini pipeline through a real single-node Slurm and the project's Slurm profile.

tests/slurm/start_slurm.sh installs Slurm with apt if needed and starts a one-node cluster with a `cpu`
and a `gpu` partition and one fake GPU. Snakemake runs with `--profile profiles/slurm` plus
tests/slurm/profile, which overrides only what this cluster needs (squeue instead of sacct, fast
polling, kept logs). The tests check that every cluster job went through sbatch, that the GPU rules got a
GPU in the gpu partition, that a job failing on purpose is retried, reported and fails the run, and that
the repaired workflow then completes by rerunning only the failed job. Two quick checks of the profile
itself (which rules it sends where, without Slurm) run everywhere.
"""

import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import REPO, lock_within, run_snakemake

SLURM_DIR = REPO / "tests" / "slurm"
PROFILES = (REPO / "profiles" / "slurm", SLURM_DIR / "profile")
TARGET = "results/tables/main.csv"
# The mini config runs gst: its rules, plus the per-organism ones. Each job asks for gpu=1 here.
GPU_RULES = {"induce", "label_gst", "retrain_gst", "evaluate", "evaluate_gst"}
CPU_RULES = {"pretrain_base"}
LOCAL_RULES = {"toy_data", "induction_report", "tables"}
# The test cluster lives in /etc/slurm and on fixed ports: one test session at a time on a machine.
LOCK = Path("/tmp/cmt-slurm-test.lock")
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def why_not_runnable():
    if os.geteuid() != 0:
        return "needs root: the test starts munged, slurmctld and slurmd"
    installed = all(shutil.which(cmd, path=SBIN_PATH) for cmd in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not installed and not shutil.which("apt-get", path=SBIN_PATH):
        return "Slurm is not installed and apt-get is not available to install it"
    return None


def slurm_cmd(*args):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def job_info(slurm_id):
    """`scontrol -d show job` as a dict (Partition, JobState, TimeLimit, TresPerJob, JOB_GRES, ...)."""
    out = slurm_cmd("scontrol", "-d", "show", "job", str(slurm_id))
    return dict(re.findall(r"(?:^|\s)([A-Za-z_/:]+)=(\S*)", out))


def minutes(time_limit):
    """Slurm's [D-]HH:MM:SS as minutes."""
    days, _, hms = time_limit.rpartition("-")
    h, m, _ = hms.split(":")
    return (int(days or 0) * 24 + int(h)) * 60 + int(m)


def queue(run_id):
    """Every job of a Snakemake run still known to slurmctld (finished ones too, for MinJobAge)."""
    out = slurm_cmd("squeue", "--states=all", "--noheader", f"--name={run_id}", "--format=%i|%P|%T|%k")
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {jobid: {"partition": p, "state": s, "comment": c} for jobid, p, s, c in rows}


class Run:
    """One Snakemake run, and what its log says about each job and where it ran."""

    def __init__(self, proc, seconds):
        self.proc = proc
        self.seconds = seconds
        self.log = proc.stdout + proc.stderr
        match = re.search(r"^SLURM run ID: (\S+)$", self.log, re.M)
        self.run_id = match and match[1]
        # Snakemake job id -> {"rule", "local", "resources"} from the "rule x:" / "localrule x:" blocks
        # (a retried job's later block replaces the earlier one).
        self.jobs = {}
        block = None
        for line in self.log.splitlines():
            if m := re.match(r"^(local)?(?:rule|checkpoint) (\w+):$", line):
                block = {"rule": m[2], "local": bool(m[1]), "resources": {}}
            elif block is not None and (m := re.match(r"^\s+(\w+): (.*)$", line)):
                if m[1] == "jobid":
                    self.jobs[int(m[2])] = block
                elif m[1] == "resources":
                    block["resources"] = dict(kv.split("=", 1) for kv in m[2].split(", "))
            else:
                block = None
        # (Snakemake job, Slurm job id, Slurm log) for every sbatch submission.
        self.submissions = [
            (self.jobs[int(job)], slurm_id, Path(log))
            for job, slurm_id, log in re.findall(
                r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", self.log, re.M
            )
        ]

    def rules(self, local):
        return Counter(job["rule"] for job in self.jobs.values() if job["local"] == local)

    def submitted_rules(self):
        return Counter(job["rule"] for job, _, _ in self.submissions)


def gpus(job):
    return int(job["resources"].get("gpu", 0))


def snakemake(workdir, config, timeout, *args, profiles=PROFILES):
    start = time.monotonic()
    proc = run_snakemake(
        workdir, *args, TARGET, config=config, check=False, timeout=timeout, profiles=profiles
    )
    return Run(proc, time.monotonic() - start)


def ok(run):
    assert run.proc.returncode == 0, f"snakemake failed:\n{run.log[-6000:]}"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    with LOCK.open("w") as lock:
        if not lock_within(lock, fcntl.LOCK_EX, 900):
            pytest.fail(f"another test session has held {LOCK} (the Slurm test cluster) for 15 min")
        state = tmp_path_factory.mktemp("slurm_state")
        env = {**os.environ, "CMT_SLURM_DIR": str(state)}
        try:
            start = time.monotonic()
            proc = subprocess.run(
                ["bash", str(SLURM_DIR / "start_slurm.sh")],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, f"start_slurm.sh failed:\n{proc.stdout}\n{proc.stderr}"
            yield {"state": state, "start_seconds": time.monotonic() - start}
        finally:
            subprocess.run(
                ["bash", str(SLURM_DIR / "stop_slurm.sh")],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )


def cap_corpus(toy, rows):
    """At most `rows` pretraining-corpus rows per organism (toy.corpus.<organism>, or toy.sizes.corpus)."""
    if isinstance(toy.get("corpus"), dict):
        toy["corpus"] = {organism: min(n, rows) for organism, n in toy["corpus"].items()}
    else:
        toy["sizes"]["corpus"] = min(toy["sizes"]["corpus"], rows)


@pytest.fixture(scope="module")
def slurm_config(tmp_path_factory):
    """tests/configs/mini.yaml, one cell of its grid, with a GPU per model.

    The GPU makes the GPU rules really ask Slurm for one. One cell (first organism, method and seed) runs
    every rule of the pipeline; more cells would only queue more jobs for the single fake GPU.
    """
    config = yaml.safe_load((REPO / "tests" / "configs" / "mini.yaml").read_text())
    for key in ("organisms", "methods"):
        first = next(iter(config[key]))
        config[key] = {first: config[key][first]}
    config["seeds"] = config["seeds"][:1]
    for spec in config["models"].values():
        spec["gpus"] = 1
    # This test is about scheduling, not learning: one epoch of every training, on a small corpus.
    models = config["models"].values()
    for train in [
        config["toy"]["pretrain"],
        *(spec[phase] for spec in models for phase in ("phase1", "phase3")),
    ]:
        train["epochs"] = 1
    config["toy"]["pretrain"]["min_heldout_accuracy"] = 0.0
    cap_corpus(config["toy"], 1500)
    path = tmp_path_factory.mktemp("slurm_config") / "mini_gpu.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, slurm_config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_run")
    run = snakemake(workdir, slurm_config, timeout=600)
    print(f"cluster start {slurm_cluster['start_seconds']:.1f} s, pipeline through Slurm {run.seconds:.1f} s")
    return {"workdir": workdir, "config": slurm_config, "run": run}


class FakeJob:
    """What the Slurm plugin's partition scoring reads from a job."""

    def __init__(self, name, threads, **resources):
        self.name, self.threads, self.resources = name, threads, resources


def test_the_partition_file_sends_gpu_jobs_to_gpu_and_cpu_jobs_to_cpu():
    """The plugin picks partitions from profiles/slurm/partitions.yaml; no rule names one."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    profile = yaml.safe_load((PROFILES[0] / "profile.yaml").read_text())
    assert "slurm_partition" not in profile["default-resources"] and "set-resources" not in profile
    partitions = read_partition_file(PROFILES[0] / profile["slurm-partition-config"])
    logger = logging.getLogger("test")
    gpu_job = FakeJob("label_gst", 1, gpu=1, cpus_per_gpu=1, mem_mb=32000, runtime=120)
    big_gpu_job = FakeJob("evaluate", 8, gpu=8, cpus_per_gpu=8, mem_mb=256000, runtime=60)
    cpu_job = FakeJob("pretrain_base", 2, mem_mb=4000, runtime=60)
    toy_job = FakeJob("retrain_gst", 1, gpu=0, mem_mb=8000, runtime=120)  # a gpus: 0 model
    assert get_best_partition(partitions, gpu_job, logger) == "gpu"
    assert get_best_partition(partitions, big_gpu_job, logger) == "gpu"
    assert get_best_partition(partitions, cpu_job, logger) == "cpu"
    assert get_best_partition(partitions, toy_job, logger) == "cpu"
    assert get_best_partition(partitions, FakeJob("x", 1, gpu=9), logger) is None  # fits nowhere


def test_the_profile_dry_run_gives_gpu_jobs_a_gpu_and_their_cpus(slurm_config, tmp_path):
    """What the profile asks of Slurm, read from a dry run: no Slurm needed."""
    run = snakemake(tmp_path, slurm_config, 300, "-n", "--cores", "2", profiles=PROFILES[:1])
    ok(run)
    jobs = {job["rule"]: job["resources"] for job in run.jobs.values()}  # a dry run prints no "localrule"
    assert set(jobs) >= GPU_RULES | CPU_RULES
    for rule, resources in jobs.items():
        if rule in GPU_RULES:
            assert resources["gpu"] == "1", (rule, resources)
            assert resources["cpus_per_gpu"].isdigit(), (rule, resources)
            assert resources["mem_mb"] == "32000", (rule, resources)
        if rule in CPU_RULES:
            assert "gpu" not in resources, (rule, resources)


@pytest.mark.integration
def test_every_cluster_job_went_through_sbatch(slurm_run):
    run, workdir = slurm_run["run"], slurm_run["workdir"]
    ok(run)
    assert (workdir / TARGET).is_file()
    assert run.run_id, "no 'SLURM run ID' in the log: did the slurm executor run?"
    # The light rules ran on the controller; every other job was submitted exactly once.
    assert set(run.rules(local=True)) >= LOCAL_RULES
    assert set(run.rules(local=False)) >= GPU_RULES | CPU_RULES
    assert run.submitted_rules() == run.rules(local=False)
    assert {id(job) for job, _, _ in run.submissions} == {
        id(job) for job in run.jobs.values() if not job["local"]
    }
    # Each submission left its Slurm log, named by the Slurm job id, and there is no other log.
    logdir = workdir / ".snakemake" / "slurm_logs"
    for job, slurm_id, log in run.submissions:
        assert log.is_file() and log.name == f"{slurm_id}.log"
        assert log.is_relative_to(logdir / f"rule_{job['rule']}")
        assert f"rule {job['rule']}:" in log.read_text()
    assert sorted(logdir.rglob("*.log")) == sorted(log for _, _, log in run.submissions)
    # slurmctld knows every one of them, under the run's name, as completed.
    jobs = queue(run.run_id)
    assert set(jobs) == {slurm_id for _, slurm_id, _ in run.submissions}
    for job, slurm_id, _ in run.submissions:
        assert jobs[slurm_id]["state"] == "COMPLETED"
        assert jobs[slurm_id]["comment"].startswith(f"rule_{job['rule']}")
    print(f"{len(run.submissions)} Slurm jobs {dict(run.submitted_rules())}, local {dict(run.rules(True))}")


@pytest.mark.integration
def test_gpu_rules_ran_in_the_gpu_partition_with_a_gpu(slurm_run):
    run = slurm_run["run"]
    ok(run)
    assert {job["rule"] for job, _, _ in run.submissions if gpus(job) == 1} >= GPU_RULES
    for job, slurm_id, _ in run.submissions:
        info = job_info(slurm_id)
        if gpus(job):
            assert info["Partition"] == "gpu", (job, info)
            assert info["TresPerJob"] == "gres:gpu:1", (job, info)  # sbatch --gpus=1
            assert info["JOB_GRES"] == "gpu:1", (job, info)  # and the GPU was allocated
        else:
            assert "gpu" not in info.get("TresPerJob", "") + info.get("JOB_GRES", ""), (job, info)
        if job["rule"] in CPU_RULES:
            assert info["Partition"] == "cpu", (job, info)


@pytest.mark.integration
def test_a_failed_job_is_retried_reported_and_rerun(slurm_run):
    workdir, config = slurm_run["workdir"], slurm_run["config"]
    ok(slurm_run["run"])
    # Break the input of exactly one job: the evaluation of a retrained adapter. Nothing else reads it.
    adapter = next((workdir / "results" / "retrained").rglob("adapter_config.json"))
    good = adapter.read_bytes()
    adapter.write_text("{ not json")

    failed = snakemake(workdir, config, timeout=300)
    assert failed.proc.returncode != 0, failed.log[-6000:]
    assert "Error in rule evaluate_gst:" in failed.log
    assert "Exiting because a job execution failed" in failed.log
    # retries: 1 in the profile: two attempts, the second with twice the wall time.
    assert failed.submitted_rules() == Counter({"evaluate_gst": 2}), failed.log[-6000:]
    (_, first, _), (_, second, _) = failed.submissions
    for slurm_id in (first, second):
        assert f"SLURM-job '{slurm_id}' failed" in failed.log
    assert {j["state"] for j in queue(failed.run_id).values()} == {"FAILED"}
    limits = [minutes(job_info(slurm_id)["TimeLimit"]) for slurm_id in (first, second)]
    assert limits[1] == 2 * limits[0], limits

    adapter.write_bytes(good)
    rerun = snakemake(workdir, config, timeout=300)
    ok(rerun)
    assert rerun.submitted_rules() == Counter({"evaluate_gst": 1})
    assert set(rerun.rules(local=True)) == {"tables"}
    assert (workdir / TARGET).is_file()
    print(f"failing run {failed.seconds:.1f} s, rerun {rerun.seconds:.1f} s")
