"""Shared test helpers (importable because pytest puts tests/ on sys.path)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(workdir: Path, *args: str, config: Path | None = None, check=True, timeout=900):
    """Run the real snakemake CLI on this repository's Snakefile in `workdir`."""
    config = config or REPO / "tests" / "configs" / "mini.yaml"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(bin_dir / "snakemake"),
        "-s", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config),
        "--replace-workflow-config",
        *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return proc
