"""The memory allocator of the jobs: tcmalloc, preloaded, where the machine has it.

PyTorch on a CPU allocates and frees many small tensors per step, and tcmalloc serves them faster than glibc's
malloc (docs/benchmarks.md). The allocator hands out memory and does no arithmetic: the same jobs write the same
bytes under both (tests/test_allocator.py checks a training run and a decode). The workflow sets LD_PRELOAD in the
jobs' shells and for the warm worker, decided on the machine that runs them (each Slurm job parses the Snakefile
on its node); it never loads tcmalloc into a running process, which would mix two allocators' memory.
"""

from __future__ import annotations

import ctypes.util
import os

SETTINGS = ("auto", "tcmalloc", "system")  # config key `allocator`; the first is the default
TCMALLOC = ("tcmalloc_minimal", "tcmalloc")  # gperftools' libraries, the minimal one (no profiler) first


class AllocatorError(RuntimeError):
    pass


def find_tcmalloc() -> str | None:
    """tcmalloc's shared library as the dynamic loader finds it (its soname, e.g. libtcmalloc_minimal.so.4), or
    None. Debian/Ubuntu: `apt install libtcmalloc-minimal4`; conda: `gperftools`."""
    for name in TCMALLOC:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def preload_library(setting: str, own_software: bool = False) -> str | None:
    """The library to preload for `setting`: `auto` tcmalloc where found, else None (the system allocator);
    `tcmalloc` tcmalloc or an AllocatorError; `system` None. `own_software`: the rules run in conda envs or
    containers, whose own libraries (a newer libstdc++, say) a host library could displace, so `auto` gives None.
    """
    if setting not in SETTINGS:
        raise AllocatorError(
            f"config key allocator: {setting!r} is not allowed; valid values: {list(SETTINGS)}"
        )
    if setting == "system" or (setting == "auto" and own_software):
        return None
    found = find_tcmalloc()
    if found is None and setting == "tcmalloc":
        raise AllocatorError(
            "config key allocator: tcmalloc, but no tcmalloc library was found (Debian/Ubuntu: apt install "
            "libtcmalloc-minimal4; conda: gperftools); set allocator: auto or system to run without it"
        )
    return found


def with_preload(env_value: str | None, library: str | None) -> str | None:
    """LD_PRELOAD with `library` first (once), keeping what was there; unchanged for None."""
    if library is None:
        return env_value
    parts = [p for p in (env_value or "").replace(" ", ":").split(":") if p]
    return ":".join([library, *[p for p in parts if p != library]])


def shell_export(library: str | None) -> str:
    """A shell statement that puts `library` first in LD_PRELOAD ("" for None); safe under `set -u`."""
    return f'export LD_PRELOAD="{library}${{LD_PRELOAD:+:$LD_PRELOAD}}"; ' if library else ""


def in_use() -> str:
    """The allocator this process runs on: `tcmalloc` when its library is mapped, else `system`."""
    try:
        with open(f"/proc/{os.getpid()}/maps") as fh:
            maps = fh.read()
    except OSError:
        return "unknown"
    return "tcmalloc" if "libtcmalloc" in maps else "system"
