"""The start-up jobs (daemons/periodic/jobs.py) and xapi-periodic's methods, in process: every
built job's target method exists, the pending ones are named by the step, registration is
idempotent and follows the role, and a restarted daemon finds its jobs in periodic.db."""

import asyncio
import shutil
import tempfile
from unittest import mock

import pytest

from common.config import OPTIONS
from common.errors import ConfigError, XapiError
from common.rpc import RpcServer
from daemons.api.main import ApiDaemon
from daemons.db import front
from daemons.init.steps import STEPS, Command
from daemons.periodic.jobs import MASTER, STARTUP_JOBS, jobs_for
from daemons.periodic.main import PeriodicDaemon
from daemons.rrd.main import RrdDaemon


@pytest.fixture
def root():
    path = tempfile.mkdtemp(prefix="x", dir="/tmp")     # short: socket paths fit
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Collect:
    def __init__(self):
        self.names = set()

    def register(self, name, fn, command=False):
        self.names.add(name)


def daemon_in_process(root, *options):
    argv = ["--root", root] + [a for o in options for a in ("-o", o)]
    daemon = PeriodicDaemon(argv)
    daemon.server = RpcServer(daemon.paths.rpc_endpoint(daemon.program))   # never bound
    return daemon


async def started(daemon):
    await daemon.setup()
    return daemon


def methods_of(cls, root):
    """The methods a daemon class registers, from its real setup in process (never bound)."""
    async def main():
        daemon = cls(["--root", root])
        daemon.server = RpcServer(daemon.paths.rpc_endpoint(daemon.program))
        await daemon.setup()
        names = set(daemon.server.methods)
        await daemon.teardown()
        return names
    return asyncio.run(main())


def test_every_built_job_targets_a_method_that_exists(root):
    db = Collect()
    front.register(db, mock.MagicMock())
    existing = {"xapi-db": db.names, "xapi-periodic": methods_of(PeriodicDaemon, root),
                "xapi-rrd": methods_of(RrdDaemon, root), "xapi-api": methods_of(ApiDaemon, root)}
    built = [job for job in STARTUP_JOBS if job.pending is None]
    assert {job.name for job in built} == {"db-flush", "rrd-flush", "log-rotate", "heartbeat",
                                           "rrd-backup", "session-revalidation", "sr-scan"}
    for job in built:
        assert job.method in existing[job.target], (job.name, job.target, job.method)
        assert OPTIONS[job.period_option].type == "float", job.name
    for job in STARTUP_JOBS:
        if job.pending:
            assert not job.target and not job.method, f"{job.name}: pending but has a target"


def test_the_step_registers_the_jobs_and_names_every_pending_one():
    [step] = [s for s in STEPS if s.name == "Register periodic functions"]
    assert step.actions == (Command("xapi-periodic", "periodic.register_startup_jobs"),)
    for job in STARTUP_JOBS:
        if job.pending:
            assert job.name in step.pending, job.name
    [start] = [s for s in STEPS if s.name == "Start periodic scheduler"]
    assert start.pending is None


def test_jobs_for_follows_the_role():
    built_m, pending_m = jobs_for("master")
    built_s, pending_s = jobs_for("slave")
    master_only = {j.name for j in STARTUP_JOBS if j.role == MASTER}
    assert master_only == {"rrd-backup", "session-revalidation", "sr-scan", "blob-sync"}
    assert {j.name for j in built_m + pending_m} - {j.name for j in built_s + pending_s} \
        == master_only
    assert [j.name for j in built_s] == ["db-flush", "rrd-flush", "log-rotate", "heartbeat"]
    assert [j.name for j in built_m] == [j.name for j in built_s] + [
        "rrd-backup", "session-revalidation", "sr-scan"]
    assert [j.name for j in pending_m] == ["bridge-gc", "blob-sync"]


def test_register_startup_jobs_is_idempotent_and_survives_a_restart(root):
    async def first():
        daemon = await started(daemon_in_process(root, "periodic-heartbeat-interval=1800"))
        with pytest.raises(XapiError) as err:       # the role comes first
            await daemon.register_startup_jobs()
        assert err.value.code == "PERIODIC_ROLE_UNKNOWN"
        daemon.set_role("master")
        result = await daemon.register_startup_jobs()
        listing = daemon.scheduler.listing()
        again = await daemon.register_startup_jobs()
        await daemon.register_job("probe", "periodic", 60, 60, "xapi-db", "sys.health")
        after = daemon.scheduler.listing()
        await daemon.teardown()
        return result, listing, again, after

    result, listing, again, after = asyncio.run(first())
    assert result == again
    assert result["registered"] == ("db-flush, rrd-flush, log-rotate, heartbeat, rrd-backup, "
                                    "session-revalidation, sr-scan")
    assert result["pending"] == "bridge-gc, blob-sync"
    by_name = {j["name"]: j for j in listing}
    assert by_name["heartbeat"]["period"] == 1800.0 and by_name["heartbeat"]["delay"] == 240.0
    assert by_name["db-flush"]["period"] == 300.0 and by_name["db-flush"]["target"] == "xapi-db"
    assert by_name["rrd-flush"]["period"] == 300.0 and by_name["rrd-flush"]["target"] == "xapi-rrd"
    assert by_name["rrd-backup"]["period"] == 86400.0 and by_name["rrd-backup"]["delay"] == 3600
    assert (by_name["sr-scan"]["period"], by_name["sr-scan"]["delay"]) == (30.0, 30.0)
    assert (by_name["sr-scan"]["target"], by_name["sr-scan"]["method"]) == ("xapi-api",
                                                                           "api.scan_srs")
    assert (by_name["session-revalidation"]["period"],
            by_name["session-revalidation"]["delay"]) == (300.0, 300.0)
    assert all(j["origin"] == "startup" for j in listing)
    assert [j for j in after if j["name"] != "probe"] == listing    # deadlines kept

    async def second():
        # A restart (periods changed in xapi.conf): the saved jobs are there before any
        # command; the replayed command replaces what changed and keeps the operator's job.
        daemon = await started(daemon_in_process(root))
        loaded = daemon.scheduler.listing()
        daemon.set_role("master")
        await daemon.register_startup_jobs()
        replayed = daemon.scheduler.listing()
        await daemon.teardown()
        return loaded, replayed

    loaded, replayed = asyncio.run(second())
    assert [j["name"] for j in loaded] == ["db-flush", "heartbeat", "log-rotate", "probe",
                                           "rrd-backup", "rrd-flush", "session-revalidation",
                                           "sr-scan"]
    assert {j["name"]: j["next_run"] for j in loaded} == {j["name"]: j["next_run"] for j in after}
    by_name = {j["name"]: j for j in replayed}
    assert by_name["heartbeat"]["period"] == 3600.0
    assert by_name["db-flush"]["next_run"] == {j["name"]: j for j in after}["db-flush"]["next_run"]
    assert by_name["probe"]["origin"] == "operator"


def test_a_startup_job_no_longer_wanted_is_removed(root):
    async def main():
        daemon = await started(daemon_in_process(root))
        daemon.set_role("master")
        await daemon.register_startup_jobs()
        daemon.set_role("slave")                   # a master turned slave: no rrd-backup
        await daemon.register_startup_jobs()
        as_slave = [j["name"] for j in daemon.scheduler.listing()]
        with mock.patch("daemons.periodic.jobs.STARTUP_JOBS", STARTUP_JOBS[1:]):
            await daemon.register_startup_jobs()
        names = [j["name"] for j in daemon.scheduler.listing()]
        await daemon.teardown()
        return as_slave, names
    as_slave, names = asyncio.run(main())
    assert as_slave == ["db-flush", "heartbeat", "log-rotate", "rrd-flush"]
    assert names == ["heartbeat", "log-rotate", "rrd-flush"]


def test_register_checks_its_arguments_and_self_targets(root):
    async def main():
        daemon = await started(daemon_in_process(root))
        with pytest.raises(XapiError) as bad:
            await daemon.register_job("x", "weekly", 0, 1, "xapi-db", "db.flush_now")
        out = await daemon.register_job("hb", "oneshot", 0, None, "xapi-periodic",
                                        "periodic.heartbeat")
        result = await daemon.scheduler.run_now("hb")
        await daemon.register_job("nope", "oneshot", 0, None, "xapi-periodic", "periodic.nope")
        failed = await daemon.scheduler.run_now("nope")
        await daemon.deregister_job("nope")
        with pytest.raises(XapiError) as unknown:
            await daemon.deregister_job("nope")
        await daemon.teardown()
        return bad.value, out, result, failed, unknown.value
    bad, out, result, failed, unknown = asyncio.run(main())
    assert bad.code == "INVALID_VALUE" and bad.params[0] == "kind"
    assert out["outcome"] == "new"
    assert result["ok"] is True
    assert failed["ok"] is False and "MESSAGE_METHOD_UNKNOWN" in failed["error"]
    assert unknown.code == "PERIODIC_JOB_UNKNOWN"


@pytest.mark.parametrize("option, value", [("periodic-flush-interval", "0"),
                                           ("periodic-job-timeout", "-1"),
                                           ("log-rotate-keep", "0")])
def test_a_bad_period_or_keep_stops_the_daemon_naming_the_key(root, option, value):
    daemon = daemon_in_process(root, f"{option}={value}")
    with pytest.raises(ConfigError) as err:
        asyncio.run(daemon.setup())
    assert option in str(err.value) and "command line" in str(err.value)


def test_the_daemon_exits_for_a_restart_if_its_scheduler_loop_dies(root, caplog):
    async def main():
        daemon = daemon_in_process(root)
        daemon._stop = asyncio.Event()
        await daemon.setup()

        def broken(now):
            raise RuntimeError("a bug in the loop")
        daemon.scheduler.schedule.due = broken
        daemon.scheduler.register("x", "oneshot", 0, None, "xapi-db", "sys.health")  # wakes it
        code = await asyncio.wait_for(daemon.serve(), 10)
        await daemon.teardown()
        return code
    assert asyncio.run(main()) == 1
    assert "the scheduler task ended" in caplog.text and "a bug in the loop" in caplog.text
