"""Provenance recorded next to every per-row artefact (modelled on Inspect's eval spec)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cmt.runtime.numerics import numeric_path
from cmt.runtime.runlog import timed

PACKAGES = ("cmt", "torch", "transformers", "peft", "accelerate", "tokenizers", "pandas", "pyarrow", "numpy")


def git_revision() -> dict[str, Any]:
    """Commit and dirty flag of the checkout the cmt package was imported from, if any."""
    return dict(_git_revision())


@functools.cache  # once per process: a job that writes several manifests runs from one checkout
def _git_revision() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    # Without LD_PRELOAD: a job runs on tcmalloc (cmt.runtime.allocator), which git needs not load (5 ms a call).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, env=env
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
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


def _files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def file_records(
    paths: Iterable[str | os.PathLike], relative_to: str | os.PathLike | None = None, exclude=()
) -> list[dict[str, str]]:
    """[{path, sha256}] for each file; a directory contributes each file inside it, in sorted order.

    Paths are recorded as given (relative ones resolve against the working directory), or relative to
    `relative_to` when it is set. Files in `exclude` (a manifest inside the directory it describes) are skipped.
    A missing path raises FileNotFoundError naming it: a manifest must not silently omit an input.
    """
    skip = {Path(e).resolve() for e in exclude}
    records = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p}: cannot hash a missing file for the manifest")
        for f in _files(p):
            if f.resolve() in skip:
                continue
            shown = os.path.relpath(f, relative_to) if relative_to is not None else str(f)
            records.append({"path": shown, "sha256": sha256_file(f)})
    return records


def sha256_inputs(paths: list[str | os.PathLike]) -> dict[str, str]:
    """{path: sha256} of each input file; a directory contributes each file inside it."""
    return {r["path"]: r["sha256"] for r in file_records(paths)}


@timed("save")
def record_outputs(
    manifest: dict, outputs: Iterable[str | os.PathLike], manifest_path: str | os.PathLike | None = None
) -> dict:
    """A copy of `manifest` with the sha256 of each output file (directories: each file inside).

    With `manifest_path`, output paths are stored relative to the manifest's directory (`outputs_base`
    "manifest_dir"), so that a directory hashed under a temporary name and then renamed into place
    (cmt.runtime.io.atomic_dir) still verifies; the manifest file itself is skipped. Otherwise they are stored as
    given (`outputs_base` "cwd"). `cmt verify` re-hashes them.
    """
    base = Path(manifest_path).parent if manifest_path is not None else None
    exclude = [manifest_path] if manifest_path is not None else []
    return {
        **manifest,
        "outputs_sha256": file_records(outputs, relative_to=base, exclude=exclude),
        "outputs_base": "manifest_dir" if base is not None else "cwd",
    }


@timed("save")
def build_manifest(
    *,
    task: str,
    settings: dict,
    seeds: dict[str, int],
    inputs: Iterable[str | os.PathLike] = (),
    outputs: Iterable[str | os.PathLike] | None = None,
    manifest_path: str | os.PathLike | None = None,
    **extra,
) -> dict[str, Any]:
    """Provenance of one artefact: code revision, packages, the machine's numeric path (cmt.runtime.numerics),
    settings, seeds, and `inputs_sha256`, a list of {path, sha256} for every input file (a directory such as an
    adapter: each file inside).

    `outputs` (optional) adds `outputs_sha256` for the files the manifest describes; pass `manifest_path`
    when they live next to the manifest (see record_outputs). `cmt verify DIR` re-hashes both lists.
    """
    manifest = {
        "task": task,
        "git": git_revision(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numerics": numeric_path(),
        "settings": settings,
        "seeds": seeds,
        "inputs_sha256": file_records(inputs),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **extra,
    }
    if outputs is not None:
        manifest = record_outputs(manifest, outputs, manifest_path)
    return manifest
