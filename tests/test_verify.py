"""Manifests record {path, sha256} of inputs and outputs; `cmt verify` re-hashes them and reports tampering."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmt.runtime.io import atomic_dir, write_json
from cmt.runtime.manifest import build_manifest, record_outputs
from cmt.runtime.verify import find_manifests, verify_tree

CMT = Path(sys.executable).parent / "cmt"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """A miniature results tree, written from the pipeline's working directory with relative paths:
    a data file, an adapter directory with its own manifest, and a label file with a sibling manifest."""
    monkeypatch.chdir(tmp_path)
    data = Path("data/sycophancy/consistency.jsonl")
    data.parent.mkdir(parents=True)
    data.write_text('{"messages": []}\n')
    adapter = Path("results/organisms/tiny/sycophancy/seed0/adapter")
    with atomic_dir(adapter) as tmp:  # hashed under the temporary name, then renamed: must still verify
        (tmp / "adapter_config.json").write_text('{"r": 4}')
        (tmp / "adapter_model.safetensors").write_bytes(b"\x00weights\x01")
        manifest = build_manifest(
            task="induce", settings={}, seeds={"train": 0}, inputs=[data], outputs=[tmp],
            manifest_path=tmp / "cmt_manifest.json",
        )  # fmt: skip
        write_json(tmp / "cmt_manifest.json", manifest)
    labels = Path("results/labels/tiny/sycophancy/seed0/gst/k1.parquet")
    labels.parent.mkdir(parents=True)
    labels.write_bytes(b"PAR1 labels PAR1")
    label_manifest = labels.with_name("k1.manifest.json")
    write_json(
        label_manifest,
        build_manifest(
            task="label", settings={}, seeds={"label": 0}, inputs=[data, adapter], outputs=[labels],
            manifest_path=label_manifest,
        ),
    )  # fmt: skip
    return {
        "root": tmp_path,
        "data": data,
        "adapter": adapter,
        "labels": labels,
        "label_manifest": label_manifest,
    }


def test_manifest_records_path_and_sha256_of_every_file(pipeline):
    adapter, data, labels = pipeline["adapter"], pipeline["data"], pipeline["labels"]
    m = json.loads(pipeline["label_manifest"].read_text())
    assert m["inputs_sha256"] == [
        {"path": str(data), "sha256": sha(data.read_bytes())},
        {"path": str(adapter / "adapter_config.json"), "sha256": sha(b'{"r": 4}')},
        {"path": str(adapter / "adapter_model.safetensors"), "sha256": sha(b"\x00weights\x01")},
        # the adapter's own manifest is one of its files, so a changed manifest is caught too
        {
            "path": str(adapter / "cmt_manifest.json"),
            "sha256": sha((adapter / "cmt_manifest.json").read_bytes()),
        },
    ]
    assert m["outputs_base"] == "manifest_dir"
    assert m["outputs_sha256"] == [{"path": "k1.parquet", "sha256": sha(labels.read_bytes())}]
    inner = json.loads((adapter / "cmt_manifest.json").read_text())
    # relative to the adapter directory, the manifest itself excluded
    assert [r["path"] for r in inner["outputs_sha256"]] == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_without_outputs_the_manifest_keeps_its_old_shape(pipeline):
    m = build_manifest(task="t", settings={}, seeds={}, inputs=[pipeline["data"]])
    assert "outputs_sha256" not in m and m["inputs_sha256"][0]["path"] == str(pipeline["data"])
    m = record_outputs(m, [pipeline["labels"]])  # as given, relative to the working directory
    assert m["outputs_base"] == "cwd" and m["outputs_sha256"][0]["path"] == str(pipeline["labels"])
    with pytest.raises(FileNotFoundError, match=r"^nope\.txt: cannot hash a missing file"):
        build_manifest(task="t", settings={}, seeds={}, inputs=["nope.txt"])


def test_untouched_tree_verifies(pipeline):
    report = verify_tree("results")
    assert report.ok, report.format()
    assert len(report.manifests) == 2
    assert report.files_checked == 4 + 1 + 1 + 2  # label: 4 inputs + 1 output; adapter: 1 input + 2 outputs
    assert report.format().endswith("checked 2 manifests, 8 files: all match")


def test_tampered_input_is_a_mismatch(pipeline):
    data = pipeline["data"]
    before = sha(data.read_bytes())
    data.write_text('{"messages": ["edited"]}\n')
    report = verify_tree("results")
    assert not report.ok
    assert sorted((p.manifest, p.kind, p.role, p.path) for p in report.problems) == sorted(
        (str(m), "mismatch", "input", str(data))
        for m in (pipeline["label_manifest"], pipeline["adapter"] / "cmt_manifest.json")
    )
    p = report.problems[0]
    assert p.expected == before and p.actual == sha(data.read_bytes())
    assert str(p).startswith(f"MISMATCH {p.manifest}: input {data} (") and before in str(p)


def test_tampered_output_and_missing_adapter_file(pipeline):
    pipeline["labels"].write_bytes(b"PAR1 other labels PAR1")
    (pipeline["adapter"] / "adapter_model.safetensors").unlink()
    problems = {(Path(p.manifest).name, p.kind, p.role, p.path) for p in verify_tree("results").problems}
    weights = pipeline["adapter"] / "adapter_model.safetensors"
    assert problems == {
        ("k1.manifest.json", "mismatch", "output", "k1.parquet"),
        ("k1.manifest.json", "missing", "input", str(weights)),
        ("cmt_manifest.json", "missing", "output", "adapter_model.safetensors"),
    }


def test_relative_paths_resolve_against_root(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    assert verify_tree(tmp_path / "results", root=tmp_path).ok
    # from elsewhere without --root, relative inputs are not found: reported, never silently passed
    report = verify_tree(tmp_path / "results")
    assert not report.ok and {p.kind for p in report.problems} == {"missing"}


def test_legacy_mapping_unreadable_and_foreign_manifests(pipeline):
    data = pipeline["data"]
    legacy = Path("results/old.manifest.json")
    legacy.write_text(json.dumps({"inputs_sha256": {str(data): "0" * 64}}))
    Path("results/broken.manifest.json").write_text("{not json")
    Path("results/manifest.json").write_text(json.dumps({"name": "some other tool"}))
    Path("results/.k1.manifest.json.abc.tmp").write_text("{}")  # an atomic write's leftover: not a manifest
    report = verify_tree("results")
    kinds = {(Path(p.manifest).name, p.kind) for p in report.problems}
    assert kinds == {("old.manifest.json", "mismatch"), ("broken.manifest.json", "unreadable")}
    assert report.skipped == ["results/manifest.json"]
    assert "results/.k1.manifest.json.abc.tmp" not in [str(p) for p in find_manifests("results")]


def test_cli(pipeline):
    ok = subprocess.run([str(CMT), "verify", "results/"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "checked 2 manifests, 8 files: all match" in ok.stdout
    pipeline["labels"].write_bytes(b"tampered")
    bad = subprocess.run([str(CMT), "verify", "results/"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"MISMATCH {pipeline['label_manifest']}: output k1.parquet" in bad.stdout
    assert "checked 2 manifests, 8 files: 1 problems" in bad.stdout
    empty = Path("empty")
    empty.mkdir()
    none = subprocess.run([str(CMT), "verify", "empty"], capture_output=True, text=True)
    assert none.returncode == 1 and "no manifests found under empty" in none.stdout


def test_the_git_revision_is_read_once_per_process_without_the_jobs_preload(monkeypatch):
    from cmt.runtime import manifest

    repo = Path(manifest.__file__).resolve().parents[3]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    manifest._git_revision.cache_clear()
    assert manifest.git_revision()["commit"] == head.stdout.strip()

    calls = []
    real_run = subprocess.run

    def counting_run(cmd, **kwargs):
        if cmd[0] == "git":
            calls.append(kwargs.get("env"))
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(manifest.subprocess, "run", counting_run)
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    manifest._git_revision.cache_clear()
    first = manifest.git_revision()
    first["commit"] = "changed by a caller"  # a copy: the next manifest still gets the real one
    second = build_manifest(task="t", settings={}, seeds={}, inputs=[])["git"]
    assert second["commit"] == head.stdout.strip()
    assert len(calls) == 2  # rev-parse and status, once
    assert all(env is not None and "LD_PRELOAD" not in env for env in calls)
    manifest._git_revision.cache_clear()
