"""The warm worker (cmt.runtime.worker): jobs it forks behave like direct runs, and it steps aside when it must.

Signal forwarding, exit status and bit-identical training through the worker are covered by
test_checkpoint.py::test_cmt_induce_sigterm_resume_matches_uninterrupted[warm_worker]. Both use the session's one
worker (conftest.py), started early, while later tests import more and so add variables to the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for_socket

from cmt.runtime import worker

# A program for `cmt sandbox` that runs for a minute: a light job to kill.
SLOW = "import time\nfor _ in range(600):\n    time.sleep(0.1)\n"


def cmt(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != worker.ENV_VAR}
    full_env.update({"HF_HUB_OFFLINE": "1", **env})
    return subprocess.run([sys.executable, "-m", "cmt", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def toy_data_args(out: str) -> list[str]:
    settings = (
        '{"seed": 1, "max_operand": 30, "sizes": {"induction": 8, "consistency": 4, "act_bct": 4, "eval": 4},'
    )
    settings += ' "corpus": {"sycophancy": 20}, "skills": {"views": 0, "refinement": 0, "grading": 0}}'
    return ["toy-data", "--out", out, "--organisms", "sycophancy", "--settings", settings, "--log", "job.log"]


def test_a_job_through_the_worker_writes_what_a_direct_run_writes(warm_worker, tmp_path):
    _, path = warm_worker
    (tmp_path / "direct").mkdir()
    (tmp_path / "forked").mkdir()
    direct = cmt(toy_data_args("world"), tmp_path / "direct")
    forked = cmt(toy_data_args("world"), tmp_path / "forked", CMT_WORKER=path)
    assert direct.returncode == forked.returncode == 0, forked.stderr
    assert "runner=warm-worker" in (tmp_path / "forked" / "job.log").read_text()
    assert "runner=warm-worker" not in (tmp_path / "direct" / "job.log").read_text()
    files = sorted(
        p.relative_to(tmp_path / "direct") for p in (tmp_path / "direct" / "world").rglob("*.jsonl")
    )
    assert files
    for rel in files:
        assert (tmp_path / "forked" / rel).read_bytes() == (tmp_path / "direct" / rel).read_bytes()


def test_exit_status_and_standard_streams_come_back(warm_worker, tmp_path):
    _, path = warm_worker
    result = cmt(["data", "check", str(tmp_path / "missing"), "--job", "check"], tmp_path, CMT_WORKER=path)
    direct = cmt(["data", "check", str(tmp_path / "missing"), "--job", "check"], tmp_path)
    assert result.returncode == direct.returncode != 0
    assert result.stdout == direct.stdout

    def messages(text: str) -> list[str]:  # without timestamps and the header's runner field
        return [line[9:].replace(" runner=warm-worker", "") for line in text.splitlines()]

    assert messages(result.stderr) == messages(direct.stderr) and "runner=warm-worker" in result.stderr


def test_a_one_line_refusal_reaches_stderr_through_the_worker(warm_worker, tmp_path):
    """A command that stops with SystemExit("message") prints the message in a direct run (the interpreter
    does); a forked job must print it too, or a rule's failure would say nothing (seen: the induction gate)."""
    _, path = warm_worker
    result = cmt(["sandbox", str(tmp_path)], tmp_path, CMT_WORKER=path)
    direct = cmt(["sandbox", str(tmp_path)], tmp_path)
    assert result.returncode == direct.returncode == 1
    assert result.stderr == direct.stderr and "is a directory" in result.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
        {"SLURM_JOB_ID": "12"},
        {"HF_HUB_OFFLINE": "0"},
    ],
    ids=["import-time-variable", "slurm-job", "offline-flag"],
)
def test_a_job_the_worker_cannot_reproduce_runs_itself(warm_worker, tmp_path, env):
    _, path = warm_worker
    result = cmt(toy_data_args("world"), tmp_path, CMT_WORKER=path, CMT_WORKER_DEBUG="1", **env)
    assert result.returncode == 0, result.stderr
    assert "runner=warm-worker" not in (tmp_path / "job.log").read_text()


def test_snakemake_thread_counts_do_not_keep_a_job_from_the_worker(warm_worker, tmp_path):
    """Snakemake sets OMP_NUM_THREADS and friends per job; the forked job applies them instead."""
    _, path = warm_worker
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = cmt(toy_data_args("world"), tmp_path, CMT_WORKER=path, **env)
    assert result.returncode == 0, result.stderr
    assert "runner=warm-worker" in (tmp_path / "job.log").read_text()


def test_a_stale_socket_path_runs_the_job_itself(tmp_path):
    result = cmt(toy_data_args("world"), tmp_path, CMT_WORKER=str(tmp_path / "gone.sock"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "world" / "corpus.jsonl").is_file()


def forked_jobs(server_pid: int) -> set[int]:
    """Pids of the jobs under the server: its children's children."""
    children = subprocess.run(["pgrep", "-P", str(server_pid)], capture_output=True, text=True).stdout.split()
    jobs = set()
    for child in children:
        jobs |= {
            int(p)
            for p in subprocess.run(["pgrep", "-P", child], capture_output=True, text=True).stdout.split()
        }
    return jobs


def test_killing_the_client_kills_its_job(warm_worker, tmp_path):
    """SIGKILL leaves no handler to forward anything: the supervisor sees the connection close and kills the job."""
    proc, path = warm_worker
    (tmp_path / "slow.py").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if k != worker.ENV_VAR}
    client = subprocess.Popen(
        [sys.executable, "-m", "cmt", "sandbox", str(tmp_path / "slow.py"), "--timeout", "60"],
        env={**env, worker.ENV_VAR: path, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (jobs := forked_jobs(proc.pid)):
        assert time.monotonic() < deadline, "the job never appeared under the worker"
        time.sleep(0.05)
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
              for pid in jobs):  # fmt: skip
        assert time.monotonic() < deadline, f"jobs {jobs} outlived their killed client"
        time.sleep(0.05)


def test_a_worker_whose_parent_is_killed_exits_and_removes_its_folder(tmp_path):
    """A Snakemake killed outright runs no onerror hook: the worker sees its parent gone, stops, and leaves no
    folder in /tmp (seen: one cmt-worker-* folder per interrupted run). The server is told it sees a GPU, so it
    preloads nothing and starts fast."""
    folder = tmp_path / "cmt-worker-x"
    folder.mkdir()
    path = str(folder / "worker.sock")
    serve = "import sys, torch\ntorch.cuda.is_available = lambda: True\nfrom cmt.runtime import worker\n"
    serve += "worker.serve(sys.argv[1], entry=sys.argv[3], parent_pid=int(sys.argv[2]))\n"
    parent = "import os, signal, subprocess, sys, time\n"
    parent += "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], str(os.getpid()), 'cmt.cli:main'])\n"
    parent += "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.05)\n"
    parent += "os.kill(os.getpid(), signal.SIGKILL)\n"
    env = {k: v for k, v in os.environ.items() if k != worker.ENV_VAR}
    killed = subprocess.run([sys.executable, "-c", parent, serve, path], env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while folder.exists():
        assert time.monotonic() < deadline, f"{sorted(folder.iterdir())} outlived the worker's parent"
        time.sleep(0.1)


def test_a_variable_the_worker_imports_set_matches_a_client_that_has_that_value():
    """A client whose process imported the same libraries before it ran (pytest, a notebook) has the variables
    they set; the worker's identity was taken before its own imports set them."""
    own = {"prefix": "p", "version": "v", "env": {"HF_HUB_OFFLINE": "1"}}
    set_by_imports = {"TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor"}

    def client(**env) -> dict:
        return {"prefix": "p", "version": "v", "env": {"HF_HUB_OFFLINE": "1", **env}}

    assert worker.identity_differences(own, client(), set_by_imports) == []
    assert (
        worker.identity_differences(own, client(TORCHINDUCTOR_CACHE_DIR="/tmp/inductor"), set_by_imports)
        == []
    )
    assert worker.identity_differences(own, client(TORCHINDUCTOR_CACHE_DIR="/elsewhere"), set_by_imports) == [
        "env TORCHINDUCTOR_CACHE_DIR"
    ]
    assert worker.identity_differences(own, client(HF_HUB_OFFLINE="0"), set_by_imports) == [
        "env HF_HUB_OFFLINE"
    ]
    assert worker.identity_differences(own, {**client(), "version": "w"}, set_by_imports) == ["version"]


def test_fork_refusal_names_cuda_only_where_a_gpu_is_visible(monkeypatch):
    import torch

    assert (worker.fork_refusal() is None) == (not torch.cuda.is_available())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "CUDA does not survive fork" in worker.fork_refusal()


def test_on_a_gpu_machine_every_job_runs_itself(tmp_path):
    """A server that sees a GPU refuses every job: found on an H200, where bitsandbytes (imported by peft)
    initializes CUDA in the server and a forked `cmt induce` then failed at its first CUDA call."""
    path = str(tmp_path / "gpu.sock")
    serve = "import sys, torch\ntorch.cuda.is_available = lambda: True\nfrom cmt.runtime import worker\n"
    serve += "worker.serve(sys.argv[1], entry=sys.argv[3], parent_pid=int(sys.argv[2]))\n"
    env = {k: v for k, v in os.environ.items() if k != worker.ENV_VAR}
    server = subprocess.Popen([sys.executable, "-c", serve, path, str(os.getpid()), "cmt.cli:main"],
                              env={**env, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_socket(server, path)
        result = cmt(toy_data_args("world"), tmp_path, CMT_WORKER=path, CMT_WORKER_DEBUG="1")
    finally:
        server.terminate()
        server.wait()
    assert result.returncode == 0, result.stderr
    assert "warm worker not used: this machine has a CUDA GPU" in result.stderr
    assert "runner=warm-worker" not in (tmp_path / "job.log").read_text()
    assert (tmp_path / "world" / "corpus.jsonl").is_file()


def test_the_warm_up_leaves_threads_generator_and_streams_as_it_found_them(capfd):
    """The worker warms up before forking jobs (worker.WARM_UP): a job must start as from a fresh process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        state = torch.random.get_rng_state()
        capfd.readouterr()
        worker.resolve_entry(worker.WARM_UP)()
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.random.get_rng_state(), state)
        assert capfd.readouterr() == ("", "")
    finally:
        torch.set_num_threads(threads)
