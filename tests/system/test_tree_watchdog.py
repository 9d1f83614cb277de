"""The watchdog kills and restarts a hung daemon; an operator stop is left alone by the watchdog
and by replays until `xapi-ctl start`. One tree for the module, with watchdog-timeout = 3."""

import contextlib
import os
import signal
import time

import psutil
import pytest

from daemons.init.programs import MONITOR_PERIOD_S

from .conftest import all_ready, daemon, describe, hold_for, running_tree

WATCHDOG_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def tree():
    with running_tree(watchdog_timeout=WATCHDOG_TIMEOUT_S) as t:
        yield t


@pytest.fixture
def stopped_pids():
    """Pids a test SIGSTOPs; continued and killed afterwards whatever happened."""
    pids = []
    yield pids
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGCONT)
            proc.kill()


@pytest.mark.timeout(120)
def test_watchdog_restarts_a_hung_daemon(tree, stopped_pids):
    name = "xapi-rrd"
    before = tree.wait_status(all_ready, 20, "every program ready")
    entry = daemon(before, name)
    old_pid, kills = entry["pid"], entry["watchdog_kills"]
    assert entry["watchdog_age_s"] is not None and entry["watchdog_age_s"] < WATCHDOG_TIMEOUT_S
    others = {d["name"]: d["pid"] for d in before["daemons"] if d["name"] != name}

    stopped_pids.append(old_pid)
    stopped_at = time.monotonic()
    os.kill(old_pid, signal.SIGSTOP)     # hung: its loop sends no WATCHDOG=1 any more

    after = tree.wait_status(
        lambda s: daemon(s, name)["ready"] and daemon(s, name)["pid"] not in (None, old_pid),
        WATCHDOG_TIMEOUT_S + 8, f"the watchdog to restart the hung {name}")
    took = time.monotonic() - stopped_at
    entry = daemon(after, name)
    assert entry["watchdog_kills"] >= kills + 1, entry
    # Killed for its silence, not for anything else: not before the timeout (less the ping
    # interval, timeout/4, that may have passed since its last ping).
    assert took >= WATCHDOG_TIMEOUT_S * 0.75 - 0.1, f"restarted after only {took:.1f} s"
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == "zombie"
    assert tree.health(name)["pid"] == entry["pid"]
    assert any(f"watchdog: {name} (pid {old_pid}) no WATCHDOG=1" in line
               for line in tree.log_lines("xapi-init"))
    # The others were left alone.
    assert {d["name"]: d["pid"] for d in after["daemons"] if d["name"] != name} == others


@pytest.mark.timeout(120)
def test_operator_stop_is_not_undone(tree):
    name = "xapi-periodic"
    tree.wait_status(all_ready, 20, "every program ready")
    done = tree.ctl("stop", name)
    assert done.returncode == 0, describe(done)
    entry = daemon(tree.status(), name)
    assert entry["state"] == "STOPPED" and entry["operator_stopped"] is True, entry
    assert entry["ready"] is False and entry["pid"] is None, entry
    kills = entry["watchdog_kills"]

    def still_stopped():
        e = daemon(tree.status(), name)
        return (e["state"] == "STOPPED" and e["operator_stopped"] and e["pid"] is None
                and e["watchdog_kills"] == kills and e["next_retry_in_s"] is None and e)
    # Longer than the watchdog timeout plus two monitor passes: no watchdog kill, no retry.
    hold_for(still_stopped, WATCHDOG_TIMEOUT_S + 2 * MONITOR_PERIOD_S + 1,
             f"{name} staying stopped by the operator")
    assert tree.supervisor.info(name)["statename"] == "STOPPED"
    # A new xapi-init (which adopts and replays) keeps the operator's stop too.
    done = tree.ctl("restart", "xapi-init")
    assert done.returncode == 0, describe(done)
    hold_for(still_stopped, 2 * MONITOR_PERIOD_S + 0.5,
             f"{name} staying stopped across a restart of xapi-init")

    replays = daemon(tree.status(), name)["replays"]
    since = time.time()
    done = tree.ctl("start", name)
    assert done.returncode == 0, describe(done)
    entry = daemon(tree.status(), name)
    assert entry["ready"] is True and entry["operator_stopped"] is False, entry
    assert entry["replays"] == replays + 1, entry     # its commands were sent again
    health = tree.health(name)
    assert health["pid"] == entry["pid"]
    roles = [c for c in health["applied"] if c["m"] == "sys.set_role"]
    assert roles and roles[-1]["a"][0] == "master" and roles[-1]["at"] > since, health
    assert tree.status()["_exit"] == 0
