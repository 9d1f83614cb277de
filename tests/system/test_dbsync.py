"""dbsync on a real tree: a master started on a fresh ROOT has the records of the step "Perform
house-keeping on the internal database" (checked in `xapi-ctl db dump`), the step shows ok
(xapi-rrd loaded the host RRD), and a VM resident here whose domain stopped while the tree was down comes
back Halted. One tree for the module (the last test restarts it)."""

import json

import psutil
import pytest

from common import inventory

from .conftest import describe, running_tree, wait_until

STEP = "Perform house-keeping on the internal database"
NULL = "OpaqueRef:NULL"


@pytest.fixture(scope="module")
def tree():
    with running_tree() as t:
        yield t


def host_uuid(tree):
    return inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]


@pytest.mark.timeout(120)
def test_a_fresh_master_has_the_dbsync_records(tree):
    inv = inventory.read_inventory(tree.paths.inventory)
    tables = tree.db_dump()
    hosts = tables["host"]
    assert [h["uuid"] for h in hosts] == [inv[inventory.INSTALLATION_UUID]]
    host = hosts[0]
    assert host["address"] == "127.0.0.1"
    assert (host["API_version__major"], host["API_version__minor"]) == ("2", "21")

    cpus = [c for c in tables["host_cpu"] if c["host"] == host["ref"]]
    assert len(cpus) == psutil.cpu_count(logical=True)
    assert sorted(int(c["number"]) for c in cpus) == list(range(len(cpus)))

    metrics = {m["ref"]: m for m in tables["host_metrics"]}
    assert metrics[host["metrics"]]["live"] == "true"
    assert int(metrics[host["metrics"]]["memory__total"]) == psutil.virtual_memory().total

    dom0 = [vm for vm in tables["VM"] if vm["is_control_domain"] == "true"]
    assert [vm["uuid"] for vm in dom0] == [inv[inventory.CONTROL_DOMAIN_UUID]]
    assert (dom0[0]["resident_on"], dom0[0]["power_state"], dom0[0]["domid"]) == \
        (host["ref"], "Running", "0")

    assert [p["master"] for p in tables["pool"]] == [host["ref"]]
    assert [u["short_name"] for u in tables["user"]] == ["root"]
    tools = [sr for sr in tables["SR"] if sr["name__label"] == "XenServer Tools"]
    assert [(sr["type"], sr["content_type"]) for sr in tools] == [("iso", "iso")]
    assert [(p["host"], p["SR"]) for p in tables["PBD"] if p["SR"] == tools[0]["ref"]] == \
        [(host["ref"], tools[0]["ref"])]

    step = next(s for s in tree.status()["steps"] if s["name"] == STEP)
    assert step["status"] == "ok", step
    assert "load_host_rrd: no archive" in step["note"], step
    assert "create_host_cpu: " in step["note"] and "create_tools_sr: " in step["note"]
    log = tree.paths.log_file("xapi-init").read_text(errors="replace")
    assert "dbsync: create_localhost: " in log and "dbsync: update_sm_table: " in log


@pytest.mark.timeout(240)
def test_a_vm_whose_domain_stopped_while_down_comes_back_halted(tree):
    created = tree.ctl_ok("sim", "domain-create", "guest", "--memory-mib", "256")
    guest = next(d for d in json.loads(tree.ctl_ok("sim", "list", "--json").stdout)
                 if d["name"] == "guest")
    tree.ctl_ok("sim", "start", "guest")
    host = tree.call("xapi-db", "db.get_by_uuid", "host", host_uuid(tree))
    # the events thread (xapi-liveness) made the domain's VM and keeps it Running here
    vm = wait_until(lambda: (r := tree.db_get("VM", guest["uuid"]))["power_state"] == "Running"
                    and r["resident_on"] == host and r["ref"], 10, "the guest's VM Running")
    assert created.returncode == 0

    tree.ctl_ok("down", timeout_s=90)
    tree.ctl_ok("sim", "stop", "guest")
    done = tree.up()
    assert done.returncode == 0, describe(done)

    record = tree.db_get("VM", guest["uuid"])
    assert record["ref"] == vm
    assert (record["power_state"], record["resident_on"], record["domid"]) == \
        ("Halted", NULL, -1)
    # and what dbsync made at the first start is still one of each
    tables = tree.db_dump()
    assert len(tables["host"]) == len(tables["pool"]) == len(tables["user"]) == 1
    assert len([vm for vm in tables["VM"] if vm["is_control_domain"] == "true"]) == 1
