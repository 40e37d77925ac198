"""Job logging: a header line naming a rule's job, progress bars that reach the log (and a terminal), and the
job's timing line: how much of it was fixed cost (model loading, saving and hashing) and how much was work."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import warnings
from typing import TextIO

log = logging.getLogger("cmt")


class _Tee:
    """A text stream that writes to several streams (the job log and, when attached, the terminal)."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            # A log file gets one line per progress update instead of carriage-return redraws.
            s.write(text if s.isatty() else text.replace("\r", "\n").replace("\n\n", "\n"))
            s.flush()
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return any(getattr(s, "isatty", lambda: False)() for s in self.streams)


_progress_stream: TextIO = sys.stderr


# Deprecation warnings of the libraries that nothing in cmt can act on: they fill every job log. Each entry is
# (message regex, category, module regex) as for warnings.filterwarnings.
KNOWN_WARNINGS = (
    # peft reads model.is_gradient_checkpointing, and its prepare_model_for_kbit_training calls
    # gradient_checkpointing_enable: transformers 5 renamed both to activation_checkpointing.
    (r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated", FutureWarning, ""),
    # transformers' own FutureWarnings, raised inside transformers (a warning that names cmt's call stays).
    ("", FutureWarning, r"transformers(\.|$)"),
)


def filter_known_warnings() -> None:
    """Drop the libraries' known deprecation warnings (KNOWN_WARNINGS); any other warning reaches the log."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def setup(log_file: str | None, header: dict[str, object] | None) -> None:
    """Route logging and progress to `log_file` (plus the terminal if one is attached); write the header line
    when there is one (a rule's job; a command run by hand has none)."""
    global _progress_stream
    streams: list[TextIO] = []
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        streams.append(open(log_file, "a", buffering=1))  # noqa: SIM115 - lives for the whole job
    if not log_file or sys.stderr.isatty():
        streams.append(sys.stderr)
    _progress_stream = _Tee(*streams)  # type: ignore[assignment]
    # Library warnings belong in the job log, not on the controller's terminal.
    logging.captureWarnings(True)
    handler = logging.StreamHandler(_progress_stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if header is not None:
        log.info("job " + " ".join(f"{k}={v}" for k, v in header.items()))


def progress(iterable=None, **kwargs):
    """tqdm bound to the job's progress stream; updates at most every 2 s when not on a terminal."""
    from tqdm.auto import tqdm

    on_tty = _progress_stream.isatty()
    kwargs.setdefault("mininterval", 0.1 if on_tty else 2.0)
    kwargs.setdefault("dynamic_ncols", on_tty)
    kwargs.setdefault("ncols", None if on_tty else 100)
    return tqdm(iterable, file=_progress_stream, ascii=not on_tty, **kwargs)


# Seconds per fixed-cost stage of this job (`timed`); the rest of the job is its work (benchmarks/demo_cold.sh).
_stage_seconds: dict[str, float] = {}
_in_stage = False


def timed(stage: str):
    """Decorator: add the call's seconds to `stage` (only the outermost timed call counts, so a save that
    hashes its files is counted once, as a save)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            global _in_stage
            if _in_stage:
                return fn(*args, **kwargs)
            _in_stage, start = True, time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _in_stage = False
                _stage_seconds[stage] = _stage_seconds.get(stage, 0.0) + time.perf_counter() - start

        return inner

    return wrap


def timing_line(job_seconds: float) -> str:
    """`timing job_s=... load_s=... save_s=... work_s=...`: the job's seconds inside `main` split into the timed
    stages and the work (the rest). Process start and imports come before `main` and are not in job_s."""
    stages = {name: _stage_seconds.get(name, 0.0) for name in ("load", "save")}
    work = job_seconds - sum(stages.values())
    fields = {"job_s": job_seconds, **{f"{k}_s": v for k, v in stages.items()}, "work_s": work}
    return "timing " + " ".join(f"{k}={v:.2f}" for k, v in fields.items())
