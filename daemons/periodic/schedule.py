"""The scheduler's pure core: jobs, their fixed-rate deadlines, and what is due at a time.

No clock and no I/O here: every method takes ``now`` (seconds on the scheduler's clock, the
wall clock in the daemon, a fake one in the tests), so the timing rules are tested exactly.

Rules (xapi's single thread lets one slow job delay all and lets periods drift; we do not):
- a periodic job's deadlines are a fixed grid ``anchor + k * period`` (the anchor is the first
  deadline, registration time + delay): a late or slow run never moves the next deadline;
- deadlines that passed without a run (the scheduler was down, stalled, or the clock jumped
  forward) are coalesced into one run, never a burst; they are counted in ``skipped``;
- a job still running at its deadline is not started again: the deadline is skipped;
- a deadline further ahead than the job could ever have set (the wall clock went back) is
  brought back to one period (or the delay) from now.
"""

import json
import math
from dataclasses import dataclass, field

from common.errors import XapiError
from common.paths import PROGRAMS

ONESHOT, PERIODIC = "oneshot", "periodic"
KINDS = (ONESHOT, PERIODIC)
MIN_PERIOD_S = 0.05          # shorter periods would only busy the loop
MAX_NAME_LEN = 128
# The registration: what a job is. Two registrations with equal specs are the same job.
SPEC_FIELDS = ("name", "kind", "delay", "period", "target", "method", "args", "timeout_s",
               "origin")
# What the scheduler learnt by running it (kept across restarts too).
STATE_FIELDS = ("anchor", "index", "done", "runs", "failures", "skipped", "last_run",
                "last_duration_s", "last_error", "last_lateness_s", "max_lateness_s")
ORIGINS = ("operator", "startup")


def _invalid(key, value, why):
    return XapiError("INVALID_VALUE", key, repr(value), why)


def _number(key, value, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(key, value, "expected a finite number of seconds")
    if value < minimum:
        raise _invalid(key, value, f"must be at least {minimum:g}")
    return float(value)


def check_spec(name, kind, delay, period, target, method, args=None, timeout_s=None,
               origin="operator"):
    """The registration as a dict of SPEC_FIELDS, every value checked; a bad one is an
    INVALID_VALUE error naming the key, the value and what was expected."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN or \
            not name.isprintable() or name != name.strip():
        raise _invalid("name", name, f"expected a printable name of 1 to {MAX_NAME_LEN} "
                       "characters without surrounding spaces")
    if kind not in KINDS:
        raise _invalid("kind", kind, f"expected one of {', '.join(KINDS)}")
    delay = _number("delay", delay, 0.0)
    if kind == PERIODIC:
        period = _number("period", period, MIN_PERIOD_S)
    elif period not in (None, 0, 0.0):
        raise _invalid("period", period, "a oneshot job has no period (give none or 0)")
    else:
        period = None
    if target not in PROGRAMS:
        raise _invalid("target", target, f"expected one of {', '.join(PROGRAMS)}")
    if not isinstance(method, str) or not method or any(c.isspace() for c in method):
        raise _invalid("method", method, "expected a method name such as db.flush_now")
    args = [] if args is None else args
    if not isinstance(args, (list, tuple)):
        raise _invalid("args", args, "expected a list of arguments")
    try:
        args = json.loads(json.dumps(list(args), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _invalid("args", args, f"must be plain values (strings, numbers, booleans, "
                       f"null, lists, maps with string keys): {exc}") from None
    timeout_s = _number("timeout_s", timeout_s, 0.001, allow_none=True)
    if origin not in ORIGINS:
        raise _invalid("origin", origin, f"expected one of {', '.join(ORIGINS)}")
    return {"name": name, "kind": kind, "delay": delay, "period": period, "target": target,
            "method": method, "args": args, "timeout_s": timeout_s, "origin": origin}


@dataclass(eq=False)
class Job:
    """One registered job. Identity matters: a job replaced or deregistered while it runs is a
    different object from the one registered after it."""

    name: str
    kind: str
    delay: float
    period: float | None
    target: str
    method: str
    args: list = field(default_factory=list)
    timeout_s: float | None = None
    origin: str = "operator"
    anchor: float = 0.0          # the first deadline (registration time + delay)
    index: int = 0               # the next deadline is anchor + index * period
    done: bool = False           # a oneshot that has run
    runs: int = 0
    failures: int = 0
    skipped: int = 0             # deadlines without a run: coalesced, or the job was running
    last_run: float | None = None
    last_duration_s: float | None = None
    last_error: str | None = None
    last_lateness_s: float | None = None
    max_lateness_s: float | None = None
    running: bool = False        # not persisted: nothing runs in a process that just started

    def spec(self):
        return {name: getattr(self, name) for name in SPEC_FIELDS}

    def state(self):
        return {name: getattr(self, name) for name in STATE_FIELDS}

    def deadline(self, index=None):
        index = self.index if index is None else index
        if self.kind == ONESHOT:
            return self.anchor
        return self.anchor + index * self.period

    def next_deadline(self):
        """The next deadline, or None for a oneshot that has run or is running."""
        if self.kind == ONESHOT and (self.done or self.running):
            return None
        return self.deadline()

    def first_index_after(self, now):
        """The index of the first deadline strictly after ``now`` (and not before the next)."""
        k = max(self.index, int(math.floor((now - self.anchor) / self.period)) + 1)
        while self.deadline(k) <= now:        # floating point: make sure it is after
            k += 1
        while k > self.index and self.deadline(k - 1) > now:
            k -= 1
        return k


@dataclass
class Start:
    """A run the core wants started: the job, the deadline it answers, how late it is."""

    job: Job
    deadline: float
    lateness_s: float


class Schedule:
    """The registered jobs by name and the rules above."""

    def __init__(self):
        self.jobs = {}

    # -- registrations -----------------------------------------------------------------------
    def register(self, spec, now):
        """Add or replace a job; (the job, "new" | "unchanged" | "replaced"). An equal spec
        keeps the job, its deadlines and its counters (registration is idempotent)."""
        old = self.jobs.get(spec["name"])
        if old is not None and old.spec() == spec:
            return old, "unchanged"
        job = Job(**spec, anchor=now + spec["delay"])
        self.jobs[job.name] = job
        return job, "new" if old is None else "replaced"

    def restore(self, spec, state):
        """A job as it was saved (periodic.db)."""
        job = Job(**spec, **state)
        self.jobs[job.name] = job
        return job

    def deregister(self, name):
        """Remove ``name``; the removed job (None if there was none)."""
        return self.jobs.pop(name, None)

    def current(self, job):
        """Whether ``job`` is still the registered job of its name."""
        return self.jobs.get(job.name) is job

    # -- time ---------------------------------------------------------------------------------
    def next_wakeup(self):
        """The earliest deadline of any job, or None when nothing is scheduled."""
        deadlines = [d for job in self.jobs.values() if (d := job.next_deadline()) is not None]
        return min(deadlines, default=None)

    def due(self, now):
        """The runs to start at ``now``; deadlines passed are consumed (coalesced into one run,
        or skipped for a job still running). Also pulls back deadlines the clock jumped away
        from. Returns a list of Start."""
        starts = []
        for job in self.jobs.values():
            self._pull_back(job, now)
            deadline = job.next_deadline()
            if deadline is None or deadline > now:
                continue
            if job.kind == ONESHOT:
                starts.append(self._start(job, deadline, now))
                continue
            after = job.first_index_after(now)
            passed = after - job.index
            job.index = after
            if job.running:
                job.skipped += passed
                continue
            job.skipped += passed - 1
            starts.append(self._start(job, deadline, now))
        return starts

    def _pull_back(self, job, now):
        deadline = job.next_deadline()
        if deadline is None:
            return
        furthest = job.delay if (job.kind == ONESHOT or job.index == 0) else job.period
        if deadline - now > furthest + 1e-6:
            # the clock went back: keep the grid's shape from here
            job.anchor = now + furthest - (job.index * job.period if job.kind == PERIODIC else 0)

    @staticmethod
    def _start(job, deadline, now):
        job.running = True
        lateness = max(0.0, now - deadline)
        job.last_lateness_s = lateness
        job.max_lateness_s = max(job.max_lateness_s or 0.0, lateness)
        return Start(job, deadline, lateness)

    def start_now(self, name, now):
        """A run out of the grid (run_now): the job, marked running; its deadlines stay."""
        job = self.jobs.get(name)
        if job is None:
            raise XapiError("PERIODIC_JOB_UNKNOWN", name, ", ".join(sorted(self.jobs)) or "none")
        if job.running:
            raise XapiError("PERIODIC_JOB_RUNNING", name, "a job still running is not started "
                            "again")
        job.running = True
        return job

    def finished(self, job, started, ended, error):
        """Account for a run of ``job`` that started at ``started`` and ended at ``ended``,
        ``error`` None or what went wrong. False when the job was deregistered or replaced
        meanwhile (the result belongs to no registered job)."""
        job.running = False
        if not self.current(job):
            return False
        job.runs += 1
        job.last_run = started
        job.last_duration_s = max(0.0, ended - started)
        job.last_error = error
        if error is not None:
            job.failures += 1
        if job.kind == ONESHOT:
            job.done = True
        return True
