"""A content-addressed folder of small JSON entries, shared by concurrent jobs.

An entry lives at `<root>/<key[:2]>/<key>.json`, where the key is the SHA-256 of the request that produced it.
Several jobs (local or on a cluster's shared file system) may write the same key at once: each writes its own
temporary and renames it into place, so a reader sees a whole entry or none, and none removes another's
temporary. The judge's reply cache and the sandbox's verdict cache are two such stores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cmt.runtime.io import published_mode

log = logging.getLogger(__name__)


def content_key(version: int, payload: Mapping[str, Any]) -> str:
    blob = json.dumps({"v": version, **payload}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class KeyedJsonStore:
    """`get` and `put` JSON objects by key; `what` names the store in warnings."""

    def __init__(self, root: str | os.PathLike, version: int, what: str = "cache"):
        self.root = Path(root)
        self.version = version
        self.what = what

    def key(self, payload: Mapping[str, Any]) -> str:
        return content_key(self.version, payload)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The entry, or None when it is missing or unreadable (an unreadable one is logged and then rewritten)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable %s entry %s (%s)", self.what, path, err)
            return None
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(dict(entry), indent=2, sort_keys=True, default=str) + "\n")
            os.chmod(tmp, published_mode())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def entries(self) -> Iterator[Path]:
        return iter(sorted(self.root.glob("??/*.json")))
