"""Shared test helpers (importable because pytest puts tests/ on sys.path)."""

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a test's copy of the workflow leaves out: venvs (CI builds .venv-vllm while tests run, so
# files vanish under copytree), VCS data, run outputs and caches.
REPO_COPY_IGNORED = (".venv*", ".git", "results", "resources", "logs", ".snakemake", "__pycache__", ".*_cache", ".hypothesis")  # fmt: skip


def _default_sigint():
    # Snakemake cancels its cluster jobs on SIGINT; a child of a shell that ignores SIGINT (a
    # background job in a non-interactive script) would inherit the ignore, so restore the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_snakemake(
    workdir: Path,
    *args: str,
    config: Path | None = None,
    check=True,
    timeout=900,
    profiles: Sequence[Path] = (),
    snakefile: Path | None = None,
    env: dict[str, str] | None = None,
):
    """Run the real snakemake CLI on this repository's Snakefile in `workdir`.

    `profiles` are passed as `--profile` in order (later ones override whole top-level keys). On
    timeout Snakemake gets SIGINT, which cancels its Slurm jobs and leaves no lock; never SIGKILL,
    which would leave both behind.
    """
    config = config or REPO / "tests" / "configs" / "mini.yaml"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **(env or {}), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(bin_dir / "snakemake"),
        "-s", str(snakefile or REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config),
        "--replace-workflow-config",
        *[arg for profile in profiles for arg in ("--profile", str(profile))],
        *args,
    ]  # fmt: skip
    popen = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.send_signal(signal.SIGINT)
        try:
            stdout, stderr = popen.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"snakemake ran past {timeout} s and was still running 120 s after SIGINT (pid {popen.pid})"
            ) from None
        raise AssertionError(
            f"snakemake ran past {timeout} s and was stopped with SIGINT:\n{stdout[-5000:]}\n{stderr[-5000:]}"
        ) from None
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def wait_for_socket(proc: subprocess.Popen, path: str, timeout: float = 120) -> None:
    """Wait until the warm worker `proc` listens on `path` (it binds only once its imports are done)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, f"the warm worker did not start ({path})"
        time.sleep(0.1)


def lock_within(handle, operation: int, seconds: float) -> bool:
    """fcntl.flock(handle, operation), tried every 2 s for up to `seconds`; False if the lock never came."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(2)
