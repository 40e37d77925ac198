"""One pending re-evaluation timer per Snakemake scheduler, where Snakemake would start one per round.

Snakemake's job scheduler (9.27.1, the pinned version) ends every scheduling round by starting a
`threading.Timer` that releases the scheduler one second later (`--max-jobs-per-timespan`, default 100/1s, so it
can submit more once the rate limit frees up). The timer's round starts a timer of its own, and so does every
round a finished job triggers. Each finished job thus adds a chain that runs a round every second until the
run ends: in a 200-job workflow of 0.4-s jobs on 2 cores, about 4,200 rounds where 241 do the same work. Each
round re-evaluates every ready job's params and resources and stats every input, so on the default toy grid the
Snakemake process took about 330 CPU seconds, a sixth of a 2-core machine, from the jobs (docs/benchmarks.md).

`install` replaces the scheduler's `_schedule_reevalutation` (sic) with one that starts a timer only when none
is pending that fires as soon. A round still follows every finished job and every timer, and a timer is still
pending after every round, so the rate limiter's wake-up is kept. The timer is a daemon thread: Snakemake's exit
does not wait for it. The onstart hook installs it in the process that schedules (workflow/rules/hooks.smk). A
Snakemake without the method is left as it is.
"""

from __future__ import annotations

import threading
import time

PATCHED = "_cmt_one_pending_timer"  # marks the replacement, so installing twice is harmless


def _schedule_one_reevaluation(self, delay: float) -> None:
    # Skip only while the latest timer is due, and no later than this one would be. Its due time, not
    # Thread.is_alive: a timer whose release already ran may still be alive, and skipping then would end the chain.
    now = time.monotonic()
    if now < getattr(self, "_cmt_timer_due", 0.0) <= now + delay:
        return
    self._cmt_timer_due = now + delay
    timer = threading.Timer(delay, self._open_jobs.release)
    timer.daemon = True
    timer.start()


setattr(_schedule_one_reevaluation, PATCHED, True)


def install() -> bool:
    """Replace the scheduler's re-evaluation timer; False where this Snakemake has none to replace."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    current = getattr(JobScheduler, "_schedule_reevalutation", None)
    if current is None:
        return False
    if not getattr(current, PATCHED, False):
        JobScheduler._schedule_reevalutation = _schedule_one_reevaluation
    return True
