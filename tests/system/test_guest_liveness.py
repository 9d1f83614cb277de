"""Guest liveness on a real tree ("Start guest liveness monitoring thread", run inside
xapi-liveness): a guest made and started with `xapi-ctl sim` gets its VM_guest_metrics; its agent
silenced with `xapi-ctl sim agent-silence`, VM_guest_metrics.live turns false within one interval
plus the timeout (set to seconds in xapi.conf) with one priority-3 message; resumed, true again
with one priority-5 message. Read through xapi-db's bus and through the XenAPI SDK. One tree for
the module."""

import json
import os
import time

import pytest

from .conftest import Tree, describe, hold_for, wait_until
from .test_api_xenapi import set_password, tcp_session

STEP = "Start guest liveness monitoring thread"
TIMEOUT_S = 4.0          # guest_liveness_timeout
INTERVAL_S = 1.0         # guest_liveness_interval
AGENT_INTERVAL_S = 1.0   # the simulated agent writes data/updated every second
SLACK_S = 20.0           # gross: a loaded machine delays the checks, never hastens them
SILENT, RESUMED = "GUEST_AGENT_SILENT", "GUEST_AGENT_RESUMED"
PASSWORD = "liveness pw"


@pytest.fixture(scope="module")
def tree():
    tree = Tree()
    try:
        tree.init()
        # Tree.configure writes "-" for "_"; these are xapi's own keys, with underscores.
        with open(tree.paths.xapi_conf, "a") as conf:
            conf.write(f"\n# set by test_guest_liveness\nguest_liveness_timeout = {TIMEOUT_S}\n"
                       f"guest_liveness_interval = {INTERVAL_S}\n")
        done = tree.up()
        assert done.returncode == 0, describe(done)
        yield tree
    finally:
        tree.cleanup()


def vm_of(tree, uuid):
    ref = tree.call("xapi-db", "db.get_by_uuid", "VM", uuid)
    return {"ref": ref, **tree.call("xapi-db", "db.read_record", "VM", ref)}


def guest_metrics(tree, uuid):
    """The VM_guest_metrics record of the VM of ``uuid`` (None while it has none)."""
    ref = vm_of(tree, uuid)["guest_metrics"]
    if ref == "OpaqueRef:NULL":
        return None
    return tree.call("xapi-db", "db.read_record", "VM_guest_metrics", ref)


def messages(tree, uuid):
    records = tree.call("xapi-db", "message.get_all_records").values()
    return sorted((m for m in records if m["obj_uuid"] == uuid), key=lambda m: m["timestamp"])


def domain_uuid(tree, name):
    return next(d["uuid"] for d in json.loads(tree.ctl_ok("sim", "list", "--json").stdout)
                if d["name"] == name)


def inotify_fds(pid):
    """The inotify descriptors the process ``pid`` holds."""
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except FileNotFoundError:
            pass
    return found


@pytest.mark.timeout(60)
def test_the_step_runs_and_shares_the_hypervisor_watch(tree):
    step = next(s for s in tree.status()["steps"] if s["name"] == STEP)
    assert step["status"] == "ok", step
    assert "liveness.start_guest_liveness" in (step["note"] or ""), step
    health = wait_until(lambda: (h := tree.health("xapi-liveness"))["guests"]["state"] ==
                        "watching" and h, 15, "guest liveness watching")
    assert (health["guests"]["timeout_s"], health["guests"]["interval_s"]) == (TIMEOUT_S,
                                                                               INTERVAL_S)
    assert [c["m"] for c in health["applied"]] == [
        "sys.set_role", "liveness.start_guest_liveness", "liveness.start_events"]
    # one hypervisor watch (one inotify descriptor) for the events thread and guest liveness
    assert health["events"]["state"] == "following", health
    assert inotify_fds(health["pid"]) == 1
    stats = tree.call("xapi-liveness", "sys.stats")
    assert stats["hypervisor_watch"]["mode"] == "inotify", stats
    # a check every interval
    checks = stats["guests"]["checks"]
    wait_until(lambda: tree.call("xapi-liveness", "sys.stats")["guests"]["checks"] >= checks + 2,
               2 * INTERVAL_S + SLACK_S, "two more checks")


@pytest.mark.timeout(180)
def test_a_silent_agent_turns_live_false_then_true_each_with_one_message(tree):
    tree.ctl_ok("sim", "domain-create", "lively", "--agent-interval", str(AGENT_INTERVAL_S),
                "--os-name", "Liveness Linux 1")
    tree.ctl_ok("sim", "start", "lively")
    uuid = domain_uuid(tree, "lively")

    first = wait_until(lambda: guest_metrics(tree, uuid), SLACK_S, "the VM's guest metrics")
    assert first["live"] is True
    assert first["os_version"]["name"] == "Liveness Linux 1"
    assert set(first["PV_drivers_version"]) >= {"major", "minor", "micro"}
    assert first["networks"]["0/ip"] == first["networks"]["0/ipv4/0"]
    assert int(first["memory"]["total"]) == 1024 * 1024       # kiB, the default 1 GiB guest
    # a beating agent stays live, with no message, over more than the timeout
    hold_for(lambda: guest_metrics(tree, uuid)["live"] is True and not messages(tree, uuid),
             TIMEOUT_S + 2 * INTERVAL_S, "live while the agent beats")

    tree.ctl_ok("sim", "agent-silence", "lively")
    silenced = time.monotonic()
    wait_until(lambda: guest_metrics(tree, uuid)["live"] is False,
               INTERVAL_S + TIMEOUT_S + SLACK_S, "live=false after the agent went silent",
               interval_s=0.05)
    took = time.monotonic() - silenced
    print(f"\nagent silenced -> live=false in {took:.2f} s (timeout {TIMEOUT_S:g} s, "
          f"interval {INTERVAL_S:g} s)")
    # its last beat was at most ~2 s (the agent's interval, whole seconds) before the silence
    assert took >= TIMEOUT_S - 2 * AGENT_INTERVAL_S - 0.5, f"live=false after only {took:.2f} s"
    [silent] = messages(tree, uuid)
    assert (silent["name"], silent["priority"], silent["cls"]) == (SILENT, 3, "VM")
    # still silent: no second message, no flapping
    hold_for(lambda: guest_metrics(tree, uuid)["live"] is False and len(messages(tree, uuid)) == 1,
             3 * INTERVAL_S, "one message while silent")

    tree.ctl_ok("sim", "agent-resume", "lively")
    resumed_at = time.monotonic()
    wait_until(lambda: guest_metrics(tree, uuid)["live"] is True, INTERVAL_S + SLACK_S,
               "live=true after the agent resumed", interval_s=0.05)
    print(f"agent resumed -> live=true in {time.monotonic() - resumed_at:.2f} s")
    found = wait_until(lambda: len(m := messages(tree, uuid)) == 2 and m, SLACK_S,
                       "the resumed message")
    assert [(m["name"], m["priority"], m["cls"]) for m in found] == [
        (SILENT, 3, "VM"), (RESUMED, 5, "VM")]
    hold_for(lambda: guest_metrics(tree, uuid)["live"] is True and len(messages(tree, uuid)) == 2,
             TIMEOUT_S + 2 * INTERVAL_S, "live again, two messages in all")


@pytest.mark.timeout(120)
def test_the_guest_metrics_and_messages_through_the_xenapi_sdk(tree):
    set_password(tree, PASSWORD)
    uuid = domain_uuid(tree, "lively")
    session = tcp_session(tree, PASSWORD)
    try:
        x = session.xenapi
        vm = x.VM.get_by_uuid(uuid)
        gm = x.VM.get_guest_metrics(vm)
        record = x.VM_guest_metrics.get_record(gm)
        assert record["live"] is True
        assert record["os_version"]["name"] == "Liveness Linux 1"
        assert record["uuid"] == guest_metrics(tree, uuid)["uuid"]
        names = sorted((m["timestamp"], m["name"], m["priority"])
                       for m in x.message.get_all_records().values() if m["obj_uuid"] == uuid)
        assert [(n, int(p)) for _, n, p in names] == [(SILENT, 3), (RESUMED, 5)]
    finally:
        session.xenapi.session.logout()
    # no error on the way (the stop/start races of the events thread included)
    errors = [line for line in tree.log_lines("xapi-liveness")
              if " ERROR " in line or "Traceback" in line]
    assert errors == [], errors
