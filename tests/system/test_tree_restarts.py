"""Crash-only: kill -9 of any daemon or of xapi-init, and `xapi-ctl restart`, leave a configured
tree without the start-up sequence running again. One tree for the module."""

import os
import re
import signal
import time

import psutil
import pytest

from daemons.init.steps import steps_for

from .conftest import MANAGED_PROGRAMS, PROGRAMS, all_ready, daemon, describe, running_tree


@pytest.fixture(scope="module")
def tree():
    with running_tree() as t:
        yield t


def _applied(health, method):
    return [c for c in health["applied"] if c["m"] == method]


def _assert_replayed(tree, name, since):
    """The orchestrator re-sent NAME's commands after ``since`` (wall-clock time)."""
    health = tree.health(name)
    roles = _applied(health, "sys.set_role")
    assert roles and roles[-1]["a"][0] == "master", health
    assert roles[-1]["at"] > since, (since, health)
    if name == "xapi-api":
        boot = _applied(health, "api.set_boot_state")
        assert boot and boot[-1]["a"][0] == "ready", health
        assert boot[-1]["at"] > since, (since, health)
        assert health["boot_state"] == "ready", health
    return health


def _started_steps(tree):
    """The names of the steps xapi-init's log says were started, in order."""
    return [m.group(1) for line in tree.log_lines("xapi-init")
            if (m := re.search(r"\] task \[(.*)\] started$", line))]


# A new xapi-init that adopts the tree resumes start-up: it runs again only the steps that
# build its own in-memory state (the inventory, local.db, the pool secret, ...).
RERUN_ON_RESUME = [step.name for step in steps_for("master") if step.rerun_on_resume]


def _resumed(tree, steps_before):
    after = _started_steps(tree)
    return after[:len(steps_before)] == steps_before and \
        after[len(steps_before):] == RERUN_ON_RESUME


@pytest.mark.timeout(120)
def test_kill_9_of_xapi_init_adopts_the_running_daemons(tree):
    # First in the module on purpose: right after `up` the last daemons are still inside
    # supervisord's startsecs (STARTING), and the new xapi-init must adopt those too.
    before = tree.wait_status(all_ready, 20, "every program ready")
    pids = {d["name"]: d["pid"] for d in before["daemons"]}
    init_pid = pids.pop("xapi-init")
    restarts = daemon(before, "xapi-init")["restarts"]
    steps_before = _started_steps(tree)

    os.kill(init_pid, signal.SIGKILL)

    def adopted(s):
        return (daemon(s, "xapi-init")["pid"] not in (None, init_pid) and s["init"]["complete"]
                and s["init"]["state"] == "complete" and all_ready(s))
    after = tree.wait_status(adopted, 30, "a new xapi-init that adopted the tree")
    assert {d["name"]: d["pid"] for d in after["daemons"] if d["name"] != "xapi-init"} == pids
    assert daemon(after, "xapi-init")["restarts"] == restarts + 1
    assert all(daemon(after, n)["restarts"] == daemon(before, n)["restarts"]
               for n in MANAGED_PROGRAMS)
    log = "\n".join(tree.log_lines("xapi-init"))
    assert "adopting the running programs" in log
    assert RERUN_ON_RESUME, "no step is marked rerun_on_resume"
    assert _resumed(tree, steps_before), \
        f"start-up ran again after xapi-init's crash: {_started_steps(tree)[len(steps_before):]}"
    # The new xapi-init watches the adopted daemons: watchdog pings reach it.
    tree.wait_status(lambda s: all(daemon(s, n)["watchdog_age_s"] is not None
                                   for n in MANAGED_PROGRAMS), 15,
                     "watchdog pings at the new xapi-init")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", MANAGED_PROGRAMS)
def test_kill_9_of_a_daemon_is_undone(tree, name):
    before = tree.wait_status(all_ready, 20, "every program ready")
    entry = daemon(before, name)
    old_pid, old_restarts = entry["pid"], entry["restarts"]
    others = {d["name"]: d["pid"] for d in before["daemons"] if d["name"] != name}
    steps_before = _started_steps(tree)

    killed_at = time.time()
    os.kill(old_pid, signal.SIGKILL)

    def back(s):
        e = daemon(s, name)
        return e["ready"] and e["pid"] not in (None, old_pid)
    entry = daemon(tree.wait_status(back, 20, f"{name} ready again with a new pid after kill -9"),
                   name)
    assert entry["restarts"] == old_restarts + 1, entry
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == "zombie"
    health = _assert_replayed(tree, name, killed_at)
    assert health["pid"] == entry["pid"]
    after = tree.status()
    # Only NAME was restarted, and start-up did not run again.
    assert {d["name"]: d["pid"] for d in after["daemons"] if d["name"] != name} == others
    assert after["init"]["complete"] and after["init"]["state"] == "complete"
    assert _started_steps(tree) == steps_before


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", MANAGED_PROGRAMS)
def test_ctl_restart_returns_once_ready_with_a_new_pid(tree, name):
    before = tree.wait_status(all_ready, 20, "every program ready")
    old = daemon(before, name)
    others = {d["name"]: d["pid"] for d in before["daemons"] if d["name"] != name}
    since = time.time()
    done = tree.ctl("restart", name)
    assert done.returncode == 0, describe(done)
    new_pid = int(re.search(r"\(pid (\d+)\)", done.stdout).group(1))
    assert new_pid != old["pid"]
    # No waiting here: when `restart` returns, the program is ready and configured.
    entry = daemon(tree.status(), name)
    assert entry["ready"] is True and entry["pid"] == new_pid, entry
    assert entry["restarts"] == old["restarts"] + 1, entry
    assert tree.health(name)["pid"] == new_pid
    _assert_replayed(tree, name, since)
    assert not psutil.pid_exists(old["pid"])
    assert {d["name"]: d["pid"] for d in tree.status()["daemons"]
            if d["name"] != name} == others


@pytest.mark.timeout(120)
def test_ctl_restart_xapi_init_keeps_the_daemons(tree):
    before = tree.wait_status(all_ready, 20, "every program ready")
    pids = {d["name"]: d["pid"] for d in before["daemons"]}
    init_pid = pids.pop("xapi-init")
    steps_before = _started_steps(tree)
    done = tree.ctl("restart", "xapi-init")
    assert done.returncode == 0, describe(done)
    assert "adopted the tree" in done.stdout
    # When `restart xapi-init` returns, the new xapi-init has adopted every daemon.
    after = tree.status()
    assert daemon(after, "xapi-init")["pid"] not in (None, init_pid)
    assert after["init"]["complete"] and after["init"]["state"] == "complete"
    assert all_ready(after, MANAGED_PROGRAMS), after["daemons"]
    assert {d["name"]: d["pid"] for d in after["daemons"] if d["name"] != "xapi-init"} == pids
    assert not psutil.pid_exists(init_pid)
    assert "SIGUSR1: exiting for a restart" in "\n".join(tree.log_lines("xapi-init"))
    assert _resumed(tree, steps_before), _started_steps(tree)[len(steps_before):]
    assert set(PROGRAMS) == {d["name"] for d in after["daemons"]}
