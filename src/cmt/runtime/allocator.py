"""The memory allocator of the jobs: tcmalloc, preloaded, where the machine has it.

PyTorch on a CPU allocates and frees many small tensors per step. Under tcmalloc a toy Phase-3 step took about 15%
less time than under glibc's malloc, and greedy decoding about 10% less (docs/benchmarks.md). The allocator
hands out memory; it does no arithmetic, and the jobs checked under both wrote the same bytes (tests/test_allocator.py
checks a training run and a decode). The workflow sets LD_PRELOAD for the processes it starts (jobs, the warm
worker); it never loads tcmalloc into a running process, which would mix two allocators' memory.
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


def preload_library(setting: str) -> str | None:
    """The library to preload for `setting`: `auto` tcmalloc where found, else None (the system allocator);
    `tcmalloc` tcmalloc or an AllocatorError; `system` None."""
    if setting not in SETTINGS:
        raise AllocatorError(
            f"config key allocator: {setting!r} is not allowed; valid values: {list(SETTINGS)}"
        )
    if setting == "system":
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
    parts = [p for p in (env_value or "").replace(" ", ":").split(":") if p]
    if library is None:
        return env_value
    return ":".join([library, *[p for p in parts if p != library]])


def preload_for_children(environ, setting: str) -> str | None:
    """Put the library for `setting` into `environ`'s LD_PRELOAD (os.environ: every process started after this
    gets it; this one keeps its allocator). Returns the library, or None for the system allocator."""
    library = preload_library(setting)
    if library:
        environ["LD_PRELOAD"] = with_preload(environ.get("LD_PRELOAD"), library)
    return library


def in_use() -> str:
    """The allocator this process runs on: `tcmalloc` when its library is mapped, else `system`."""
    try:
        with open(f"/proc/{os.getpid()}/maps") as fh:
            maps = fh.read()
    except OSError:
        return "unknown"
    return "tcmalloc" if "libtcmalloc" in maps else "system"
