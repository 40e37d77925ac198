"""Published files get the umask's permissions, like a plain open() would give them; `cmt verify --fix-modes`
repairs files that an older version left private (0600)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cmt.cli import main
from cmt.runtime.io import atomic_dir, atomic_path, current_umask, write_csv, write_json, write_text
from cmt.runtime.verify import fix_modes

CMT = Path(sys.executable).parent / "cmt"


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_published_files_and_folders_get_the_umask_mode(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"x": 1})
        write_csv(tmp_path / "c.csv", pd.DataFrame({"x": [1]}))  # pandas reopens the temporary file
        with atomic_path(tmp_path / "d.bin") as tmp:
            tmp.unlink()  # a writer that replaces the temporary instead of writing into it
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "weights").write_text("x")
    for name in ("a.txt", "b.json", "c.csv", "d.bin", "adapter/weights"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name
    assert mode(tmp_path / "adapter") == 0o777 & ~mask


def private_tree(root: Path) -> dict[str, Path]:
    paths = {"file": root / "tables" / "main.csv", "deep": root / "models" / "adapter" / "weights.bin"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        path.chmod(0o600)
    (root / "models" / "adapter").chmod(0o700)
    paths["script"] = root / "run.sh"
    paths["script"].write_text("#!/bin/sh\n")
    paths["script"].chmod(0o700)
    paths["public"] = root / "public.txt"
    paths["public"].write_text("x")
    paths["public"].chmod(0o664)
    return paths


def test_fix_modes_adds_the_read_bits_the_umask_allows(tmp_path):
    paths = private_tree(tmp_path / "results")
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    outside.chmod(0o600)
    (tmp_path / "results" / "link").symlink_to(outside)
    report = fix_modes(tmp_path / "results", umask=0o027)
    assert report.ok, report.format()
    assert mode(paths["file"]) == mode(paths["deep"]) == 0o640
    assert mode(paths["deep"].parent) == 0o750
    assert mode(paths["script"]) == 0o740  # execute bits are kept, none added to a file
    assert mode(paths["public"]) == 0o664  # nothing is removed
    assert mode(outside) == 0o600  # a link is not followed
    fixed = {Path(p).name for p, _, _ in report.fixed}
    assert fixed == {"main.csv", "weights.bin", "adapter", "run.sh"}
    assert "4 made readable" in report.format()
    assert fix_modes(tmp_path / "results", umask=0o027).fixed == []  # a second run has nothing to do


def test_fix_modes_on_a_missing_folder_is_an_error(tmp_path):
    report = fix_modes(tmp_path / "nope")
    assert not report.ok and "no such path" in report.format()


def test_cli_fix_modes_fixes_a_private_file(tmp_path, capsys):
    paths = private_tree(tmp_path / "results")
    with umask(0o022):
        assert main(["verify", str(tmp_path / "results"), "--fix-modes"]) == 0
    assert mode(paths["file"]) == 0o644 and mode(paths["deep"].parent) == 0o755
    out = capsys.readouterr().out
    assert "0600 -> 0644" in out and "made readable" in out


def test_cli_fix_modes_by_hand_prints_no_job_header(tmp_path):
    private_tree(tmp_path / "results")
    r = subprocess.run([str(CMT), "verify", "results", "--fix-modes"], cwd=tmp_path, capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "job cmd=" not in r.stderr + r.stdout and "0600 -> 06" in r.stdout
