"""The scheduler's loop on asyncio: each run is its own task with a timeout, so a slow or hung
job never delays another; a new job or an earlier deadline wakes the loop at once.

The clock is injected (``now()`` and ``sleep_until(t)``): the wall clock in the daemon (its
deadlines are saved in periodic.db and must mean the same after a restart), a fake one in the
unit tests.
"""

import asyncio
import logging
import time

from common.daemon import current_task
from common.errors import RpcTimeout, XapiError
from daemons.periodic.schedule import Schedule, check_spec

log = logging.getLogger("xapi-periodic")

DEFAULT_TIMEOUT_S = 60.0
MAX_SLEEP_S = 30.0      # the wall clock may jump: look again at least this often


class WallClock:
    """Seconds since the epoch; sleeps in slices so a clock jump is seen within MAX_SLEEP_S."""

    @staticmethod
    def now():
        return time.time()

    async def sleep_until(self, deadline):
        while True:
            left = deadline - time.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, MAX_SLEEP_S))


def describe_error(exc):
    if isinstance(exc, XapiError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Scheduler:
    """Runs the jobs of a Schedule. ``call(job, timeout_s)`` performs one run (an RPC to the
    job's target) and raises on failure; ``changed(urgent)`` is told when the jobs or their
    state changed (urgent: a registration, to be saved before it is acknowledged)."""

    def __init__(self, clock, call, changed=None, default_timeout_s=DEFAULT_TIMEOUT_S):
        self.clock = clock
        self.call = call
        self.changed = changed or (lambda urgent: None)
        self.default_timeout_s = default_timeout_s
        self.schedule = Schedule()
        self.tasks = {}               # Job -> its running task
        self._wake = asyncio.Event()
        self._waiters = {}            # Job -> futures of run_now callers

    # -- the operations ----------------------------------------------------------------------
    def register(self, name, kind, delay, period, target, method, args=None, timeout_s=None,
                 origin="operator"):
        spec = check_spec(name, kind, delay, period, target, method, args, timeout_s, origin)
        old = self.schedule.jobs.get(name)
        job, outcome = self.schedule.register(spec, self.clock.now())
        if outcome == "replaced":
            self._cancel(old)
        if outcome != "unchanged":
            log.info("job %s %s: %s %s %s%s, first run in %g s", name, outcome, kind, target,
                     method, f" every {spec['period']:g} s" if spec["period"] else "",
                     spec["delay"])
            self._wake.set()
        return job, outcome

    def deregister(self, name):
        job = self.schedule.deregister(name)
        if job is None:
            raise XapiError("PERIODIC_JOB_UNKNOWN", name,
                            ", ".join(sorted(self.schedule.jobs)) or "none")
        self._cancel(job)
        log.info("job %s deregistered", name)
        return job

    async def run_now(self, name):
        """Run ``name`` now, out of its grid, and wait for the run; its deadlines stay."""
        job = self.schedule.start_now(name, self.clock.now())
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job, []).append(fut)
        self._launch(job)
        return await fut

    def job_timeout(self, job):
        return job.timeout_s if job.timeout_s is not None else self.default_timeout_s

    # -- the loop ------------------------------------------------------------------------------
    async def run(self):
        """Start what is due, sleep until the next deadline or a wake-up; until cancelled."""
        try:
            while True:
                self._wake.clear()
                now = self.clock.now()
                for start in self.schedule.due(now):
                    if start.lateness_s > 1.0:
                        log.info("job %s started %.1f s after its deadline", start.job.name,
                                 start.lateness_s)
                    self._launch(start.job)
                await self._sleep(self.schedule.next_wakeup())
        finally:
            for job in list(self.tasks):
                self._cancel(job)

    async def _sleep(self, deadline):
        wake = asyncio.ensure_future(self._wake.wait())
        waits = {wake}
        if deadline is not None:
            waits.add(asyncio.ensure_future(self.clock.sleep_until(deadline)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    def _launch(self, job):
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job {job.name}")
        self.tasks[job] = task

    async def _run(self, job):
        current_task.set(f"job {job.name}")      # this task's log lines name the job
        started = self.clock.now()
        timeout_s = self.job_timeout(job)
        error = None
        call = asyncio.ensure_future(self.call(job, timeout_s))
        timer = asyncio.ensure_future(self.clock.sleep_until(started + timeout_s))
        try:
            done, _ = await asyncio.wait({call, timer}, return_when=asyncio.FIRST_COMPLETED)
            if call in done:
                exc = (asyncio.CancelledError("the call was cancelled") if call.cancelled()
                       else call.exception())
                # the bus client's own deadline is the job's: whichever timer fires first,
                # the operator reads the same verdict
                error = (None if exc is None else
                         _timeout_error(job, timeout_s) if isinstance(exc, RpcTimeout) else
                         describe_error(exc))
            else:
                call.cancel()
                error = _timeout_error(job, timeout_s)
        except asyncio.CancelledError:
            call.cancel()
            self._finish_waiters(job, None, "PERIODIC_JOB_CANCELLED: deregistered or replaced")
            raise
        finally:
            timer.cancel()
            if self.tasks.get(job) is asyncio.current_task():
                del self.tasks[job]
        ended = self.clock.now()
        if self.schedule.finished(job, started, ended, error):
            if error is not None:
                log.warning("job %s failed after %.3f s (failure %d of %d run(s)): %s",
                            job.name, ended - started, job.failures, job.runs, error)
            self.changed(False)
        self._finish_waiters(job, ended - started, error)
        self._wake.set()       # a oneshot is done, a skipped deadline may be the next one

    def _finish_waiters(self, job, duration_s, error):
        for fut in self._waiters.pop(job, []):
            if not fut.done():
                fut.set_result({"name": job.name, "ok": error is None, "error": error,
                                "duration_s": None if duration_s is None
                                else round(duration_s, 6)})

    def _cancel(self, job):
        job.running = False
        task = self.tasks.pop(job, None)
        if task is not None:
            task.cancel()

    # -- views ----------------------------------------------------------------------------------
    def listing(self):
        """Every job: its registration, next run, last run and counters, by name."""
        out = []
        for name in sorted(self.schedule.jobs):
            job = self.schedule.jobs[name]
            entry = job.spec()
            entry.update(job.state())
            entry.pop("anchor")
            entry.pop("index")
            entry["next_run"] = job.next_deadline()
            entry["running"] = job.running
            entry["effective_timeout_s"] = self.job_timeout(job)
            out.append(entry)
        return out


def _timeout_error(job, timeout_s):
    return (f"PERIODIC_JOB_TIMEOUT: no answer from {job.target} to {job.method} "
            f"within {timeout_s:g} s ({job.target} down or busy)")
