"""xapi-periodic: the periodic scheduler. Named oneshot and periodic jobs, each an RPC to some
daemon of the tree (or to one of this daemon's own methods), on fixed-rate deadlines that do not
drift, each run its own task with a timeout; kept in var/lib/xcp/periodic.db across restarts."""

import asyncio
import concurrent.futures

from common.daemon import EXIT_ERROR, EXIT_OK, Daemon
from common.errors import ConfigError, XapiError
from common.rpc import AsyncRpcClient
from daemons.periodic import jobs as jobs_mod
from daemons.periodic import logrotate
from daemons.periodic.scheduler import Scheduler, WallClock
from daemons.periodic.store import Store, encode

SAVE_EVERY_S = 1.0      # run results are saved at most this often (registrations at once)
POSITIVE_OPTIONS = ("periodic-job-timeout", "periodic-flush-interval", "rrd-backup-interval",
                    "periodic-log-rotate-interval", "periodic-heartbeat-interval",
                    "sr-scan-interval", "session-revalidation-interval")


class PeriodicDaemon(Daemon):
    """The periodic scheduler: periodic.register, deregister, list, run_now; the start-up jobs
    (periodic.register_startup_jobs, a command of xapi-init); log rotation and the heartbeat."""

    program = "xapi-periodic"

    async def setup(self):
        self.check_options()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="periodic")
        self.clients = {}
        self.store = Store(self.paths.periodic_db)
        self._dirty = asyncio.Event()
        self._save_lock = asyncio.Lock()
        self.scheduler = Scheduler(WallClock(), self.call_target, self.mark_dirty,
                                   default_timeout_s=self.config["periodic-job-timeout"])
        for spec, state in await self.in_executor(self.store.load):
            self.scheduler.schedule.restore(spec, state)
        if self.scheduler.schedule.jobs:
            self.log.info("%d job(s) loaded from %s: %s", len(self.scheduler.schedule.jobs),
                          self.paths.periodic_db, ", ".join(sorted(self.scheduler.schedule.jobs)))
        self.register("periodic.register", self.register_job)
        self.register("periodic.deregister", self.deregister_job)
        self.register("periodic.list", self.scheduler.listing)
        self.register("periodic.run_now", self.scheduler.run_now)
        self.register("periodic.register_startup_jobs", self.register_startup_jobs, command=True)
        self.register("periodic.rotate_logs", self.rotate_logs)
        self.register("periodic.heartbeat", self.heartbeat)
        loop = asyncio.get_running_loop()
        self.loops = [loop.create_task(self.scheduler.run(), name="scheduler"),
                      loop.create_task(self.saver(), name="saver")]

    async def serve(self):
        """Until SIGTERM; if the scheduler loop or the saver ever dies, exit (crash-only:
        supervisord starts a new process, which loads periodic.db) rather than serve on with
        no job running."""
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({stop, *self.loops}, return_when=asyncio.FIRST_COMPLETED)
        if stop in done:
            return EXIT_OK
        stop.cancel()
        for task in done:
            exc = None if task.cancelled() else task.exception()
            self.log.error("the %s task ended (%r): exiting for a restart", task.get_name(), exc,
                           exc_info=exc)
        return EXIT_ERROR

    def check_options(self):
        """Values xapi.conf's types cannot refuse: a bad one stops the daemon naming it."""
        for name in POSITIVE_OPTIONS:
            if self.config[name] <= 0:
                raise ConfigError(f"must be more than 0, got {self.config[name]:g}",
                                  path=self.config.source(name), key=name)
        if self.config["log-rotate-keep"] < 1:
            raise ConfigError(f"must be at least 1, got {self.config['log-rotate-keep']}",
                              path=self.config.source("log-rotate-keep"), key="log-rotate-keep")

    async def in_executor(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- running a job -------------------------------------------------------------------------
    async def call_target(self, job, timeout_s):
        """One run: the job's method on its target program (this daemon's own methods are
        called in place)."""
        if job.target == self.program:
            fn = self.server.methods.get(job.method)
            if fn is None:
                raise XapiError("MESSAGE_METHOD_UNKNOWN", job.method)
            result = fn(*job.args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        client = self.clients.get(job.target)
        if client is None:
            client = self.clients[job.target] = AsyncRpcClient(
                self.paths.rpc_endpoint(job.target))
        return await client.call(job.method, *job.args, timeout_s=timeout_s)

    # -- saving --------------------------------------------------------------------------------
    def mark_dirty(self, urgent=False):
        self._dirty.set()

    async def save(self):
        """Write every job now (durable when it returns)."""
        async with self._save_lock:
            self._dirty.clear()
            text = encode(self.scheduler.schedule.jobs.values())
            try:
                await self.in_executor(self.store.save, text)
            except BaseException:
                self._dirty.set()
                raise

    async def saver(self):
        """Run results reach the file at most every SAVE_EVERY_S: a kill -9 loses at most that
        much of them (registrations are saved before they are acknowledged)."""
        while True:
            await self._dirty.wait()
            try:
                await self.save()
            except OSError as exc:
                self.log.error("cannot save %s: %s (trying again)", self.paths.periodic_db, exc)
                self._dirty.set()
            await asyncio.sleep(SAVE_EVERY_S)

    # -- the methods ---------------------------------------------------------------------------
    async def register_job(self, name, kind, delay, period, target, method, args=None,
                           timeout_s=None):
        """Add or replace a job; saved before the reply. An equal registration is a no-op."""
        job, outcome = self.scheduler.register(name, kind, delay, period, target, method, args,
                                               timeout_s)
        if outcome != "unchanged":
            await self.save()
        return {"name": name, "outcome": outcome, "next_run": job.next_deadline()}

    async def deregister_job(self, name):
        self.scheduler.deregister(name)
        await self.save()
        return True

    async def register_startup_jobs(self):
        """Command: the start-up jobs for this host's role (sys.set_role comes first)."""
        if self.role not in ("master", "slave"):
            raise XapiError("PERIODIC_ROLE_UNKNOWN", str(self.role),
                            "sys.set_role master|slave must come first")
        built, pending = jobs_mod.jobs_for(self.role)
        wanted = set()
        changed = False
        for sj in built:
            period = self.config[sj.period_option]
            _, outcome = self.scheduler.register(sj.name, "periodic", sj.delay(period), period,
                                                 sj.target, sj.method, origin="startup")
            wanted.add(sj.name)
            changed |= outcome != "unchanged"
        for name, job in list(self.scheduler.schedule.jobs.items()):
            if job.origin == "startup" and name not in wanted:
                self.scheduler.deregister(name)
                changed = True
        if changed:
            await self.save()
        return {"registered": ", ".join(sj.name for sj in built),
                "pending": ", ".join(sj.name for sj in pending)}

    async def rotate_logs(self):
        """Rotate var/log/*.log past log-max-size-bytes, keeping log-rotate-keep copies."""
        rotated = await self.in_executor(logrotate.rotate_logs, self.paths.log_dir,
                                         self.config["log-max-size-bytes"],
                                         self.config["log-rotate-keep"])
        if rotated:
            self.log.info("rotated %s", ", ".join(rotated))
        return rotated

    def heartbeat(self):
        """The scheduler's hourly sign of life in its log."""
        jobs = self.scheduler.schedule.jobs.values()
        running = sum(1 for j in jobs if j.running)
        failures = sum(j.failures for j in jobs)
        self.log.info("periodic scheduler heartbeat: %d job(s), %d running, %d failure(s) "
                      "counted", len(jobs), running, failures)
        return {"jobs": len(jobs), "running": running, "failures": failures}

    def stats(self):
        out = super().stats()
        jobs = self.scheduler.schedule.jobs.values()
        out.update({"jobs": len(jobs), "job_runs": sum(j.runs for j in jobs),
                    "job_failures": sum(j.failures for j in jobs),
                    "jobs_running": sum(1 for j in jobs if j.running)})
        return out

    async def teardown(self):
        for task in self.loops:
            task.cancel()
        await asyncio.gather(*self.loops, return_exceptions=True)
        try:
            await self.save()
        except OSError as exc:
            self.log.error("cannot save %s at exit: %s", self.paths.periodic_db, exc)
        for client in self.clients.values():
            client.close()
        self.executor.shutdown(wait=True)


main = PeriodicDaemon.main
