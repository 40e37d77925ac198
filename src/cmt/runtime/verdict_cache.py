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
from collections.abc import Sequence
from pathlib import Path

from cmt.runtime.keyed_store import KeyedJsonStore
from cmt.runtime.sandbox import Verdict, mechanisms, run_python_batch

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
    return run_python_cached_batch([code], cache_dir=cache_dir, **limits)[0]


def run_python_cached_batch(
    codes: Sequence[str], *, cache_dir: str | os.PathLike | None = None, **limits
) -> list[Verdict]:
    """`run_python_batch` on the programs whose verdicts are not stored, each distinct one once; the verdicts of
    all `codes`, in order."""
    root = cache_root(cache_dir)
    store = KeyedJsonStore(root, CACHE_VERSION, "sandbox verdict cache") if root is not None else None
    found: dict[str, Verdict] = {}
    keys: dict[str, str] = {}
    if store is not None:
        jsonable_limits = {name: _jsonable(value) for name, value in limits.items()}
        for code in dict.fromkeys(codes):
            keys[code] = request_key(store, code, jsonable_limits)
            verdict = _stored(store, keys[code])
            if verdict is not None:
                found[code] = verdict
    missing = [code for code in dict.fromkeys(codes) if code not in found]
    for code, verdict in zip(missing, run_python_batch(missing, **limits), strict=True):
        if store is not None and verdict.status in STORED_STATUSES:
            store.put(keys[code], {"verdict": dataclasses.asdict(verdict)})
        found[code] = verdict
    return [found[code] for code in codes]


def _stored(store: KeyedJsonStore, key: str) -> Verdict | None:
    entry = store.get(key)
    if entry is None:
        return None
    try:
        verdict = Verdict(**entry["verdict"])
    except (KeyError, TypeError) as err:
        log.warning("ignoring malformed sandbox verdict cache entry %s (%s)", store.path(key), err)
        return None
    return verdict if verdict.status in STORED_STATUSES else None
