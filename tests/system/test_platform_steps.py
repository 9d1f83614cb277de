"""The platform steps of start-up on real trees: domain 0 created in the simulated hypervisor with
the inventory's uuid, its xenstore keys and memory target, the required processes checked both
ways, and an inventory whose CONTROL_DOMAIN_UUID no longer matches domain 0. Each test has its
own tree(s), stopped and removed by the fixtures whatever happens."""

import json

import pytest

from common import inventory
from common.platform.xensim import XenSim
from common.rpc import RpcClient

from .conftest import describe, running_tree

PLATFORM_STEPS = ("Check control domain", "Set up xenstore keys", "Run startup check",
                  "Set memory target for control domain")


def step(status, name):
    return next(s for s in status["steps"] if s["name"] == name)


def sim_list(tree):
    done = tree.ctl_ok("sim", "list", "--json", timeout_s=30)
    return json.loads(done.stdout)


@pytest.mark.timeout(150)
def test_master_with_a_running_required_process_creates_domain_0():
    with running_tree(required_processes="supervisord") as tree:
        assert "init complete as master" in tree.up_result.stdout, describe(tree.up_result)
        # "Set memory target for control domain" runs on a thread: not awaited by the run.
        status = tree.wait_status(
            lambda s: all(step(s, name)["status"] == "ok" for name in PLATFORM_STEPS), 15,
            "the four platform steps to show ok")
        for name in PLATFORM_STEPS:
            assert step(status, name)["error"] is None, step(status, name)
        assert "supervisord" in step(status, "Run startup check")["note"]

        dom0_uuid = inventory.read_inventory(tree.paths.inventory)[
            inventory.CONTROL_DOMAIN_UUID]
        assert dom0_uuid in step(status, "Check control domain")["note"]
        domains = sim_list(tree)
        assert [d["domid"] for d in domains] == [0], domains
        dom0 = domains[0]
        assert dom0["uuid"] == dom0_uuid and dom0["name"] == "Domain-0"
        assert dom0["power_state"] == "Running"

        sim = XenSim(tree.paths.xensim)
        assert sim.read("/local/domain/0/name") == "Domain-0"
        assert sim.read("/local/domain/0/domid") == "0"
        assert sim.read("/local/domain/0/vm") == f"/vm/{dom0_uuid}"
        assert sim.read(f"/vm/{dom0_uuid}/uuid") == dom0_uuid
        assert sim.read("/local/domain/0/memory/target") == str(dom0["memory_kib"])

        # the host disabled by "Start up database engine" re-enables itself at the end
        host_uuid = inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]
        with RpcClient(tree.paths.rpc_endpoint("xapi-db"), timeout_s=10) as db:
            host = db.call("db.get_by_uuid", "host", host_uuid)
            assert db.call("db.read_field", "host", host, "enabled") is True
        assert "host enabled" in step(status, "Plug unplugged PBDs")["note"]


@pytest.mark.timeout(150)
def test_a_required_process_that_does_not_run_fails_start_up(make_tree):
    tree = make_tree()
    tree.init()
    tree.configure(required_processes="no-such-process-xyz")
    done = tree.up(timeout_s=60)
    assert done.returncode != 0, describe(done)
    out = done.stdout + done.stderr
    assert "Run startup check" in out and "no-such-process-xyz" in out, out

    status = tree.wait_status(lambda s: s["init"]["failed_step"] == "Run startup check", 20,
                              "status to name the failed step")
    assert status["_exit"] != 0
    assert status["init"]["complete"] is False
    assert "no-such-process-xyz" in status["init"]["error"], status["init"]
    failed = step(status, "Run startup check")
    assert failed["status"] == "failed" and "no-such-process-xyz" in failed["error"], failed
    # The steps before it ran (domain 0 exists); nothing after it did.
    assert step(status, "Check control domain")["status"] == "ok"
    assert step(status, "Register http handlers")["status"] == "waiting"
    assert not tree.paths.init_complete_cookie.exists()


@pytest.mark.timeout(240)
def test_a_changed_control_domain_uuid_fails_the_next_start_up(make_tree):
    tree = make_tree()
    tree.init()
    first = tree.up()
    assert first.returncode == 0, describe(first)
    original = sim_list(tree)[0]["uuid"]
    tree.ctl_ok("down", timeout_s=60)

    values = inventory.read_inventory(tree.paths.inventory)
    assert values[inventory.CONTROL_DOMAIN_UUID] == original
    changed = "0e5c0e5c-0000-4000-8000-000000000123"
    inventory.write_inventory(tree.paths.inventory,
                              dict(values, **{inventory.CONTROL_DOMAIN_UUID: changed}))

    done = tree.up(timeout_s=60)
    assert done.returncode != 0, describe(done)
    out = done.stdout + done.stderr
    assert "Check control domain" in out, out
    assert original in out and changed in out, out
    assert str(tree.paths.inventory) in out and "domains.json" in out, out

    status = tree.wait_status(lambda s: s["init"]["failed_step"] == "Check control domain", 20,
                              "status to name the failed step")
    failed = step(status, "Check control domain")
    assert failed["status"] == "failed", failed
    assert original in failed["error"] and changed in failed["error"], failed
    assert sim_list(tree)[0]["uuid"] == original          # domain 0 left as it was


@pytest.mark.timeout(240)
def test_a_licence_that_restricts_pooling_alerts_when_the_pool_has_other_hosts(make_tree):
    tree = make_tree()
    tree.init()
    first = tree.up()
    assert first.returncode == 0, describe(first)
    status = json.loads(tree.ctl("status", "--json").stdout)
    assert "pooling allowed" in step(status, "Check that current license is okay for "
                                             "pooling configuration")["note"]
    with RpcClient(tree.paths.rpc_endpoint("xapi-db"), timeout_s=10) as db:
        db.call("db.create_row", "host", {"name_label": "another host"})
        assert db.call("message.get_all_records") == {}
    tree.ctl_ok("down", timeout_s=60)

    tree.paths.license.write_text("edition = express\n")
    second = tree.up()
    assert second.returncode == 0, describe(second)
    status = json.loads(tree.ctl("status", "--json").stdout)
    check = step(status, "Check that current license is okay for pooling configuration")
    assert check["status"] == "ok" and "LICENSE_DOES_NOT_SUPPORT_POOLING" in check["note"], check
    host_uuid = inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]
    with RpcClient(tree.paths.rpc_endpoint("xapi-db"), timeout_s=10) as db:
        messages = list(db.call("message.get_all_records").values())
    assert [(m["name"], m["priority"], m["cls"], m["obj_uuid"]) for m in messages] == \
        [("LICENSE_DOES_NOT_SUPPORT_POOLING", 1, "Host", host_uuid)], messages


@pytest.mark.timeout(240)
def test_sr_plugins_become_sm_records(make_tree):
    tree = make_tree()
    tree.init()
    sm_dir = tree.paths.under("/opt/xensource/sm")
    sm_dir.mkdir(parents=True)
    (sm_dir / "NFSSR").write_text("#!/bin/sh\n")
    (sm_dir / "NFSSR").chmod(0o755)
    (sm_dir / "ISOSR").write_text("#!/bin/sh\n")          # not executable: skipped
    (sm_dir / "ISOSR").chmod(0o644)
    done = tree.up()
    assert done.returncode == 0, describe(done)
    status = json.loads(tree.ctl("status", "--json").stdout)
    register = step(status, "Register SR plugins")
    assert register["status"] == "ok", register
    with RpcClient(tree.paths.rpc_endpoint("xapi-db"), timeout_s=10) as db:
        records = db.call("db.read_records_where", "SM", ["true"])
    assert sorted((r["type"], r["name_label"]) for r in records.values()) == [("nfs", "NFS")]
    assert "ISOSR" in (tree.paths.log_file("xapi-init")).read_text()
