"""`cmt COMMAND`: the command line.

The user's commands (cmt.cli.tools) and the pipeline's, which the Snakemake rules run (cmt.cli.pipeline and
cmt.cli.reports), only parse their arguments and call one function of the layer below; `main` sets up the job
log, runs the command, and turns its outcome into an exit status. `cmt.cli:main` is the console entry point and
the warm worker's entry point (cmt.runtime.worker).
"""

from __future__ import annotations

import logging
import os
import sys
import time

# Library progress bars belong in the job log, not on the controller's terminal. Set here, before any library
# is imported: huggingface_hub reads it once, at import. The warm worker imports this module before it preloads
# the libraries for the same reason.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from cmt.cli.parser import build_parser  # after the variable above, which libraries read

__all__ = ["build_parser", "main"]

log = logging.getLogger("cmt")


def _setup(args, **header) -> None:
    """Threads and device for a model command, then the job log. The header line (`job cmd=... job=...`) is
    written only for a rule's job, which passes --log and --job; a command run by hand prints none."""
    from cmt.runtime import runlog, worker

    device = None
    if getattr(args, "needs_device", False):
        from cmt.models.loading import pick_device, set_threads
        from cmt.runtime.allocator import in_use

        set_threads(args.threads)
        device = pick_device()
        header["malloc"] = in_use()  # timings differ by allocator; numbers do not (cmt.runtime.allocator)
    if worker.FORKED_JOB:
        header["runner"] = "warm-worker"
    by_rule = bool(args.log or args.job)
    fields = {"cmd": args.command, "job": args.job or "-", "device": device or "none", **header}
    runlog.setup(args.log, fields if by_rule else None)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `cmt` command itself: a warm worker, where one runs, saves the imports
        from cmt.runtime import worker

        status = worker.delegate(sys.argv[1:])
        if status is not None:
            return status
    from cmt.runtime import runlog

    started = time.perf_counter()
    runlog.filter_known_warnings()
    args = build_parser().parse_args(argv)
    seed = getattr(args, "seed", None)
    _setup(args, **({"seed": seed} if seed is not None else {}))
    try:
        args.func(args)
    except (
        SystemExit
    ) as stop:  # a rule's job: its one-line refusal goes into the job log too, not only stderr
        if isinstance(stop.code, str) and (getattr(args, "log", None) or getattr(args, "job", None)):
            log.error("%s", stop.code)
        raise
    except Exception as err:
        from cmt.runtime.checkpoint import Preempted

        if isinstance(err, Preempted):  # SIGTERM (preemption, time limit): checkpoint saved, a rerun resumes
            log.error("%s preempted: exit %d; a rerun resumes from %s", args.command, err.exit_code, err.path)
            return err.exit_code
        log.exception("%s failed", args.command)
        return 1
    if getattr(args, "job", None):  # a rule's job: where its seconds went (benchmarks/demo_cold.sh reads it)
        log.info("%s", runlog.timing_line(time.perf_counter() - started))
    return 0
