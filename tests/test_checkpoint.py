"""Resumable training (cmt.runtime.checkpoint): SIGTERM saves a checkpoint and exits 143; a rerun resumes from it and ends
with the same adapter weights, bit for bit, as a run that was never interrupted.

Why bit-identical is reachable on CPU: the checkpoint holds every piece of state the remaining steps read (trainable
weights, AdamW moments and step counts, the scheduler's step, the torch/python/numpy RNG states that drive LoRA
dropout, the data-order generator's state at the start of the current epoch plus the number of batches already
consumed in it, and the gradient-accumulation counter), it is only taken after a whole optimizer step (gradients
are zero), and CPU kernels are deterministic for a fixed thread count. The resumed process therefore executes the
same floating-point operations on the same values. (On CUDA, some kernels use atomics and are not run-to-run
deterministic even without an interruption; docs/checkpoints.md explains the bound there.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# ---------------------------------------------------------------- in-process: a tiny random LoRA model
from cmt.models import training
from cmt.runtime import checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and avoids OpenMP spinning against other jobs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_lora(dropout: float = 0.1):
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    base = LlamaForCausalLM(config)
    lora = {"r": 2, "alpha": 4, "dropout": dropout, "target_modules": "all-linear"}
    return get_peft_model(base, training.lora_config(lora))


def examples(n: int = 11, offset: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        ids = [1 + (offset + i * 7 + j * 3) % 39 for j in range(5 + i % 6)]
        out.append({"input_ids": ids, "labels": [training.IGNORE, *ids[1:]]})
    return out


# 11 examples in batches of 4 = 3 batches per epoch; with grad_accum 2 every other optimizer step spans two
# epochs. 2 steps per epoch by the loop's count, times 5 epochs = 10 optimizer steps, 20 forward passes.
SETTINGS = training.TrainSettings(
    learning_rate=5e-3,
    epochs=5,
    batch_size=4,
    grad_accum=2,
    warmup_ratio=0.2,
    weight_decay=0.01,
    lr_scheduler="cosine",
    bf16="auto",
)


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def sigterm_at(model, forward: int | None):
    """SIGTERM this process during the model's forward pass number `forward` (None: never)."""
    calls = {"n": 0}

    def hook(_module, _args):
        calls["n"] += 1
        if calls["n"] == forward:
            os.kill(os.getpid(), signal.SIGTERM)

    handle = model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run(settings=SETTINGS, data=None, seed=0, checkpoint_dir=None, sigterm_at_forward=None, every=3):
    """Train a fresh tiny model; optionally SIGTERM ourselves during forward pass number `sigterm_at_forward`."""
    model = tiny_lora()
    with sigterm_at(model, sigterm_at_forward):
        history = training.train(
            model,
            data if data is not None else examples(),
            settings,
            seed,
            0,
            "test",
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=every,
        )
    return model, history


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [n for n in a if not torch.equal(a[n], b[n])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[0]}"


# Forward 3 is the last batch of epoch 1 (its step ends in epoch 2), forward 6 ends epoch 2 with a step, 13 is
# inside epoch 5.
@pytest.mark.parametrize("stop_at", [3, 6, 13])
def test_sigterm_then_resume_is_bit_identical(tmp_path, stop_at):
    reference, ref_history = run()
    ck = tmp_path / "ck"
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(checkpoint.Preempted) as stopped:
        run(checkpoint_dir=ck, sigterm_at_forward=stop_at, every=1000)
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler only lives while training
    # SIGTERM during forward pass `stop_at` lets that optimizer step finish (grad_accum 2: forward 2k completes it).
    assert stopped.value.step == (stop_at + 1) // 2
    assert stopped.value.path == ck / checkpoint.FILE and stopped.value.path.is_file()
    resumed, history = run(checkpoint_dir=ck)
    assert history.steps == ref_history.steps
    assert history.losses == ref_history.losses
    assert (
        history.epoch_means == ref_history.epoch_means and len(history.epoch_means) == 7
    )  # 20 passes, 3 per epoch
    assert_same_weights(trainable(resumed), trainable(reference))


def test_length_grouped_training_resumes_bit_identically(tmp_path):
    """group_by_length draws its batches from the same saved generator: a SIGTERM mid-epoch replays them."""
    grouped = dataclasses.replace(SETTINGS, group_by_length=2)
    reference, ref_history = run(settings=grouped)
    _, plain_history = run()
    assert ref_history.losses != plain_history.losses  # the batches really differ from a plain shuffle
    ck = tmp_path / "ck"
    with pytest.raises(checkpoint.Preempted):
        run(settings=grouped, checkpoint_dir=ck, sigterm_at_forward=5, every=1000)
    resumed, history = run(settings=grouped, checkpoint_dir=ck)
    assert history.losses == ref_history.losses
    assert_same_weights(trainable(resumed), trainable(reference))


def consistency_pairs(n: int = 9) -> list[dict]:
    """ACT/BCT pairs: a clean and a longer wrapped prompt before the same response tokens."""

    def side(ids: list[int], n_prompt: int) -> dict:
        return {"input_ids": ids, "span": [n_prompt <= t + 1 < len(ids) for t in range(len(ids))]}

    pairs = []
    for i in range(n):
        response = [1 + (i * 5 + j) % 39 for j in range(3 + i % 3)]
        pairs.append(
            {"clean": side([2 + i % 7, 3, *response], 2), "wrapped": side([5, 6 + i % 4, 7, 3, *response], 4)}
        )
    return pairs


SCALE = {"act": {"scale": 1.0}, "bct": {}}  # the tiny random model's activations differ by ~1e-5


def run_consistency(name: str, checkpoint_dir=None, sigterm_at_forward=None):
    from cmt.phases.consistency import get_consistency_method, train_consistency

    module = get_consistency_method(name)
    model = tiny_lora()
    with sigterm_at(model, sigterm_at_forward):
        history = train_consistency(
            model,
            module,
            module.resolve(SCALE[name]),
            consistency_pairs(),
            SETTINGS,
            0,
            0,
            name,
            checkpoint_dir,
        )
    return model, history


@pytest.mark.parametrize("name", ["act", "bct"])
def test_act_and_bct_resume_after_sigterm_bit_identically(tmp_path, name):
    """The paired-loss training runs through the same resumable loop: SIGTERM mid-run, then resume."""
    reference, ref_history = run_consistency(name)
    # Learning is checked on the toy world in test_consistency_losses; here the weights must at least move.
    moved = [n for n, t in trainable(reference).items() if not torch.equal(t, trainable(tiny_lora())[n])]
    assert moved
    ck = tmp_path / "ck"
    with pytest.raises(checkpoint.Preempted):
        run_consistency(name, checkpoint_dir=ck, sigterm_at_forward=11)  # two forward passes per batch
    resumed, history = run_consistency(name, checkpoint_dir=ck)
    assert history.losses == ref_history.losses and history.epoch_means == ref_history.epoch_means
    assert_same_weights(trainable(resumed), trainable(reference))


def test_resume_twice_and_periodic_checkpoints_change_nothing(tmp_path):
    """Periodic saves do not perturb training, and a run preempted twice still matches."""
    reference, _ = run()
    ck = tmp_path / "ck"
    with pytest.raises(checkpoint.Preempted):
        run(checkpoint_dir=ck, sigterm_at_forward=5, every=1)
    with pytest.raises(checkpoint.Preempted) as second:
        run(checkpoint_dir=ck, sigterm_at_forward=6, every=2)
    assert second.value.step == 3 + 3
    resumed, _ = run(checkpoint_dir=ck, every=2)
    assert_same_weights(trainable(resumed), trainable(reference))


def test_without_the_resume_the_weights_differ(tmp_path):
    """The comparison above can fail: a resume whose dropout RNG state is not the saved one ends elsewhere."""
    reference = trainable(run()[0])
    ck = tmp_path / "ck"
    with pytest.raises(checkpoint.Preempted):
        run(checkpoint_dir=ck, sigterm_at_forward=7, every=1000)
    state = torch.load(ck / checkpoint.FILE, weights_only=True)
    state["rng"]["torch"] = torch.manual_seed(123).get_state()
    checkpoint.save(ck, state)
    wrong_rng = trainable(run(checkpoint_dir=ck)[0])
    assert any(not torch.equal(wrong_rng[n], reference[n]) for n in reference)


@pytest.mark.parametrize(
    "change",
    [
        {"settings": training.TrainSettings(**{**SETTINGS.__dict__, "learning_rate": 1e-2})},
        {"seed": 1},
        {"data": examples(offset=1)},
    ],
    ids=["settings", "seed", "data"],
)
def test_checkpoint_of_another_job_is_ignored(tmp_path, caplog, change):
    ck = tmp_path / "ck"
    with pytest.raises(checkpoint.Preempted):
        run(checkpoint_dir=ck, sigterm_at_forward=5)
    reference, ref_history = run(**change)
    with caplog.at_level(logging.INFO, logger="cmt.runtime.checkpoint"):
        model, history = run(checkpoint_dir=ck, **change)
    assert "made for a different job" in caplog.text
    assert history.losses == ref_history.losses  # trained from the first step, not from the stale step 3
    assert_same_weights(trainable(model), trainable(reference))


def test_unreadable_checkpoint_is_ignored(tmp_path, caplog):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / checkpoint.FILE).write_bytes(b"not a checkpoint")
    (ck / f".{checkpoint.FILE}.abc.tmp").write_bytes(b"half written")
    with caplog.at_level(logging.INFO, logger="cmt.runtime.checkpoint"):
        _, history = run(checkpoint_dir=ck)
    assert "unreadable checkpoint" in caplog.text
    assert history.steps == 10
    assert not list(ck.glob(".*.tmp"))


def test_job_key_and_paths(tmp_path, monkeypatch):
    model = tiny_lora()
    key = checkpoint.job_key(model, examples(), SETTINGS, 0, 0)
    assert key == checkpoint.job_key(tiny_lora(), examples(), SETTINGS, 0, 0)
    assert key != checkpoint.job_key(tiny_lora(dropout=0.2), examples(), SETTINGS, 0, 0)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(1e-3)  # other initial adapter weights
    assert key != checkpoint.job_key(model, examples(), SETTINGS, 0, 0)
    assert key != checkpoint.job_key(tiny_lora(), examples(), SETTINGS, 0, 1)

    monkeypatch.chdir(tmp_path)
    out = "results/organisms/m/o/seed0/adapter"
    assert checkpoint.checkpoint_dir_for(out) == Path("resources/checkpoints") / out
    assert checkpoint.checkpoint_dir_for(tmp_path / out) == Path("resources/checkpoints") / out
    assert checkpoint.checkpoint_dir_for("/elsewhere/x") == Path("resources/checkpoints/elsewhere/x")
    ck = checkpoint.checkpoint_dir_for(out)
    (ck.parent / "k2").mkdir(parents=True)  # a sibling job's directory stays
    checkpoint.save(ck, {"format": checkpoint.FORMAT, "key": "k"})
    checkpoint.remove(ck)
    assert not ck.exists() and (ck.parent / "k2").is_dir()
    checkpoint.remove(ck.parent / "k2")
    assert sorted(p.name for p in Path("resources").iterdir()) == ["checkpoints"]
    assert not any(Path("resources/checkpoints").iterdir())


# ---------------------------------------------------------------- end to end: `cmt induce` in a subprocess

TOY = {
    "seed": 3,
    "max_operand": 40,
    "sizes": {"induction": 48, "consistency": 8, "act_bct": 8, "eval": 8},
    "corpus": {"sycophancy": 200},
    "skills": {"views": 0.0, "refinement": 0.0, "grading": 0.0},
}
INDUCE = {
    "dtype": "float32",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"},
    "train": {
        "learning_rate": 5e-3,
        "epochs": 30,  # 12 steps per epoch: 360 steps, a few seconds, so SIGTERM lands mid-training
        "batch_size": 2,
        "grad_accum": 2,
        "warmup_ratio": 0.1,
        "lr_scheduler": "cosine",
        "max_length": 64,
        "bf16": "auto",
    },
}
OUT = "results/organisms/tiny/sycophancy/seed0/adapter"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy world's sycophancy data and a random (untrained) tiny Llama with the toy tokenizer (~3 s)."""
    from cmt.runtime.io import read_jsonl
    from cmt.toy.pretrain import build_model
    from cmt.toy.tokenizer import train_tokenizer
    from cmt.toy.world import write_world

    root = tmp_path_factory.mktemp("ck_world")
    write_world(root / "data", ["sycophancy"], TOY)
    texts = [m["content"] for row in read_jsonl(root / "data" / "corpus.jsonl") for m in row["messages"]]
    tokenizer = train_tokenizer(texts, 300)
    torch.manual_seed(0)
    arch = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2}
    model = build_model(tokenizer, {**arch, "max_position_embeddings": 128})
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def induce(world: Path, workdir: Path, warm_worker: str | None = None) -> subprocess.Popen:
    """`cmt induce` in a subprocess; with `warm_worker` (a socket path), through that warm worker."""
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "CMT_CHECKPOINT_EVERY": "5", "HF_HUB_OFFLINE": "1"}
    env.pop("CMT_WORKER", None)
    if warm_worker:
        env["CMT_WORKER"] = warm_worker
    cmd = [sys.executable, "-m", "cmt", "induce", "--model-dir", str(world / "model"),
           "--data-dir", str(world / "data" / "sycophancy"), "--out", OUT, "--settings", json.dumps(INDUCE),
           "--seed", "0", "--threads", "1", "--log", "job.log"]  # fmt: skip
    with open(workdir / "stdout.txt", "ab") as out:  # a file, not a pipe: nobody reads it while it runs
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    return proc.wait(timeout=timeout)


def adapter_weights(workdir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(workdir / OUT / "adapter_model.safetensors")


@pytest.mark.parametrize("via_worker", [False, True], ids=["direct", "warm_worker"])
def test_cmt_induce_sigterm_resume_matches_uninterrupted(world, tmp_path, request, via_worker):
    """SIGTERM to a running `cmt induce`: exit 143, checkpoint under resources/checkpoints, no adapter; the rerun
    resumes and its adapter equals, tensor for tensor, that of an uninterrupted run, which leaves no checkpoint.
    Through the warm worker, the signal is forwarded to the forked job and its status comes back, and the
    adapter equals the direct run's."""
    plain, stopped = tmp_path / "plain", tmp_path / "stopped"
    ck = stopped / "resources" / "checkpoints" / OUT / checkpoint.FILE
    path = request.getfixturevalue("warm_worker")[1] if via_worker else None
    uninterrupted = induce(world, plain)
    job = induce(world, stopped, path)
    try:
        check_preempt_and_resume(world, plain, stopped, ck, job, uninterrupted, path)
    finally:
        for proc in (job, uninterrupted):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check_preempt_and_resume(world, plain, stopped, ck, job, uninterrupted, warm_worker=None) -> None:
    deadline = time.monotonic() + 90
    while not ck.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    log = (stopped / "job.log").read_text
    assert ck.exists(), f"no checkpoint appeared; exit status {job.poll()}"
    job.send_signal(signal.SIGTERM)
    assert finish(job) == checkpoint.PREEMPTED_EXIT_CODE, log()
    assert "induce preempted: exit 143" in log() and "stopped by signal 15" in log()
    assert ("runner=warm-worker" in log()) == bool(warm_worker)
    assert ck.is_file() and not list(ck.parent.glob("*.tmp"))
    state = torch.load(ck, weights_only=True)
    assert 5 <= state["steps"] < state["total_steps"] == 360
    assert not (stopped / OUT).exists()

    assert finish(induce(world, stopped, warm_worker)) == 0, log()
    resumed_from = Path("resources/checkpoints") / OUT / checkpoint.FILE
    assert f"resuming from checkpoint {resumed_from} at step {state['steps']} of 360" in log()
    assert finish(uninterrupted) == 0, (plain / "job.log").read_text()
    # Completed runs leave no checkpoint behind (the uninterrupted one saved one every 5 steps).
    for workdir in (plain, stopped):
        assert not any((workdir / "resources" / "checkpoints").iterdir())

    resumed, reference = adapter_weights(stopped), adapter_weights(plain)
    assert_same_weights(resumed, reference)
    assert any(not torch.equal(t, torch.zeros_like(t)) for n, t in reference.items() if "lora_B" in n)
    manifests = [json.loads((w / OUT / "cmt_manifest.json").read_text()) for w in (plain, stopped)]
    for field in ("steps", "first_loss", "final_loss"):
        assert manifests[0][field] == manifests[1][field]
