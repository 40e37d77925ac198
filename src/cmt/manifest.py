"""Provenance recorded next to every per-row artefact (modelled on Inspect's eval spec)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("cmt", "torch", "transformers", "peft", "accelerate", "tokenizers", "pandas", "pyarrow", "numpy")


def git_revision() -> dict[str, Any]:
    """Commit and dirty flag of the checkout the cmt package was imported from, if any."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_inputs(paths: list[str | os.PathLike]) -> dict[str, str]:
    """sha256 of each input file; a directory contributes each file inside it."""
    hashes = {}
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            hashes[str(f)] = sha256_file(f)
    return hashes


def build_manifest(
    *, task: str, settings: dict, seeds: dict[str, int], inputs: list[str | os.PathLike] = (), **extra
) -> dict[str, Any]:
    return {
        "task": task,
        "git": git_revision(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "settings": settings,
        "seeds": seeds,
        "inputs_sha256": sha256_inputs(list(inputs)),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **extra,
    }
