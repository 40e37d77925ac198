"""Atomic writes: a killed writer leaves nothing that a later write keeps."""

from cmt.runtime.io import atomic_dir, write_text


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.txt"
    (tmp_path / ".out.txt.abc123.tmp").write_text("half")
    write_text(target, "whole")
    assert target.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_replaces_and_cleans(tmp_path):
    stale = tmp_path / ".adapter.x1.tmp"
    stale.mkdir()
    (stale / "weights").write_text("half")
    with atomic_dir(tmp_path / "adapter") as tmp:
        (tmp / "weights").write_text("whole")
    assert (tmp_path / "adapter/weights").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert oct((tmp_path / "adapter").stat().st_mode & 0o777) != oct(
        0o700
    )  # published with umask permissions
