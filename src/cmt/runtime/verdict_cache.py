"""Sandbox verdicts kept across jobs, by program text.

The same model-written program recurs across jobs: every retrained model, candidate draw and label set of an
organism writes mostly the same few programs per task, so on the default toy grid about one sandbox run in seven
is new (docs/benchmarks.md). A verdict whose status follows from the code alone (`ok`, `error`) is stored under
the SHA-256 of the code, its stdin, its limits, the interpreter and the isolation this machine gives; a timeout,
a resource limit or a sandbox failure may not recur, so it is never stored and the program runs again next time.
A program whose output varies from run to run (it reads the clock or draws random numbers) gets its first
verdict every time, which keeps a rerun's scores identical.

The folder comes from `cache_dir` or the environment variable CMT_SANDBOX_CACHE (the Snakefile sets it from the
config key `sandbox_cache`); with neither, every program runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from cmt.runtime.keyed_store import KeyedJsonStore
from cmt.runtime.sandbox import Verdict, mechanisms, run_python

log = logging.getLogger(__name__)

ENV_VAR = "CMT_SANDBOX_CACHE"
CACHE_VERSION = 1
STORED_STATUSES = ("ok", "error")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path | None:
    root = cache_dir if cache_dir is not None else os.environ.get(ENV_VAR)
    return Path(root) if root else None


def request_key(store: KeyedJsonStore, code: str, limits: dict) -> str:
    isolation = {name: value for name, value in mechanisms().items() if name != "unshare"}
    return store.key({"code": code, "limits": limits, "python": sys.version, "isolation": isolation})


def _jsonable(value):
    return {"bytes": value.hex()} if isinstance(value, bytes) else value


def run_python_cached(code: str, *, cache_dir: str | os.PathLike | None = None, **limits) -> Verdict:
    """`run_python(code, **limits)`, answered from the cache when this request's verdict is stored there."""
    root = cache_root(cache_dir)
    if root is None:
        return run_python(code, **limits)
    store = KeyedJsonStore(root, CACHE_VERSION, "sandbox verdict cache")
    key = request_key(store, code, {name: _jsonable(value) for name, value in limits.items()})
    entry = store.get(key)
    if entry is not None:
        try:
            verdict = Verdict(**entry["verdict"])
        except (KeyError, TypeError) as err:
            log.warning("ignoring malformed sandbox verdict cache entry %s (%s)", store.path(key), err)
        else:
            if verdict.status in STORED_STATUSES:
                return verdict
    verdict = run_python(code, **limits)
    if verdict.status in STORED_STATUSES:
        store.put(key, {"verdict": dataclasses.asdict(verdict)})
    return verdict
