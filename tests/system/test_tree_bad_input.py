"""Bad files: an unparsable xapi.conf value stops start-up before any step, naming file, line
and key; a garbage pool.conf makes the host broken and the run ends in emergency mode.
(Garbage on a daemon's RPC socket is in test_tree_startup.py, on the shared tree.)
Each test gets its own tree."""

import json

import pytest

from common.paths import MANAGED_PROGRAMS
from daemons.init.steps import STEPS, programs_in_start_order, steps_for

from .conftest import daemon, describe


@pytest.mark.timeout(120)
def test_unparsable_xapi_conf_value_stops_up(make_tree):
    tree = make_tree()
    tree.paths.xapi_conf.parent.mkdir(parents=True)
    tree.paths.xapi_conf.write_text("# a fresh host\nwatchdog-timeout = 5\n"
                                    "http-port = eighty\n")
    done = tree.up(timeout_s=60)
    assert done.returncode != 0, describe(done)
    out = done.stdout + done.stderr
    assert f"{tree.paths.xapi_conf}:3" in out, out          # the file and the line
    assert "http-port" in out and "eighty" in out, out      # the key and the value
    assert "expected an integer" in out, out

    sv = tree.supervisor
    for name in MANAGED_PROGRAMS:        # stopped before any step: nothing was started
        assert sv.info(name)["statename"] == "STOPPED", (name, sv.info(name))
    assert sv.info("xapi-init")["statename"] != "RUNNING"
    status = tree.status()
    assert status["_exit"] != 0
    assert status["init"]["state"] == "failed" and status["init"]["complete"] is False, status
    assert "http-port" in status["init"]["error"], status["init"]
    assert status["steps"] == [], status["steps"]
    assert not tree.paths.ready_cookie.exists()


@pytest.mark.timeout(120)
def test_garbage_pool_conf_makes_the_host_broken(make_tree):
    tree = make_tree()
    tree.init()
    tree.configure(emergency_restart_delay=600)    # no restart of xapi-init during the test
    tree.paths.pool_conf.write_text("{{ this is not a role }}\nmaster?\n")
    done = tree.up(timeout_s=60)
    assert done.returncode != 0, describe(done)
    assert "emergency" in done.stdout, done.stdout
    assert "HOST_BROKEN" in done.stdout, done.stdout

    status = tree.status()
    assert status["_exit"] != 0
    assert status["host"]["role"] == "broken", status["host"]
    assert str(tree.paths.pool_conf) in (status["host"].get("role_reason") or ""), status["host"]
    init = status["init"]
    assert init["emergency"] is True and init["state"] == "emergency", init
    assert init["complete"] is False and init["ready"] is True, init   # ready file, as xapi
    assert "HOST_BROKEN" in init["error"], init

    # A broken host runs the role-neutral steps up to the periodic scheduler, no further.
    run = {s.name for s in steps_for("broken")}
    by_name = {s["name"]: s for s in status["steps"]}
    for step in STEPS:
        entry = by_name[step.name]
        if step.name in run:
            assert entry["status"] in ("ok", "pending"), entry
        else:
            assert entry["status"] == "skipped", entry
    started = programs_in_start_order("broken")
    assert "xapi-db" not in started
    for name in MANAGED_PROGRAMS:
        entry = daemon(status, name)
        if name in started:
            assert entry["ready"] is True, entry
        else:
            assert entry["state"] == "STOPPED" and entry["pid"] is None, entry

    # The API knows: every call but the emergency ones answers HOST_BROKEN.
    health = tree.health("xapi-api")
    assert health["role"] == "broken"
    assert health["boot_state"] == "emergency" and health["boot_error"] == ["HOST_BROKEN"]
    # xapi-init waits in emergency mode before it restarts to try again: not during the test.
    record = json.loads(tree.paths.startup_json.read_text())
    assert record["state"] == "emergency" and record["restart_in_s"] >= 600, record
    assert tree.status()["init"]["pid"] == init["pid"]
