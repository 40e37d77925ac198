"""The scheduler's re-evaluation timers (cmt.runtime.scheduler_timer): one pending at a time, not one per round."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from cmt.runtime import scheduler_timer

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "scheduler_rounds.py"
spec = importlib.util.spec_from_file_location("scheduler_rounds", BENCHMARK)
scheduler_rounds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scheduler_rounds)


class FakeScheduler:
    """What the replacement touches on Snakemake's JobScheduler: the semaphore that starts a round."""

    def __init__(self):
        self._open_jobs = threading.Semaphore(0)

    def releases(self) -> int:
        n = 0
        while self._open_jobs.acquire(blocking=False):
            n += 1
        return n


def test_rounds_in_a_burst_leave_one_timer():
    scheduler = FakeScheduler()
    for _ in range(50):  # fifty rounds within one timer's delay
        scheduler_timer._schedule_one_reevaluation(scheduler, 0.2)
    time.sleep(0.6)
    assert scheduler.releases() == 1  # Snakemake's own: 50


def test_the_chain_goes_on_after_a_timer_fired():
    scheduler = FakeScheduler()
    scheduler_timer._schedule_one_reevaluation(scheduler, 0.1)
    time.sleep(0.4)
    assert scheduler.releases() == 1
    scheduler_timer._schedule_one_reevaluation(scheduler, 0.1)  # the round that release started
    time.sleep(0.4)
    assert scheduler.releases() == 1


def test_a_sooner_timer_is_not_skipped():
    scheduler = FakeScheduler()
    scheduler_timer._schedule_one_reevaluation(scheduler, 30.0)  # e.g. --queue-input's wait
    scheduler_timer._schedule_one_reevaluation(scheduler, 0.1)
    time.sleep(0.5)
    assert scheduler.releases() == 1


def test_timers_do_not_hold_up_exit():
    scheduler = FakeScheduler()
    before = set(threading.enumerate())
    scheduler_timer._schedule_one_reevaluation(scheduler, 30.0)
    started = [t for t in threading.enumerate() if t not in before]
    assert len(started) == 1 and started[0].daemon
    started[0].cancel()


def test_install_replaces_the_pinned_snakemakes_method(monkeypatch):
    from snakemake.scheduling.job_scheduler import JobScheduler

    monkeypatch.setattr(JobScheduler, "_schedule_reevalutation", JobScheduler._schedule_reevalutation)
    assert scheduler_timer.install()
    assert JobScheduler._schedule_reevalutation is scheduler_timer._schedule_one_reevaluation
    assert scheduler_timer.install()  # twice: still the one replacement
    assert JobScheduler._schedule_reevalutation is scheduler_timer._schedule_one_reevaluation


def test_install_leaves_a_snakemake_without_the_method(monkeypatch):
    from snakemake.scheduling.job_scheduler import JobScheduler

    monkeypatch.delattr(JobScheduler, "_schedule_reevalutation")
    assert not scheduler_timer.install()
    assert not hasattr(JobScheduler, "_schedule_reevalutation")


@pytest.mark.integration
def test_snakemake_rounds_follow_the_jobs_not_their_square():
    """40 jobs of 0.3 s on 2 cores, run by the pinned Snakemake: with the replacement, a round per finished job
    plus one a second; with Snakemake's own timers, each finished job adds a 1-Hz chain of rounds."""
    stock, installed = scheduler_rounds.main(["--jobs", "40", "--sleep", "0.3"])
    bound = lambda run: 40 + 2 * run["round_span_seconds"] + 10  # noqa: E731
    assert installed["rounds"] <= bound(installed)
    assert stock["rounds"] > bound(stock)
