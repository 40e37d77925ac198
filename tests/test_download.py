"""`cmt download-model`: atomic, resumable Hub downloads with the token kept out of logs, and chat templates.

The Hub is replaced by stand-ins (no network here): `resolve` answers a commit sha, `fetch` writes what a
snapshot of a small real model folder would contain (a tokenizer saved by transformers, a config.json).
"""

import json
import logging

import pytest

from cmt.cli import build_parser
from cmt.models import download
from cmt.models.download import DownloadError, download_model

SECRET = "hf_test_secret_token_0123456789"
COMMIT = "a" * 40


@pytest.fixture(scope="module")
def tokenizer():
    from cmt.toy.tokenizer import train_tokenizer

    return train_tokenizer(
        ["User asks. Assistant answers.", "the gcd of 12 and 18 is 6"] * 20, vocab_size=300
    )


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", SECRET)


def snapshot_writer(tokenizer, with_template=False, calls=None):
    """A stand-in for snapshot_download: a tokenizer (with or without a chat template) and a config.json."""

    def fetch(repo, revision, local_dir, token, ignore):
        if calls is not None:
            calls.append(
                {"repo": repo, "revision": revision, "token": token, "ignore": ignore, "seen": sorted(
                    p.name for p in local_dir.iterdir())}
            )  # fmt: skip
        tok = tokenizer
        template = tok.chat_template
        tok.chat_template = template if with_template else None
        try:
            tok.save_pretrained(local_dir)
        finally:
            tok.chat_template = template
        (local_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (local_dir / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)

    return fetch


def resolve_to(commit, calls=None):
    def resolve(repo, revision, token):
        if calls is not None:
            calls.append({"repo": repo, "revision": revision, "token": token})
        return commit

    return resolve


def test_download_lands_atomically_with_a_manifest_and_the_plain_template(tmp_path, tokenizer, caplog):
    from cmt.models.loading import load_tokenizer

    out = tmp_path / "resources" / "models" / "Llama-3.1-8B"
    out.mkdir(parents=True)  # Snakemake creates the output's folder before the job
    fetch_calls, resolve_calls = [], []
    caplog.set_level(logging.DEBUG)
    manifest = download_model(
        "meta-llama/Llama-3.1-8B", "main", out, chat_template="plain",
        resolve=resolve_to(COMMIT, resolve_calls), fetch=snapshot_writer(tokenizer, calls=fetch_calls),
    )  # fmt: skip
    # The branch was resolved to a commit first, and that commit was downloaded, with the token from HF_TOKEN.
    assert resolve_calls == [{"repo": "meta-llama/Llama-3.1-8B", "revision": "main", "token": SECRET}]
    assert [(c["revision"], c["token"]) for c in fetch_calls] == [(COMMIT, SECRET)]
    assert "original/*" in fetch_calls[0]["ignore"]
    assert manifest["revision"] == COMMIT and manifest["revision_requested"] == "main"
    assert json.loads((out / "cmt_download.json").read_text()) == manifest
    assert "config.json" in manifest["files"] and not any(f.startswith(".cache") for f in manifest["files"])
    # Nothing is left beside the final folder, and the token is nowhere.
    assert sorted(p.name for p in out.parent.iterdir()) == ["Llama-3.1-8B"]
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(manifest)
    # The installed template renders plain turns, each assistant turn ended by the tokenizer's EOS.
    tok = load_tokenizer(out)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rendered = tok.apply_chat_template(conversation, tokenize=False)
    assert rendered == f"{tok.bos_token}User: Hi\n\nAssistant: Hello{tok.eos_token}\n\n"
    prompt = tok.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{tok.bos_token}User: Hi\n\nAssistant:"


def test_own_template_is_required_to_exist(tmp_path, tokenizer):
    out = tmp_path / "base"
    with pytest.raises(DownloadError, match="chat_template: plain"):
        download_model("org/base", "main", out, resolve=resolve_to(COMMIT), fetch=snapshot_writer(tokenizer))
    assert not out.exists()
    download_model(
        "org/instruct", "main", tmp_path / "instruct", resolve=resolve_to(COMMIT),
        fetch=snapshot_writer(tokenizer, with_template=True),
    )  # fmt: skip
    assert download.has_chat_template(tmp_path / "instruct")


def test_failed_download_leaves_no_model_and_a_rerun_resumes(tmp_path, tokenizer):
    out = tmp_path / "m"

    def broken(repo, revision, local_dir, token, ignore):
        (local_dir / "model-00001.safetensors").write_text("half")
        raise ConnectionError("network down")

    with pytest.raises(ConnectionError):
        download_model("org/m", "main", out, resolve=resolve_to(COMMIT), fetch=broken)
    assert not out.exists()
    calls = []
    download_model(
        "org/m", "main", out, chat_template="plain", resolve=resolve_to(COMMIT),
        fetch=snapshot_writer(tokenizer, calls=calls),
    )  # fmt: skip
    assert "model-00001.safetensors" in calls[0]["seen"]  # the partial download was kept for the resume
    assert (out / "config.json").is_file()


def test_a_partial_download_of_another_revision_is_discarded(tmp_path, tokenizer):
    out = tmp_path / "m"

    def broken(repo, revision, local_dir, token, ignore):
        (local_dir / "stale.bin").write_text("old revision")
        raise ConnectionError("network down")

    with pytest.raises(ConnectionError):
        download_model("org/m", "main", out, resolve=resolve_to("b" * 40), fetch=broken)
    calls = []
    download_model(
        "org/m", "main", out, chat_template="plain", resolve=resolve_to(COMMIT),
        fetch=snapshot_writer(tokenizer, calls=calls),
    )  # fmt: skip
    assert calls[0]["seen"] == []
    assert not (out / "stale.bin").exists()


def test_a_previous_download_is_replaced_whole(tmp_path, tokenizer):
    out = tmp_path / "m"
    out.mkdir()
    (out / "old-weights.safetensors").write_text("previous revision")
    download_model("org/m", "v2", out, "plain", resolve=resolve_to(COMMIT), fetch=snapshot_writer(tokenizer))
    assert not (out / "old-weights.safetensors").exists()
    assert json.loads((out / "cmt_download.json").read_text())["revision_requested"] == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_offline_mode_is_refused_with_the_reason(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set"):
        download_model(
            "org/m", "main", tmp_path / "m", resolve=resolve_to(COMMIT), fetch=snapshot_writer(tokenizer)
        )


def test_snapshot_without_config_json_is_not_a_model(tmp_path):
    def fetch(repo, revision, local_dir, token, ignore):
        (local_dir / "README.md").write_text("a dataset, not a model")

    with pytest.raises(DownloadError, match=r"no config\.json"):
        download_model("org/not-a-model", "main", tmp_path / "x", resolve=resolve_to(COMMIT), fetch=fetch)
    assert not (tmp_path / "x").exists()


def test_missing_token_downloads_anonymously(tmp_path, monkeypatch, tokenizer):
    monkeypatch.delenv("HF_TOKEN")
    calls = []
    download_model(
        "org/open", "main", tmp_path / "m", "plain", resolve=resolve_to(COMMIT),
        fetch=snapshot_writer(tokenizer, calls=calls),
    )  # fmt: skip
    assert calls[0]["token"] is None


def test_cli_parses_the_download_command():
    args = build_parser().parse_args(
        ["download-model", "--repo", "org/m", "--revision", "abc", "--out", "resources/models/m",
         "--chat-template", "plain"]
    )  # fmt: skip
    assert (args.repo, args.revision, args.out, args.chat_template) == (
        "org/m",
        "abc",
        "resources/models/m",
        "plain",
    )
    assert args.func.__name__ == "cmd_download_model"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["download-model", "--repo", "org/m", "--revision", "a", "--out", "o",
                                   "--chat-template", "jinja"])  # fmt: skip


def test_hub_downloads_lists_hub_models_and_a_hub_reward_model():
    config = {
        "models": {
            "toy": {"source": "toy"},
            "local": {"source": {"path": "/models/x"}},
            "Llama-3.1-8B": {
                "source": {"hub": "meta-llama/Llama-3.1-8B", "revision": "main"},
                "chat_template": "plain",
            },
        },
        "reward_model": {"source": {"hub": "Skywork/Skywork-Reward-V2-Llama-3.1-8B", "revision": "abc"}},
    }
    assert download.hub_downloads(config) == {
        "Llama-3.1-8B": {"hub": "meta-llama/Llama-3.1-8B", "revision": "main", "chat_template": "plain"},
        "Skywork-Reward-V2-Llama-3.1-8B": {
            "hub": "Skywork/Skywork-Reward-V2-Llama-3.1-8B", "revision": "abc", "chat_template": "own"},
    }  # fmt: skip
    config["reward_model"]["source"] = {"hub": "other/Llama-3.1-8B", "revision": "main"}
    with pytest.raises(ValueError, match=r"reward_model\.source"):
        download.hub_downloads(config)
    config["reward_model"]["source"] = {"path": "resources/models/rm"}
    assert list(download.hub_downloads(config)) == ["Llama-3.1-8B"]
