"""Fetch a reference-format dataset by URL, verify sha256s, validate it, and install it into a folder.

Two source forms: `{url, sha256}`, one archive of the folder; or `{base_url, files: {name: sha256}}`, the six
loose files at `<base_url>/<name>`, each with its own hash (how the reference repository ships them).
Runs on the login node (rule fetch_dataset); compute jobs only read the installed folder. Nothing is left behind
on failure: downloads go to a temporary folder and the dataset folder appears by one rename.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from cmt.runtime.io import DataError, atomic_dir

log = logging.getLogger(__name__)

SPLIT_FILES = ("induction", "consistency", "act_bct_clean", "act_bct_wrapped", "eval")
DATASET_FILES = (*(f"{split}.jsonl" for split in SPLIT_FILES), "rubric.txt")
CHUNK = 1 << 20


class FetchError(RuntimeError):
    pass


def download(url: str, dest: Path, timeout: float = 60.0) -> str:
    """Stream `url` to `dest`; return the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except OSError as err:  # URLError, HTTPError and socket errors are all OSErrors
        raise FetchError(f"could not fetch {url}: {err}") from err
    return digest.hexdigest()


def _safe_members(names: list[str], archive: str) -> None:
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise FetchError(f"{archive}: member {name!r} would unpack outside the dataset folder")


def unpack(archive: Path, dest: Path, url: str) -> None:
    """Unpack a .tar(.gz/.bz2/.xz) or .zip archive into `dest`, refusing links and paths that escape it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _safe_members(zf.namelist(), url)
            zf.extractall(dest)
        return
    try:
        with tarfile.open(archive) as tf:
            _safe_members(tf.getnames(), url)
            tf.extractall(dest, filter="data")  # the stdlib's filter also refuses links and device files
    except tarfile.TarError as err:
        raise FetchError(f"{url}: not a tar or zip archive ({err})") from err


def dataset_root(unpacked: Path, url: str) -> Path:
    """The folder inside the archive that holds eval.jsonl: the archive root or its one top-level folder."""
    candidates = sorted({p.parent for p in unpacked.rglob("eval.jsonl")})
    if len(candidates) != 1:
        found = [str(c.relative_to(unpacked)) for c in candidates]
        raise FetchError(
            f"{url}: expected one folder with eval.jsonl in the archive, found {found or 'none'}"
        )
    root = candidates[0]
    missing = [name for name in DATASET_FILES if not (root / name).is_file()]
    if missing:
        raise FetchError(f"{url}: the dataset folder in the archive lacks {missing}")
    return root


def _install(root: Path, out_dir: Path, origin: str) -> dict[str, int]:
    """Validate the reference-format folder `root` and copy it into `out_dir` atomically; rows per split."""
    from cmt.data.check import check_dataset

    report = check_dataset(root)
    if not report.ok:
        shown = "\n  ".join(report.errors)
        raise DataError(f"{origin}: the dataset does not validate ({report.n_errors} errors):\n  {shown}")
    with atomic_dir(out_dir) as staging:
        for name in DATASET_FILES:
            shutil.copy2(root / name, Path(staging) / name)
    return {split: summary.rows for split, summary in report.splits.items()}


def _staging(out_dir: Path) -> tempfile.TemporaryDirectory:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.fetch-")


def fetch_dataset(url: str, sha256: str, out_dir: str | Path) -> dict[str, int]:
    """Download, verify, unpack and validate an archive; the reference-format files land in `out_dir`
    atomically. Returns the row count per split."""
    out_dir = Path(out_dir)
    with _staging(out_dir) as tmp:
        archive = Path(tmp) / "archive"
        actual = download(url, archive)
        if actual != sha256.lower():
            raise FetchError(f"{url}: sha256 mismatch: config says {sha256}, the download is {actual}")
        log.info("fetched %s (%d bytes, sha256 verified)", url, archive.stat().st_size)
        unpacked = Path(tmp) / "unpacked"
        unpack(archive, unpacked, url)
        return _install(dataset_root(unpacked, url), out_dir, url)


def fetch_dataset_files(base_url: str, files: dict[str, str], out_dir: str | Path) -> dict[str, int]:
    """Download each reference file from `<base_url>/<name>`, verify it against `files[name]`, validate the
    set and install it into `out_dir` atomically. Returns the row count per split."""
    out_dir = Path(out_dir)
    if sorted(files) != sorted(DATASET_FILES):
        raise FetchError(f"{base_url}: files must list exactly {list(DATASET_FILES)}, got {sorted(files)}")
    with _staging(out_dir) as tmp:
        root = Path(tmp)
        for name in DATASET_FILES:
            url = f"{base_url.rstrip('/')}/{name}"
            actual = download(url, root / name)
            if actual != files[name].lower():
                raise FetchError(
                    f"{url}: sha256 mismatch: config says {files[name]}, the download is {actual}"
                )
            log.info("fetched %s (%d bytes, sha256 verified)", url, (root / name).stat().st_size)
        return _install(root, out_dir, base_url)


def fetch_source(source: dict, out_dir: str | Path) -> dict[str, int]:
    """Fetch an organism's `source` block in either URL form."""
    if "base_url" in source:
        return fetch_dataset_files(source["base_url"], source["files"], out_dir)
    return fetch_dataset(source["url"], source["sha256"], out_dir)
