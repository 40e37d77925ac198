"""Snakemake run by its path, with no activated venv: the jobs still find `cmt` (the Snakefile puts the directory
of the interpreter Snakemake runs in first on PATH); where that directory has no `cmt`, it stops at start."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, REPO_COPY_IGNORED


def test_snakemake_by_its_path_runs_a_job_without_the_venv_on_path(tmp_path):
    snakemake = Path(sys.executable).parent / "snakemake"
    bare_path = "/usr/bin:/bin"
    assert shutil.which("cmt", path=bare_path) is None  # otherwise this test would prove nothing
    work = tmp_path / "cmt"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(*REPO_COPY_IGNORED))
    env = {**os.environ, "PATH": bare_path}
    cmd = [str(snakemake), "--cores", "1", "results/data/toy/corpus.jsonl"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "command not found" not in output
    assert (work / "results/data/toy/corpus.jsonl").stat().st_size > 0


def test_without_cmt_beside_the_interpreter_snakemake_stops_at_start_with_one_line(tmp_path):
    """An environment whose bin/ has no `cmt` (here: this venv's packages behind a bare bin/) stops before any job,
    with one line saying what to do, never half-way with `cmt: command not found`."""
    venv = Path(sys.prefix)
    if not (venv / "pyvenv.cfg").is_file():
        pytest.skip("the tests do not run in a venv")
    env_dir = tmp_path / "env"
    (env_dir / "bin").mkdir(parents=True)
    shutil.copy(venv / "pyvenv.cfg", env_dir)
    (env_dir / "lib").symlink_to(venv / "lib")
    (env_dir / "bin" / "python").symlink_to(Path(sys.executable).resolve())
    cmd = [str(env_dir / "bin" / "python"), "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    (line,) = (proc.stdout + proc.stderr).strip().splitlines()
    assert "cmt is not installed" in line and "make venv" in line
