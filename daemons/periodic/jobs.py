"""The start-up jobs: what the seed's step "Register periodic functions" (xapi's
Xapi_periodic_scheduler_init.register) puts on the scheduler, as data.

A job is registered only when its target method exists; the others carry ``pending``, the
work that builds their target, and the step's ``pending`` text in daemons/init/steps.py names
them. Periods come from xapi.conf (``period_option``); the delays are xapi's where it has one.
The command that registers them (periodic.register_startup_jobs) is recorded by xapi-init and
replayed after a restart; it is idempotent: an unchanged job keeps its deadlines and counters,
and a start-up job no longer wanted (another role, a period changed) is replaced or removed.
"""

from dataclasses import dataclass

BOTH, MASTER = "both", "master"


@dataclass(frozen=True)
class StartupJob:
    name: str
    what: str                      # xapi's words for it
    role: str                      # both | master
    target: str = ""               # program
    method: str = ""
    period_option: str = ""        # option of xapi.conf holding the period
    delay_s: float | None = None   # None: one period
    pending: str | None = None     # the later work that builds its target method

    def delay(self, period):
        return period if self.delay_s is None else self.delay_s


STARTUP_JOBS = (
    StartupJob("db-flush", "flush the pool database to disk", BOTH, "xapi-db", "db.flush_now",
               "periodic-flush-interval"),
    StartupJob("rrd-flush", "save the RRD archives changed since their last save", BOTH,
               "xapi-rrd", "rrd.flush", "periodic-flush-interval"),
    StartupJob("log-rotate", "rotate log files past log-max-size-bytes", BOTH, "xapi-periodic",
               "periodic.rotate_logs", "periodic-log-rotate-interval"),
    StartupJob("heartbeat", "periodic scheduler heartbeat", BOTH, "xapi-periodic",
               "periodic.heartbeat", "periodic-heartbeat-interval", delay_s=240.0),
    # xapi's job deletes OS bridges (xenbr*, created by interface-reconfigure) that no PIF,
    # VIF or network uses; it never deletes network records. The simulated hypervisor makes no
    # OS bridges, and the real host's are not ours to delete: nothing to collect until PIF
    # plug creates bridges.
    StartupJob("bridge-gc", "garbage-collect network bridges", BOTH,
               pending="platform work: no OS bridges are made here (PIF plug makes none), so "
                       "there are none to collect"),
    # xapi's master asks every host to back up its RRDs; the other hosts' part is pool work
    StartupJob("rrd-backup", "back up RRDs (daily)", MASTER, "xapi-rrd", "rrd.backup",
               "rrd-backup-interval", delay_s=3600.0),
    # xapi: every session_revalidation_interval, first after 5 min (daemons/api/revalidate.py)
    StartupJob("session-revalidation", "revalidate externally-authenticated sessions", MASTER,
               "xapi-api", "api.revalidate_sessions", "session-revalidation-interval",
               delay_s=300.0),
    # xapi's SR scanning thread: sleeps its period (30 s) then scans; the step "Start SR
    # scanning thread" runs its first pass
    StartupJob("sr-scan", "scan the SRs marked auto-scan or dirty", MASTER, "xapi-api",
               "api.scan_srs", "sr-scan-interval"),
    StartupJob("blob-sync", "synchronise RRDs/messages/blobs to the slaves (daily)", MASTER,
               pending="pool work"),
)


def jobs_for(role):
    """(built, pending) start-up jobs for a host of ``role`` (master, slave or broken)."""
    wanted = [job for job in STARTUP_JOBS if job.role == BOTH or job.role == role]
    return ([job for job in wanted if job.pending is None],
            [job for job in wanted if job.pending is not None])
