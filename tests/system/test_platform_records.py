"""The Xen-facing records of start-up on a real tree (checked with `xapi-ctl db dump` and `db get`):
a master on a fresh ROOT whose inventory names eth0 as its management interface has PIFs for the
machine's physical NICs only (not lo, not ifb*), their networks and the host internal management
network, its local file SR and the tools SR plugged with VDIs from their files, the tools ISO's
version, the built-in templates, SM records from the plugins dir, and ends enabled. A second
start makes none of them twice. One tree for the module (the last test restarts it)."""

import os
from pathlib import Path

import pytest

from common import inventory
from common.platform import templates

from .conftest import Tree, describe

STEPS = ("Create networks", "Bring up physical NICs", "Initialise storage",
         "Check / create templates", "Establish version of tools VDI", "Plug unplugged PBDs")
TOOLS_ISO = "guest-tools-8.4.0-12.iso"
SYS_CLASS_NET = Path("/sys/class/net")


def physical_nics():
    """The machine's NICs backed by a device, straight from sysfs."""
    return sorted(dev for dev in os.listdir(SYS_CLASS_NET)
                  if (SYS_CLASS_NET / dev / "device").exists())


@pytest.fixture(scope="module")
def tree():
    """A master whose inventory names the first physical NIC as MANAGEMENT_INTERFACE (with
    management-address 127.0.0.1, so nothing depends on the machine's addresses), SM plugins,
    a tools ISO and a disk in the local SR's directory."""
    t = Tree()
    try:
        t.init()
        inv = inventory.read_inventory(t.paths.inventory)
        inv[inventory.MANAGEMENT_INTERFACE] = (physical_nics() or ["eth0"])[0]
        inventory.write_inventory(t.paths.inventory, inv)
        t.configure(management_address="127.0.0.1")
        sm = t.paths.under("/opt/xensource/sm")
        sm.mkdir(parents=True)
        for plugin in ("FileSR", "ISOSR"):
            (sm / plugin).write_text("#!/bin/sh\n")
            os.chmod(sm / plugin, 0o755)
        iso = t.paths.under("/opt/xensource/packages/iso")
        iso.mkdir(parents=True)
        (iso / TOOLS_ISO).write_bytes(b"\0" * 4096)
        t.paths.local_sr.mkdir(parents=True)
        with open(t.paths.local_sr / "disk0.img", "wb") as f:
            f.truncate(8 * 1024 * 1024)
        done = t.up()
        assert done.returncode == 0, describe(done)
        yield t
    finally:
        t.cleanup()


def steps(tree):
    return {s["name"]: s for s in tree.status()["steps"]}


@pytest.mark.timeout(120)
def test_the_steps_run_for_real(tree):
    found = steps(tree)
    for name in STEPS:
        assert found[name]["status"] == "ok", found[name]
        assert found[name]["error"] is None, found[name]
    assert "guest-tools-8.4.0-12.iso: version 8.4.0-12" in \
        found["Establish version of tools VDI"]["note"]
    assert "management address 127.0.0.1" in found["Bring up physical NICs"]["note"]


@pytest.mark.timeout(120)
def test_pifs_for_the_physical_nics_only_and_their_networks(tree):
    tables = tree.db_dump()
    host_uuid = inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]
    host = tree.db_get("host", host_uuid)
    expected = physical_nics()
    pifs = {p["device"]: p for p in tables["PIF"]}
    assert sorted(pifs) == expected
    assert "lo" not in pifs and not any(dev.startswith("ifb") for dev in pifs)
    networks = {n["ref"]: n for n in tables["network"]}
    for dev, pif in pifs.items():
        address = (SYS_CLASS_NET / dev / "address").read_text().strip().lower()
        assert (pif["host"], pif["MAC"], pif["physical"], pif["VLAN"]) == \
            (host["ref"], address, "true", "-1")
        assert networks[pif["network"]]["bridge"] == \
            ("xenbr" + dev[3:] if dev.startswith("eth") else "br" + dev)
        carrier = (SYS_CLASS_NET / dev / "carrier").read_text().strip() == "1"
        assert pif["currently_attached"] == ("true" if carrier else "false"), pif
    if expected:
        management = tree.db_get("PIF", pifs[expected[0]]["uuid"])
        assert (management["management"], management["IP"]) == (True, "127.0.0.1")
    assert host["address"] == "127.0.0.1"
    internal = [n for n in tables["network"] if n["bridge"] == "xenapi"]
    assert [n["name__label"] for n in internal] == ["Host internal management network"]


@pytest.mark.timeout(120)
def test_storage_templates_and_sm_records(tree):
    tables = tree.db_dump()
    srs = {s["name__label"]: s for s in tables["SR"]}
    local, tools = srs["Local storage"], srs["XenServer Tools"]
    assert (local["type"], local["content_type"], local["shared"]) == ("file", "user", "false")
    pbds = {p["SR"]: p for p in tables["PBD"]}
    for sr in (local, tools):
        assert pbds[sr["ref"]]["currently_attached"] == "true", pbds[sr["ref"]]
    vdis = {(v["SR"], v["location"]): v for v in tables["VDI"]}
    disk = tree.db_get("VDI", vdis[(local["ref"], "disk0.img")]["uuid"])
    assert (disk["virtual_size"], disk["missing"]) == (8 * 1024 * 1024, False)
    tools_vdi = tree.db_get("VDI", vdis[(tools["ref"], TOOLS_ISO)]["uuid"])
    assert tools_vdi["sm_config"] == {"xs-tools": "true", "xs-tools-version": "8.4.0",
                                      "xs-tools-build": "12"}
    names = {vm["name__label"] for vm in tables["VM"] if vm["is_a_template"] == "true"}
    assert {t.name_label for t in templates.TEMPLATES} <= names
    assert sorted(sm["type"] for sm in tables["SM"]) == ["file", "iso"]
    host_uuid = inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]
    assert tree.db_get("host", host_uuid)["enabled"] is True


@pytest.mark.timeout(240)
def test_a_second_start_makes_nothing_twice(tree):
    def counts():
        tables = tree.db_dump()
        return {cls: len(tables[cls]) for cls in ("PIF", "network", "SR", "PBD", "VDI", "VM",
                                                   "SM", "PIF_metrics")}
    before = counts()
    tree.ctl_ok("down", timeout_s=90)
    done = tree.up()
    assert done.returncode == 0, describe(done)
    assert counts() == before
    found = steps(tree)
    assert "0 created" in found["Check / create templates"]["note"]
    assert "PIFs: 0 created" in found["Bring up physical NICs"]["note"]
    assert "exists" in found["Create networks"]["note"]
