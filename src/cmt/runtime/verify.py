"""`cmt verify DIR`: re-hash every input and output recorded in the manifests under DIR.

Manifests are `*.manifest.json` files (next to label parquet files) and `cmt_manifest.json` / `manifest.json`
inside artefact directories (adapters, the reward model). cmt.runtime.manifest records `inputs_sha256` and, where the
writer passed them, `outputs_sha256`: lists of {path, sha256}. An older manifest may hold `inputs_sha256` as
a {path: sha256} mapping; both forms are read.

Relative input paths, and outputs with `outputs_base: "cwd"`, resolve against `root` (the pipeline's working
directory; by default the current one). Outputs with `outputs_base: "manifest_dir"` resolve against the
manifest's own directory.

`cmt verify DIR --fix-modes` repairs permissions instead: results written before atomic writes applied the
umask are private (0600). It gives every file the read bits, and every folder the read and search bits, that
the umask allows; it never removes a bit, never adds a write bit, and leaves symbolic links alone.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cmt.runtime.io import current_umask
from cmt.runtime.manifest import sha256_file

MANIFEST_PATTERNS = ("*.manifest.json", "cmt_manifest.json", "manifest.json")


@dataclass(frozen=True)
class Problem:
    manifest: str
    kind: str  # "mismatch", "missing", "unreadable" (the manifest itself), "malformed"
    role: str  # "input", "output" or "manifest"
    path: str  # as recorded
    resolved: str  # where it was looked for
    expected: str | None = None
    actual: str | None = None

    def __str__(self) -> str:
        if self.kind == "mismatch":
            return (
                f"MISMATCH {self.manifest}: {self.role} {self.path} ({self.resolved}): recorded sha256 "
                f"{self.expected}, now {self.actual}"
            )
        if self.kind == "missing":
            return f"MISSING  {self.manifest}: {self.role} {self.path} ({self.resolved}) does not exist"
        return f"{self.kind.upper():<8} {self.manifest}: {self.actual}"


@dataclass
class VerifyReport:
    root: str
    manifests: list[str] = field(default_factory=list)
    files_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # manifest.json files that are not cmt manifests

    @property
    def ok(self) -> bool:
        return bool(self.manifests) and not self.problems

    def format(self) -> str:
        lines = [str(p) for p in self.problems]
        if not self.manifests:
            lines.append(f"no manifests found under {self.root}")
        lines.append(
            f"checked {len(self.manifests)} manifests, {self.files_checked} files: "
            + (f"{len(self.problems)} problems" if self.problems else "all match")
        )
        return "\n".join(lines)


def find_manifests(directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    found = {p for pattern in MANIFEST_PATTERNS for p in directory.rglob(pattern) if p.is_file()}
    # Temporary siblings of atomic writes (".name.XXXX.tmp") are not artefacts.
    return sorted(
        p for p in found if not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def _records(value, manifest: str, role: str, problems: list[Problem]) -> list[tuple[str, str]]:
    """(path, sha256) pairs from a list of {path, sha256} or a legacy {path: sha256} mapping."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = [{"path": k, "sha256": v} for k, v in value.items()]
    out = []
    for i, rec in enumerate(value if isinstance(value, list) else [value]):
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("path"), str)
            or not isinstance(rec.get("sha256"), str)
        ):
            problems.append(
                Problem(
                    manifest,
                    "malformed",
                    "manifest",
                    "",
                    "",
                    actual=f"{role}s_sha256[{i}] is not {{path, sha256}}",
                )
            )
            continue
        out.append((rec["path"], rec["sha256"]))
    return out


class _Hasher:
    """sha256 per file, computed once per run even when many manifests name the same adapter."""

    def __init__(self):
        self.cache: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self.cache:
            self.cache[key] = sha256_file(path)
        return self.cache[key]


def verify_manifest(
    manifest_path: str | os.PathLike, root: str | os.PathLike | None = None, hasher: _Hasher | None = None
) -> tuple[int, list[Problem]] | None:
    """(files checked, problems) for one manifest; None when a `manifest.json` is not a cmt manifest."""
    manifest_path = Path(manifest_path)
    root = Path(root) if root is not None else Path.cwd()
    hasher = hasher or _Hasher()
    name = str(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return 0, [Problem(name, "unreadable", "manifest", name, name, actual=f"cannot read: {err}")]
    if not isinstance(manifest, dict):
        return 0, [Problem(name, "malformed", "manifest", name, name, actual="not a JSON object")]
    if "inputs_sha256" not in manifest and "outputs_sha256" not in manifest:
        if manifest_path.name == "manifest.json":
            return None
        return 0, [Problem(name, "malformed", "manifest", name, name, actual="records no inputs_sha256")]
    problems: list[Problem] = []
    output_base = manifest_path.parent if manifest.get("outputs_base") == "manifest_dir" else root
    checks = [
        ("input", p, h, root) for p, h in _records(manifest.get("inputs_sha256"), name, "input", problems)
    ]
    checks += [
        ("output", p, h, output_base)
        for p, h in _records(manifest.get("outputs_sha256"), name, "output", problems)
    ]
    for role, recorded, expected, base in checks:
        resolved = Path(recorded) if os.path.isabs(recorded) else base / recorded
        if not resolved.is_file():
            problems.append(Problem(name, "missing", role, recorded, str(resolved), expected))
            continue
        actual = hasher(resolved)
        if actual != expected:
            problems.append(Problem(name, "mismatch", role, recorded, str(resolved), expected, actual))
    return len(checks), problems


def verify_tree(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> VerifyReport:
    """Verify every manifest under `directory` (or the one manifest file it names)."""
    root = Path(root) if root is not None else Path.cwd()
    report = VerifyReport(str(directory))
    hasher = _Hasher()
    if not Path(directory).exists():
        report.problems.append(
            Problem(
                str(directory),
                "unreadable",
                "manifest",
                str(directory),
                str(directory),
                actual="no such path",
            )
        )
        return report
    for path in find_manifests(directory):
        result = verify_manifest(path, root, hasher)
        if result is None:
            report.skipped.append(str(path))
            continue
        n, problems = result
        report.manifests.append(str(path))
        report.files_checked += n
        report.problems.extend(problems)
    return report


@dataclass
class ModeReport:
    root: str
    umask: int
    checked: int = 0  # files and folders looked at
    fixed: list[tuple[str, int, int]] = field(default_factory=list)  # (path, old mode, new mode)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"{old:04o} -> {new:04o} {path}" for path, old, new in self.fixed]
        lines += [f"error: {e}" for e in self.errors]
        lines.append(
            f"checked {self.checked} files and folders under {self.root} (umask {self.umask:03o}): "
            f"{len(self.fixed)} made readable" + (f", {len(self.errors)} errors" if self.errors else "")
        )
        return "\n".join(lines)


def fix_modes(directory: str | os.PathLike, umask: int | None = None) -> ModeReport:
    """Give every file and folder under `directory` (itself included) the read permissions that `umask` (by
    default the process's) allows: read on files, read and search on folders. Symbolic links below `directory`
    are neither changed nor followed; other bits are kept."""
    mask = current_umask() if umask is None else umask
    report = ModeReport(str(directory), mask)
    want = {"file": 0o444 & ~mask, "dir": 0o555 & ~mask}

    def visit(path: str) -> None:
        try:
            st = os.lstat(path)
        except OSError as err:
            report.errors.append(f"{path}: {err.strerror}")
            return
        if stat.S_ISDIR(st.st_mode):
            wanted = want["dir"]
        elif stat.S_ISREG(st.st_mode):
            wanted = want["file"]
        else:  # a link, socket or device: not ours to change
            return
        report.checked += 1
        mode = stat.S_IMODE(st.st_mode)
        if mode & wanted != wanted:
            try:
                os.chmod(path, mode | wanted)
            except OSError as err:
                report.errors.append(f"{path}: cannot change mode {mode:04o}: {err.strerror}")
                return
            report.fixed.append((path, mode, mode | wanted))

    if not os.path.lexists(directory):
        report.errors.append(f"{directory}: no such path")
        return report
    visit(os.fspath(directory))
    if not os.path.isdir(directory):  # a link to a folder (results on scratch storage) is walked
        return report

    def walk_error(err: OSError) -> None:
        report.errors.append(f"{err.filename}: {err.strerror}")

    # Top-down: a folder is made searchable before the walk lists it.
    for parent, dirs, files in os.walk(directory, onerror=walk_error):
        for name in dirs + files:
            visit(os.path.join(parent, name))
    return report
