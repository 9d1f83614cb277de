"""The scheduler's asyncio loop (daemons/periodic/scheduler.py) on a fake clock: runs as their
own tasks, timeouts, wake-ups, deregistration during a run, run_now."""

import asyncio

import pytest

from common.errors import XapiError
from daemons.periodic.scheduler import Scheduler

SETTLE_TURNS = 50


class FakeClock:
    """Time moves only when the test says; sleepers wake in deadline order."""

    def __init__(self, start=1000.0):
        self.t = start
        self.sleepers = []           # [deadline, future]

    def now(self):
        return self.t

    async def sleep_until(self, deadline):
        if deadline <= self.t:
            return
        fut = asyncio.get_running_loop().create_future()
        entry = [deadline, fut]
        self.sleepers.append(entry)
        try:
            await fut
        finally:
            if entry in self.sleepers:
                self.sleepers.remove(entry)

    def _wake_due(self):
        for deadline, fut in list(self.sleepers):
            if deadline <= self.t and not fut.done():
                fut.set_result(None)

    async def advance_to(self, t):
        """Move to ``t`` through every sleeper's deadline on the way, letting the loop settle
        at each, as a real clock would."""
        await settle()        # what the test just did (a registration) is seen first
        while True:
            pending = [d for d, f in self.sleepers if not f.done() and d <= t]
            if not pending:
                break
            self.t = max(self.t, min(pending))
            self._wake_due()
            await settle()
        self.t = max(self.t, t)
        self._wake_due()
        await settle()

    async def jump_to(self, t):
        """Move to ``t`` at once (a stalled loop, a suspended machine)."""
        self.t = t
        self._wake_due()
        await settle()


async def settle():
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


class Targets:
    """Runs that take ``durations[name]`` fake seconds, or raise ``errors[name]``."""

    def __init__(self, clock):
        self.clock = clock
        self.durations = {}
        self.errors = {}
        self.starts = {}
        self.cancelled = []

    async def call(self, job, timeout_s):
        self.starts.setdefault(job.name, []).append(self.clock.now())
        try:
            await self.clock.sleep_until(self.clock.now() + self.durations.get(job.name, 0.0))
        except asyncio.CancelledError:
            self.cancelled.append(job.name)
            raise
        if job.name in self.errors:
            raise self.errors[job.name]
        return "ok"


@pytest.fixture
def rig():
    async def make(**kwargs):
        clock = FakeClock()
        targets = Targets(clock)
        sched = Scheduler(clock, targets.call, default_timeout_s=kwargs.get("timeout", 60.0))
        task = asyncio.get_running_loop().create_task(sched.run())
        await settle()
        return clock, targets, sched, task
    return make


def run(coro):
    return asyncio.run(coro)


async def stop(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_no_drift_over_1000_periods_with_runs_that_take_time(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.durations["j"] = 3.0
        sched.register("j", "periodic", 5.0, 10.0, "xapi-db", "db.flush_now")
        t0 = clock.now()
        await clock.advance_to(t0 + 5.0 + 10.0 * 999 + 4.0)
        await stop(task)
        return t0, targets, sched.schedule.jobs["j"]
    t0, targets, job = run(main())
    starts = targets.starts["j"]
    assert len(starts) == 1000
    for k, started in enumerate(starts):
        assert started == pytest.approx(t0 + 5.0 + 10.0 * k, abs=1e-6), k
    assert job.runs == 1000 and job.failures == 0 and job.skipped == 0
    assert job.max_lateness_s == pytest.approx(0.0, abs=1e-6)


def test_missed_runs_are_coalesced_never_a_burst(rig):
    async def main():
        clock, targets, sched, task = await rig()
        sched.register("j", "periodic", 10.0, 10.0, "xapi-db", "db.flush_now")
        t0 = clock.now()
        await clock.advance_to(t0 + 10.0)
        await clock.jump_to(t0 + 65.0)           # deadlines 20..60 passed unseen
        await clock.advance_to(t0 + 69.0)
        mid = list(targets.starts["j"])
        await clock.advance_to(t0 + 70.0)
        await stop(task)
        return t0, mid, targets.starts["j"], sched.schedule.jobs["j"]
    t0, mid, starts, job = run(main())
    assert mid == [t0 + 10.0, t0 + 65.0]          # one run for five missed deadlines
    assert starts == [t0 + 10.0, t0 + 65.0, t0 + 70.0]
    assert job.skipped == 4


def test_a_slow_job_does_not_delay_others(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.durations.update(slow=35.0, fast=0.1)
        sched.register("slow", "periodic", 0.0, 10.0, "xapi-db", "db.flush_now")
        sched.register("fast", "periodic", 0.0, 1.0, "xapi-db", "sys.health")
        t0 = clock.now()
        await clock.advance_to(t0 + 45.5)
        await stop(task)
        return t0, targets, sched.schedule.jobs
    t0, targets, jobs = run(main())
    assert targets.starts["fast"] == [pytest.approx(t0 + k) for k in range(46)]
    assert jobs["fast"].max_lateness_s == pytest.approx(0.0, abs=1e-6)
    # slow ran at 0 until 35: its deadlines 10, 20, 30 were skipped, not queued.
    assert targets.starts["slow"] == [t0, t0 + 40.0]
    assert jobs["slow"].skipped == 3 and jobs["slow"].runs == 1


def test_a_hung_job_times_out_counts_as_failed_and_runs_at_its_next_deadline(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.durations["hung"] = 1e9
        sched.register("hung", "periodic", 0.0, 10.0, "xapi-mailer", "sys.health", timeout_s=4.0)
        t0 = clock.now()
        await clock.advance_to(t0 + 5.0)
        job = sched.schedule.jobs["hung"]
        after_timeout = (job.runs, job.failures, job.running, job.last_error,
                         job.last_duration_s, list(targets.cancelled))
        await clock.advance_to(t0 + 10.0)
        await stop(task)
        return t0, after_timeout, targets
    t0, after_timeout, targets = run(main())
    runs, failures, running, error, duration, cancelled = after_timeout
    assert (runs, failures, running) == (1, 1, False)
    assert error.startswith("PERIODIC_JOB_TIMEOUT")
    assert "no answer from xapi-mailer to sys.health within 4 s" in error
    assert duration == pytest.approx(4.0)
    assert cancelled == ["hung"]              # the run was abandoned at its timeout
    assert targets.starts["hung"] == [t0, t0 + 10.0]


def test_a_failing_target_is_counted_with_its_error_and_retried(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.errors["j"] = XapiError("RPC_TIMEOUT", "ipc://r/xapi-db.rpc", "db.flush_now", "2")
        sched.register("j", "periodic", 0.0, 10.0, "xapi-db", "db.flush_now")
        t0 = clock.now()
        await clock.advance_to(t0 + 20.0)
        await stop(task)
        return sched.schedule.jobs["j"]
    job = run(main())
    assert job.runs == 3 and job.failures == 3
    assert job.last_error == "RPC_TIMEOUT: ipc://r/xapi-db.rpc db.flush_now 2"


def test_a_new_job_and_an_earlier_deadline_wake_the_loop_at_once(rig):
    async def main():
        clock, targets, sched, task = await rig()
        sched.register("far", "periodic", 3600.0, 3600.0, "xapi-db", "db.flush_now")
        await settle()
        t0 = clock.now()
        sched.register("now", "oneshot", 0.0, None, "xapi-db", "db.flush_now")
        await settle()                       # no time passes
        first = dict(targets.starts)
        sched.register("soon", "periodic", 2.0, 100.0, "xapi-db", "db.flush_now")
        await clock.advance_to(t0 + 2.0)
        await stop(task)
        return t0, first, targets.starts
    t0, first, starts = run(main())
    assert first == {"now": [t0]}
    assert starts["soon"] == [t0 + 2.0] and "far" not in starts


def test_deregister_during_a_run_cancels_it_and_it_never_runs_again(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.durations["j"] = 5.0
        sched.register("j", "periodic", 0.0, 10.0, "xapi-db", "db.flush_now")
        t0 = clock.now()
        await clock.advance_to(t0 + 2.0)
        job = sched.schedule.jobs["j"]
        assert job.running
        sched.deregister("j")
        await settle()
        with pytest.raises(XapiError):
            sched.deregister("j")
        await clock.advance_to(t0 + 50.0)
        await stop(task)
        return t0, targets, job, sched
    t0, targets, job, sched = run(main())
    assert targets.starts["j"] == [t0] and targets.cancelled == ["j"]
    assert job.runs == 0 and not sched.tasks and sched.listing() == []


def test_replacing_a_running_job_cancels_the_old_run(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.durations["j"] = 5.0
        sched.register("j", "periodic", 0.0, 10.0, "xapi-db", "db.flush_now")
        t0 = clock.now()
        await clock.advance_to(t0 + 1.0)
        sched.register("j", "periodic", 0.0, 20.0, "xapi-db", "db.flush_now")
        await clock.advance_to(t0 + 8.0)
        await stop(task)
        return t0, targets, sched.schedule.jobs["j"]
    t0, targets, job = run(main())
    assert targets.cancelled == ["j"]
    assert targets.starts["j"] == [t0, t0 + 1.0]
    assert job.period == 20.0 and job.runs == 1


def test_run_now_waits_for_the_run_and_keeps_the_schedule(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.durations["j"] = 1.0
        sched.register("j", "periodic", 100.0, 100.0, "xapi-db", "db.flush_now")
        t0 = clock.now()
        waiter = asyncio.ensure_future(sched.run_now("j"))
        await settle()
        with pytest.raises(XapiError) as err:
            await sched.run_now("j")
        assert err.value.code == "PERIODIC_JOB_RUNNING"
        await clock.advance_to(t0 + 1.0)
        result = await waiter
        with pytest.raises(XapiError) as unknown:
            await sched.run_now("nope")
        listing = sched.listing()
        await stop(task)
        return t0, result, unknown.value, listing
    t0, result, unknown, listing = run(main())
    assert result == {"name": "j", "ok": True, "error": None, "duration_s": 1.0}
    assert unknown.code == "PERIODIC_JOB_UNKNOWN"
    [entry] = listing
    assert entry["next_run"] == t0 + 100.0 and entry["runs"] == 1 and entry["last_run"] == t0
    assert entry["effective_timeout_s"] == 60.0


def test_stopping_the_loop_cancels_running_jobs(rig):
    async def main():
        clock, targets, sched, task = await rig()
        targets.durations["j"] = 100.0
        sched.register("j", "periodic", 0.0, 10.0, "xapi-db", "db.flush_now")
        await clock.advance_to(clock.now() + 1.0)
        await stop(task)
        await settle()
        return targets, sched
    targets, sched = run(main())
    assert targets.cancelled == ["j"] and not sched.tasks
