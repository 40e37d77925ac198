"""`cmt verify DIR`: re-hash every input and output recorded in the manifests under DIR.

Manifests are `*.manifest.json` files (next to label parquet files) and `cmt_manifest.json` / `manifest.json`
inside artefact directories (adapters, the reward model). cmt.runtime.manifest records `inputs_sha256` and, where the
writer passed them, `outputs_sha256`: lists of {path, sha256}. An older manifest may hold `inputs_sha256` as
a {path: sha256} mapping; both forms are read.

Relative input paths, and outputs with `outputs_base: "cwd"`, resolve against `root` (the pipeline's working
directory; by default the current one). Outputs with `outputs_base: "manifest_dir"` resolve against the
manifest's own directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

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
