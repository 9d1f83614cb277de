"""Stopping: SIGTERM to xapi-init stops the daemons in reverse start order (xapi-db last) and
xapi-init stays stopped; `xapi-ctl down` leaves no process of the tree, and is idempotent.
Each test breaks its tree, so each has its own."""

import json
import os
import re
import signal

import psutil
import pytest

from common import inventory
from common.paths import MANAGED_PROGRAMS
from daemons.ctl.tree import format_step
from daemons.init.main import stop_order

from .conftest import daemon, describe, hold_for, processes_of, wait_until


def _up(make_tree):
    tree = make_tree()
    tree.init()
    done = tree.up()
    assert done.returncode == 0, describe(done)
    return tree


def _supervisord_stops(tree, since_line):
    """Program names in the order supervisord logged "stopped: NAME" after line ``since_line``."""
    lines = tree.paths.supervisord_log.read_text().splitlines()[since_line:]
    return [m[1] for line in lines if (m := re.search(r"INFO stopped: (\S+) \(", line))]


@pytest.mark.timeout(120)
def test_sigterm_to_xapi_init_stops_the_tree_in_reverse_order(make_tree):
    tree = _up(make_tree)
    status = tree.wait_status(lambda s: s["_exit"] == 0, 20, "a healthy tree")
    pids = {d["name"]: d["pid"] for d in status["daemons"]}
    init_pid = pids.pop("xapi-init")
    start_order = [m[1] for line in tree.log_lines("xapi-init")
                   if (m := re.search(r"\] (xapi-\S+) is ready \(pid \d+\)$", line))]
    assert sorted(start_order) == sorted(MANAGED_PROGRAMS), start_order
    expected = [n for n in reversed(start_order) if n != "xapi-db"] + ["xapi-db"]
    assert expected == stop_order("master")
    sv_log_from = len(tree.paths.supervisord_log.read_text().splitlines())
    init_log_from = len(tree.log_lines("xapi-init"))

    os.kill(init_pid, signal.SIGTERM)

    sv = tree.supervisor
    info = wait_until(lambda: (i := sv.info("xapi-init"))["statename"] == "EXITED" and i, 60,
                      "xapi-init to exit after SIGTERM")
    assert info["exitstatus"] == 0, info
    lines = tree.log_lines("xapi-init")[init_log_from:]
    stopped = [m[1] for line in lines if (m := re.search(r"\] stopped (\S+)$", line))]
    assert stopped == expected, lines
    assert any("xapi-init exiting with code 0" in line for line in lines), lines
    # supervisord saw them go in that order too, every one with exit status 0
    assert _supervisord_stops(tree, sv_log_from)[:len(expected)] == expected
    for name, pid in pids.items():
        assert sv.info(name)["statename"] == "STOPPED", name
        assert not psutil.pid_exists(pid), (name, pid)
    assert not tree.paths.init_complete_cookie.exists()
    assert not tree.paths.ready_cookie.exists()

    # Exit 0 is expected (autorestart=unexpected): xapi-init stays down, and so does the tree.
    hold_for(lambda: sv.info("xapi-init")["statename"] == "EXITED"
             and all(sv.info(n)["statename"] == "STOPPED" for n in MANAGED_PROGRAMS),
             3.0, "xapi-init and the daemons staying stopped")
    status = tree.status()
    assert status["_exit"] == 3, status
    assert status["init"]["state"] == "stopped" and not status["init"]["complete"], status
    uuid = inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]
    assert status["host"]["uuid"] == uuid, status["host"]
    assert [p.pid for p in tree.processes()] == [sv.pid()]   # only supervisord is left

    # Until the operator says `up`: a fresh run, followed step by step (not the stopped one's).
    done = tree.up()
    assert done.returncode == 0, describe(done)
    record = json.loads(tree.paths.startup_json.read_text())
    printed = [line for line in done.stdout.splitlines() if line.startswith("  ")]
    assert printed == [format_step(step) for step in record["steps"]], done.stdout
    status = tree.status()
    assert status["_exit"] == 0 and status["init"]["complete"], status
    assert all(daemon(status, n)["pid"] != pids[n] for n in MANAGED_PROGRAMS)


@pytest.mark.timeout(120)
def test_down_leaves_no_process_and_is_idempotent(make_tree):
    tree = _up(make_tree)
    procs = tree.processes()
    assert len(procs) == 9, [p.cmdline() for p in procs]   # supervisord, xapi-init and seven
    done = tree.ctl("down", timeout_s=120)
    assert done.returncode == 0, describe(done)
    assert "stopped the tree" in done.stdout
    left = processes_of(tree.root)
    assert left == [], [p.cmdline() for p in left]
    assert [p.pid for p in procs if _alive(p)] == []
    assert any("stopping the tree in order" in line for line in tree.log_lines("xapi-init"))
    assert tree.paths.inventory.exists(), "down must keep the host's data"

    again = tree.ctl("down", timeout_s=60)    # `make stop` on a stopped tree
    assert again.returncode == 0, describe(again)
    assert "not running" in again.stdout
    status = tree.status()
    assert status["_exit"] == 4 and "not running" in status["error"], status


def _alive(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
