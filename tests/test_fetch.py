"""Datasets by URL: fetched, sha256-verified, unpacked safely and validated, or refused with nothing left."""

import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from cmt.data.fetch import DATASET_FILES, FetchError, fetch_dataset, fetch_dataset_files, fetch_source
from cmt.runtime.io import DataError
from cmt.toy.world import write_world

SMALL = {
    "seed": 5,
    "max_operand": 30,
    "sizes": {"induction": 8, "consistency": 6, "act_bct": 4, "eval": 5},
    "corpus": {"sycophancy": 10},
    "skills": {"views": 0.0, "refinement": 0.0, "grading": 0.0},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root, ["sycophancy"], SMALL)
    return root / "sycophancy"


def tar_gz(folder: Path, prefix: str = "sycophancy", extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name in DATASET_FILES:
            tf.add(folder / name, arcname=f"{prefix}/{name}" if prefix else name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(tmp_path: Path, data: bytes, name: str = "data.tar.gz") -> tuple[str, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path.as_uri(), hashlib.sha256(data).hexdigest()


def test_a_verified_archive_unpacks_into_the_folder(dataset, tmp_path):
    url, sha = write_archive(tmp_path, tar_gz(dataset))
    counts = fetch_dataset(url, sha, tmp_path / "out" / "sycophancy")
    for name in DATASET_FILES:
        assert (tmp_path / "out/sycophancy" / name).read_bytes() == (dataset / name).read_bytes()
    assert counts["eval"] == len((dataset / "eval.jsonl").read_text().splitlines())


def test_a_zip_with_the_files_at_its_root_works_too(dataset, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in DATASET_FILES:
            zf.write(dataset / name, arcname=name)
    url, sha = write_archive(tmp_path, buf.getvalue(), "data.zip")
    fetch_dataset(url, sha, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(DATASET_FILES)


def test_a_wrong_sha256_is_refused_and_leaves_nothing(dataset, tmp_path):
    url, sha = write_archive(tmp_path, tar_gz(dataset))
    wrong = "0" * 64
    with pytest.raises(FetchError, match=f"sha256 mismatch: config says {wrong}, the download is {sha}"):
        fetch_dataset(url, wrong, tmp_path / "out" / "sycophancy")
    assert list((tmp_path / "out").iterdir()) == []  # no folder, no temporary files


def test_members_escaping_the_folder_are_refused(dataset, tmp_path):
    url, sha = write_archive(tmp_path, tar_gz(dataset, extra={"../evil.txt": b"x"}))
    with pytest.raises(FetchError, match="would unpack outside"):
        fetch_dataset(url, sha, tmp_path / "out" / "sycophancy")
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_an_invalid_dataset_is_refused_with_its_file_and_line(dataset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in DATASET_FILES:
        (broken / name).write_bytes((dataset / name).read_bytes())
    lines = (broken / "eval.jsonl").read_text().splitlines()
    lines[2] = "{not json"
    (broken / "eval.jsonl").write_text("\n".join(lines) + "\n")
    url, sha = write_archive(tmp_path, tar_gz(broken))
    with pytest.raises(DataError, match=r"eval\.jsonl:3"):
        fetch_dataset(url, sha, tmp_path / "out" / "sycophancy")
    assert not (tmp_path / "out" / "sycophancy").exists()


def test_fetches_over_http(dataset, tmp_path):
    data = tar_gz(dataset)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/sycophancy.tar.gz"
        fetch_dataset(url, hashlib.sha256(data).hexdigest(), tmp_path / "out")
    finally:
        server.shutdown()
    assert (tmp_path / "out" / "eval.jsonl").read_bytes() == (dataset / "eval.jsonl").read_bytes()


def test_an_unreachable_url_names_it(tmp_path):
    with pytest.raises(FetchError, match=re.escape("could not fetch http://127.0.0.1:9/x.tar.gz")):
        fetch_dataset("http://127.0.0.1:9/x.tar.gz", "0" * 64, tmp_path / "out")


def loose_files(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in DATASET_FILES}


def test_loose_files_are_each_verified_and_installed(dataset, tmp_path):
    counts = fetch_source({"base_url": dataset.as_uri(), "files": loose_files(dataset)}, tmp_path / "out")
    for name in DATASET_FILES:
        assert (tmp_path / "out" / name).read_bytes() == (dataset / name).read_bytes()
    assert counts["eval"] == len((dataset / "eval.jsonl").read_text().splitlines())


def test_one_loose_file_with_a_wrong_hash_names_it_and_installs_nothing(dataset, tmp_path):
    files = loose_files(dataset)
    files["act_bct_wrapped.jsonl"] = "f" * 64
    url = f"{dataset.as_uri()}/act_bct_wrapped.jsonl"
    with pytest.raises(FetchError, match=re.escape(f"{url}: sha256 mismatch: config says {'f' * 64}")):
        fetch_dataset_files(dataset.as_uri() + "/", files, tmp_path / "out" / "sycophancy")
    assert list((tmp_path / "out").iterdir()) == []


def test_loose_files_must_be_exactly_the_six(dataset, tmp_path):
    files = loose_files(dataset)
    del files["rubric.txt"]
    with pytest.raises(FetchError, match="files must list exactly"):
        fetch_dataset_files(dataset.as_uri(), files, tmp_path / "out")


def test_the_cli_takes_the_source_block_as_json(dataset, tmp_path, capsys):
    import json

    from cmt.cli import main

    source = {"base_url": dataset.as_uri(), "files": loose_files(dataset)}
    main(["fetch-dataset", "--source", json.dumps(source), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "rubric.txt").read_bytes() == (dataset / "rubric.txt").read_bytes()
    with pytest.raises(SystemExit):
        main(["fetch-dataset", "--source", "{url:", "--out", str(tmp_path / "other")])
    assert "argument --source: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
