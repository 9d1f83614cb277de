"""xapi-periodic in a real tree: the start-up jobs registered by xapi-init, `xapi-ctl periodic
list|run`, a slow job against a stopped daemon not delaying a fast one, log rotation with the
daemons' handlers reopening, and kill -9 keeping the jobs. One tree for the module."""

import json
import os
import signal
import time

import pytest

from common.errors import XapiError

from .conftest import all_ready, daemon, describe, running_tree, wait_until

MAX_LOG_BYTES = 4096
KEEP = 2


@pytest.fixture(scope="module")
def tree():
    with running_tree(log_max_size_bytes=MAX_LOG_BYTES, log_rotate_keep=KEEP) as t:
        yield t


def jobs(tree):
    done = tree.ctl_ok("periodic", "list", "--json")
    return {job["name"]: job for job in json.loads(done.stdout)}


def periodic(tree, method, *args, timeout_s=10.0):
    return tree.call("xapi-periodic", method, *args, timeout_s=timeout_s)


@pytest.mark.timeout(120)
def test_start_up_registers_the_jobs_and_ctl_lists_them(tree):
    steps = {s["name"]: s for s in tree.status()["steps"]}
    assert steps["Start periodic scheduler"]["status"] == "ok", steps["Start periodic scheduler"]
    register = steps["Register periodic functions"]
    assert register["status"] == "pending", register
    assert ("registered=db-flush, rrd-flush, log-rotate, heartbeat, rrd-backup, "
            "session-revalidation, sr-scan" in register["note"]), register
    assert "pending=bridge-gc, blob-sync" in register["note"], register
    listed = jobs(tree)
    assert set(listed) == {"db-flush", "rrd-flush", "log-rotate", "heartbeat", "rrd-backup",
                           "session-revalidation", "sr-scan"}
    flush = listed["db-flush"]
    assert (flush["kind"], flush["period"], flush["target"], flush["method"], flush["origin"]) \
        == ("periodic", 300.0, "xapi-db", "db.flush_now", "startup")
    assert flush["next_run"] > time.time() + 200
    assert listed["heartbeat"]["period"] == 3600.0
    assert (listed["rrd-backup"]["period"], listed["rrd-backup"]["target"]) == (86400.0,
                                                                                "xapi-rrd")
    text = tree.ctl_ok("periodic", "list").stdout
    for name in listed:
        assert name in text
    assert "xapi-db db.flush_now" in text


@pytest.mark.timeout(120)
def test_ctl_run_runs_one_job_now_and_keeps_its_schedule(tree):
    before = jobs(tree)["heartbeat"]
    done = tree.ctl_ok("periodic", "run", "heartbeat")
    assert "heartbeat ran in" in done.stdout and ": ok" in done.stdout, done.stdout
    after = jobs(tree)["heartbeat"]
    assert after["runs"] == before["runs"] + 1 and after["last_error"] is None
    assert after["next_run"] == before["next_run"]
    assert any("periodic scheduler heartbeat:" in line and "[job heartbeat]" in line
               for line in tree.log_lines("xapi-periodic"))
    done = tree.ctl_ok("periodic", "run", "db-flush")
    assert "db-flush ran in" in done.stdout, done.stdout
    assert jobs(tree)["db-flush"]["runs"] >= 1
    done = tree.ctl_ok("periodic", "run", "rrd-flush")
    assert "rrd-flush ran in" in done.stdout, done.stdout
    done = tree.ctl("periodic", "run", "no-such-job")
    assert done.returncode == 1, describe(done)
    assert "no periodic job 'no-such-job'" in done.stderr and "db-flush" in done.stderr


@pytest.mark.timeout(120)
def test_a_bad_registration_gets_an_error_naming_the_key(tree):
    with pytest.raises(XapiError) as err:
        periodic(tree, "periodic.register", "bad", "weekly", 0, 1, "xapi-db", "sys.health")
    assert err.value.description[:2] == ["INVALID_VALUE", "kind"]
    with pytest.raises(XapiError) as err:
        periodic(tree, "periodic.register", "bad", "periodic", 0, 1, "xapi-nope", "sys.health")
    assert err.value.description[:2] == ["INVALID_VALUE", "target"]
    with pytest.raises(XapiError) as err:
        periodic(tree, "periodic.deregister", "bad")
    assert err.value.code == "PERIODIC_JOB_UNKNOWN"
    assert "bad" not in jobs(tree)


@pytest.mark.timeout(180)
def test_a_slow_job_on_a_stopped_daemon_neither_delays_a_fast_one_nor_stops_failing_loudly(tree):
    """A job whose target is down hangs for its 2 s timeout, then counts as failed with the
    error and is tried again at its next period; meanwhile a 100 ms job keeps its deadlines."""
    tree.ctl_ok("stop", "xapi-mailer")
    try:
        periodic(tree, "periodic.register", "slow", "periodic", 0, 0.5, "xapi-mailer",
                 "sys.health", [], 2.0)
        periodic(tree, "periodic.register", "fast", "periodic", 0, 0.1, "xapi-db",
                 "sys.health", [], 1.0)
        started = time.monotonic()
        slow = wait_until(lambda: (j := jobs(tree)["slow"]) and j["failures"] >= 2 and j, 30,
                          "two failed runs of the slow job")
        elapsed = time.monotonic() - started
        fast = jobs(tree)["fast"]
        # The slow job: each run waited its whole timeout, failed naming the target, and the
        # deadlines that passed meanwhile were skipped, not queued.
        assert slow["last_duration_s"] >= 1.9, slow
        assert "no answer from xapi-mailer to sys.health" in slow["last_error"], slow
        assert slow["skipped"] >= 2, slow
        # The fast job ran all along, never later than one period (gross bounds).
        assert fast["failures"] == 0, fast
        assert fast["max_lateness_s"] < 0.1, fast
        assert fast["runs"] >= elapsed / 0.1 * 0.5, (elapsed, fast)

        # Once the target is back, the next period's run succeeds.
        tree.ctl_ok("start", "xapi-mailer")
        failures = jobs(tree)["slow"]["failures"]
        recovered = wait_until(lambda: (j := jobs(tree)["slow"]) and j["last_error"] is None
                               and j["runs"] > j["failures"] and j, 20, "a good run of slow")
        assert recovered["failures"] <= failures + 1, recovered
    finally:
        for name in ("slow", "fast"):
            try:
                periodic(tree, "periodic.deregister", name)
            except XapiError:
                pass
        tree.ctl("start", "xapi-mailer")
    assert not {"slow", "fast"} & set(jobs(tree))


@pytest.mark.timeout(120)
def test_log_rotation_renames_big_logs_and_the_daemons_write_a_new_one(tree):
    logs = tree.paths.log_dir
    init_log_bytes = (logs / "xapi-init.log").stat().st_size
    assert init_log_bytes > MAX_LOG_BYTES          # start-up alone logs more than that
    for round_ in range(3):
        for name in ("xapi-ha.log", "xapi-periodic.log"):   # logs that say little: grow them
            with open(logs / name, "a") as f:
                f.write(f"filler {round_} " + "x" * MAX_LOG_BYTES + "\n")
        done = tree.ctl_ok("periodic", "run", "log-rotate")
        assert ": ok" in done.stdout, done.stdout
    for name in ("xapi-ha.log", "xapi-periodic.log"):
        assert sorted(p.name for p in logs.glob(f"{name}.*")) == [f"{name}.1", f"{name}.2"]
        assert "filler 2" in (logs / f"{name}.1").read_text()
        assert "filler 1" in (logs / f"{name}.2").read_text()
    assert (logs / "xapi-init.log.1").stat().st_size >= init_log_bytes
    # The running daemon's handler saw the rename and opened a new file for its next line.
    tree.ctl_ok("periodic", "run", "heartbeat")
    fresh = tree.log_lines("xapi-periodic")
    assert any("periodic scheduler heartbeat" in line for line in fresh), fresh
    assert not any("filler" in line for line in fresh), fresh


@pytest.mark.timeout(180)
def test_kill_9_of_xapi_periodic_keeps_the_jobs(tree):
    tree.wait_status(all_ready, 30, "every program ready")
    periodic(tree, "periodic.register", "probe", "periodic", 3600, 3600, "xapi-db",
             "sys.health")
    before = jobs(tree)
    old_pid = tree.health("xapi-periodic")["pid"]
    os.kill(old_pid, signal.SIGKILL)
    tree.wait_status(lambda s: daemon(s, "xapi-periodic")["ready"]
                     and daemon(s, "xapi-periodic")["pid"] not in (None, old_pid), 60,
                     "xapi-periodic back with a new pid")
    after = jobs(tree)
    assert set(after) == set(before)
    for name, job in before.items():
        assert after[name]["next_run"] == pytest.approx(job["next_run"], abs=1e-6), name
        assert after[name]["period"] == job["period"] and after[name]["origin"] == job["origin"]
    # The operator's job came back from periodic.db alone (xapi-init replays only its own
    # command); the log says where the jobs came from.
    assert after["probe"]["origin"] == "operator"
    assert any("job(s) loaded from" in line and "probe" in line
               for line in tree.log_lines("xapi-periodic"))
    periodic(tree, "periodic.deregister", "probe")
