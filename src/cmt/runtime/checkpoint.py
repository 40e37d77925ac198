"""Resumable training: checkpoints kept outside a job's declared outputs, and a clean stop on SIGTERM.

Snakemake deletes a job's declared outputs before it starts the job, so a checkpoint inside the output directory
would never survive to be resumed. Checkpoints therefore live under `resources/checkpoints/<output dir>` (relative
to the working directory, which is the workflow's). A checkpoint carries a key (`job_key`): the hash of the
training settings, the seed, the encoded examples and the model (its config, its LoRA config and the names,
shapes and initial values of its trainable tensors). A checkpoint whose key differs is never resumed.

torch is imported inside the functions: the CLI imports this module only when a job fails, to recognise
`Preempted`, and that must not fail on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import tempfile
import threading
from array import array
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("resources/checkpoints")
FILE = "checkpoint.pt"
FORMAT = 2  # 2: the key covers any token fields and the loss; states carry epoch means
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a job killed by SIGTERM


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; rerunning the same job resumes from it."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, message: str, path: Path, step: int):
        super().__init__(message)
        self.path = path
        self.step = step


def checkpoint_dir_for(out_dir: str | os.PathLike) -> Path:
    """`resources/checkpoints/<out_dir>`: out_dir relative to the working directory (or to / if outside it)."""
    path = Path(os.path.abspath(out_dir))
    try:
        rel = path.relative_to(Path.cwd())
    except ValueError:
        rel = path.relative_to(path.anchor)
    if rel == Path("."):
        raise ValueError(f"{out_dir}: the working directory itself cannot be a training output")
    return ROOT / rel


def _json_default(value):
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _add_tokens(h, example) -> None:
    """Token lists (and nested dicts of them, such as ACT/BCT pairs) in key order."""
    for name in sorted(example):
        value = example[name]
        h.update(name.encode() + b"\0")
        if isinstance(value, dict):
            _add_tokens(h, value)
        else:
            h.update(len(value).to_bytes(8, "little"))
            h.update(array("q", [int(v) for v in value]).tobytes())


def job_key(model, examples: list[dict], settings, seed: int, pad_id: int, loss_key: object = None) -> str:
    """sha256 of everything that determines a training run's result, apart from the frozen base weights.

    The frozen weights are identified by the model config and by the checkpoint's path (which names the model);
    hashing billions of frozen parameters on every start would cost more than it protects.
    """
    import torch

    h = hashlib.sha256()

    def add(obj) -> None:
        h.update(json.dumps(obj, sort_keys=True, default=_json_default).encode())
        h.update(b"\0")

    config = getattr(model, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else {}
    config.pop("_name_or_path", None)
    peft = {name: c.to_dict() for name, c in sorted(getattr(model, "peft_config", {}).items())}
    add({"format": FORMAT, "settings": asdict(settings), "seed": seed, "pad_id": pad_id, "loss": loss_key})
    add({"model": type(model).__name__, "config": config, "peft": peft, "n_examples": len(examples)})
    for e in examples:
        _add_tokens(h, e)
    for name, p in model.named_parameters():
        if p.requires_grad:
            add([name, list(p.shape), str(p.dtype)])
            with torch.no_grad():
                h.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state(device) -> dict:
    """Every random generator the training loop or the model may draw from (dropout, shuffling, sampling)."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if device.type == "cuda" and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("checkpoint: %d CUDA generators saved but %d devices here; CUDA RNG not restored",
                        len(state["cuda"]), torch.cuda.device_count())  # fmt: skip
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def save(directory: str | os.PathLike, state: dict) -> Path:
    """Write `state` to `directory/checkpoint.pt` atomically: a temporary sibling, fsync, then os.replace."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(directory: str | os.PathLike, key: str, desc: str) -> dict | None:
    """The checkpoint in `directory` if it was made for the job `key`; None (with a log line why) otherwise."""
    import torch

    directory = Path(directory)
    for stale in directory.glob(f".{FILE}.*.tmp"):  # left by a save that was killed half-way
        stale.unlink(missing_ok=True)
    path = directory / FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: start over rather than fail the job
        log.warning("%s: ignoring unreadable checkpoint %s (%s); training from the start", desc, path, err)
        return None
    if state.get("format") != FORMAT or state.get("key") != key:
        log.warning(
            "%s: ignoring checkpoint %s: it was made for a different job (settings, seed, data or initial "
            "weights differ: key %s, this job %s); training from the start and overwriting it",
            desc, path, str(state.get("key"))[:12], key[:12],
        )  # fmt: skip
        return None
    return state


def remove(directory: str | os.PathLike) -> None:
    """Delete the checkpoint in `directory`, then the directory and its parents under ROOT while empty."""
    directory = Path(directory)
    for path in [directory / FILE, *directory.glob(f".{FILE}.*.tmp")]:
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:  # not empty (someone else's files) or already gone
        return
    root = Path(os.path.abspath(ROOT))
    parent = Path(os.path.abspath(directory)).parent
    while root in parent.parents:
        try:
            parent.rmdir()
        except OSError:  # another job's checkpoints live below it
            return
        parent = parent.parent


class StopRequest:
    """Set when SIGTERM arrives; the training loop checks it between optimizer steps."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.requested = True
        self.signum = signum


@contextlib.contextmanager
def stop_on_sigterm(enabled: bool = True) -> Iterator[StopRequest]:
    """Catch SIGTERM while training (main thread only), restoring the previous handler afterwards."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
