"""Download a Hugging Face model snapshot into resources/models/<name>/ (rule download_model, on the login node).

The login node is the only place with network access and the user's Hugging Face token: compute jobs load the
downloaded folder with HF_HUB_OFFLINE=1. The token comes from the environment (HF_TOKEN) and is handed to
huggingface_hub only; it is never logged or written anywhere.

The download is atomic and resumable: files go into a hidden sibling folder `.<name>.partial` (kept across
failures, so a rerun resumes where it stopped), and the finished folder appears under its final name by one
rename, with a manifest of what was fetched.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cmt.runtime.io import write_json, write_text

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
MANIFEST_NAME = "cmt_download.json"

# Files a transformers/vLLM load never reads: Meta's original checkpoints, Mistral's consolidated format,
# Apple Metal and other frameworks' weights. They can double the download (140 GB more for a 70B model).
DEFAULT_IGNORE = [
    "original/*",
    "metal/*",
    "consolidated*.safetensors",
    "*.pth",
    "*.pt",
    "*.gguf",
    "*.msgpack",
    "*.h5",
    "onnx/*",
]

# chat_template: plain. Base checkpoints ship no chat template, or one whose special tokens the base model
# never trained on; this one uses plain-text role markers and ends each assistant turn with the tokenizer's
# own EOS, so the organism learns to stop with a token the base model already knows.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CHAT_TEMPLATES = ("own", "plain")


class DownloadError(RuntimeError):
    pass


def hub_downloads(config: dict) -> dict[str, dict]:
    """Folder name under resources/models/ -> {hub, revision, chat_template} for every Hub-sourced model of a
    (validated) config, and for the reward model where its source has the hub form (its folder is named after
    its repository)."""
    out = {}
    for name, spec in config["models"].items():
        source = spec["source"]
        if isinstance(source, dict) and "hub" in source:
            out[name] = {**source, "chat_template": spec.get("chat_template", "own")}
    reward_source = (config.get("reward_model") or {}).get("source")
    if isinstance(reward_source, dict) and "hub" in reward_source:
        name = reward_source["hub"].split("/")[-1]
        if name in out and out[name]["hub"] != reward_source["hub"]:
            raise ValueError(
                f"config key reward_model.source: its folder resources/models/{name} is also model {name}'s"
            )
        out[name] = {**reward_source, "chat_template": "own"}
    return out


def hf_token() -> str | None:
    """The Hugging Face token from the environment (None: anonymous, enough for ungated models)."""
    return os.environ.get(TOKEN_ENV) or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_revision(repo: str, revision: str, token: str | None) -> str:
    """The commit sha that `revision` (a branch, tag or sha) names on the Hub."""
    from huggingface_hub import HfApi

    return HfApi().model_info(repo, revision=revision, token=token).sha


def snapshot(repo: str, revision: str, local_dir: Path, token: str | None, ignore: list[str]) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id=repo, revision=revision, local_dir=str(local_dir), token=token, ignore_patterns=ignore
    )


def has_chat_template(model_dir: Path) -> bool:
    """Whether a model folder ships a chat template (a chat_template.jinja or tokenizer_config's key)."""
    import json

    if (model_dir / "chat_template.jinja").is_file():
        return True
    config = model_dir / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def _replace_dir(src: Path, dest: Path) -> None:
    """Rename `src` onto `dest`; an existing `dest` (empty, as Snakemake leaves it, or a stale copy) goes."""
    if dest.exists():
        if any(dest.iterdir()):
            aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, aside / "x")
            os.replace(src, dest)
            shutil.rmtree(aside, ignore_errors=True)
            return
        dest.rmdir()
    os.replace(src, dest)


def download_model(
    repo: str,
    revision: str,
    out: str | os.PathLike,
    chat_template: str = "own",
    ignore: list[str] | None = None,
    *,
    resolve: Callable[[str, str, str | None], str] = resolve_revision,
    fetch: Callable[[str, str, Path, str | None, list[str]], None] = snapshot,
) -> dict:
    """Download `repo` at `revision` into `out`; return the manifest written as out/cmt_download.json.

    `chat_template: plain` installs PLAIN_CHAT_TEMPLATE as chat_template.jinja (transformers prefers it over
    a template in tokenizer_config.json); `own` requires the checkpoint to ship one. `resolve` and `fetch` are
    the Hub calls (replaced in tests).
    """
    if chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"chat_template must be one of {CHAT_TEMPLATES}, got {chat_template!r}")
    if _offline():
        raise DownloadError(
            "HF_HUB_OFFLINE is set, but downloading a model needs the network: run `cmt download-model` on "
            "the login node with HF_HUB_OFFLINE unset (rule download_model sets HF_HUB_OFFLINE=0)"
        )
    out = Path(out)
    ignore = list(DEFAULT_IGNORE if ignore is None else ignore)
    token = hf_token()
    log.info("resolving %s@%s (token from %s: %s)", repo, revision, TOKEN_ENV, "set" if token else "not set")
    commit = resolve(repo, revision, token)
    partial = out.parent / f".{out.name}.partial"
    marker = out.parent / f".{out.name}.partial.commit"
    if partial.exists() and (not marker.is_file() or marker.read_text() != commit):
        log.info("discarding a partial download of another revision in %s", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_text(marker, commit)
    log.info("downloading %s@%s into %s (resumes a partial download)", repo, commit, partial)
    fetch(repo, commit, partial, token, ignore)
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
    if not (partial / "config.json").is_file():
        raise DownloadError(f"{repo}@{commit}: the snapshot has no config.json; not a transformers model")
    if chat_template == "plain":
        write_text(partial / "chat_template.jinja", PLAIN_CHAT_TEMPLATE)
    elif not has_chat_template(partial):
        raise DownloadError(
            f"{repo}@{commit} ships no chat template, and cmt renders every prompt with one: set the model's "
            "config key chat_template: plain"
        )
    files = {
        str(p.relative_to(partial)): p.stat().st_size
        for p in sorted(partial.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {
        "repo": repo,
        "revision_requested": revision,
        "revision": commit,
        "chat_template": chat_template,
        "ignore_patterns": ignore,
        "files": files,  # path -> size in bytes
    }
    write_json(partial / MANIFEST_NAME, manifest)
    _replace_dir(partial, out)
    marker.unlink()
    log.info("%s@%s: %d files, %.1f GB in %s", repo, commit, len(files), sum(files.values()) / 1e9, out)
    return manifest
