"""The steps "Create networks" and "Bring up physical NICs" (daemons/init/network_steps.py) against
a real xapi-db Engine and a fake sysfs under the ROOT: records on a fresh database and again (a
second run writes nothing), PIFs matched not duplicated, the management PIF and address, and the
plug: the link, an interface-reconfigure hook that works, fails, hangs, is not executable, and a
NIC that disappears between the scan and the plug."""

import os
import shutil

import pytest

from common import inventory
from common.config import load_config
from common.errors import XapiError
from daemons.init import network_steps as ns

from platform_harness import add_nic, assert_quiet, client, fake_addresses, make_ctx
from test_dbsync import EngineThread

NULL = "OpaqueRef:NULL"
MAC7, MAC8 = "02:00:00:00:07:07", "02:00:00:00:08:08"


@pytest.fixture
def engine(env):
    engine = EngineThread(env)
    yield engine
    engine.shutdown()


@pytest.fixture
def nics(env):
    """eth7 (link up) and eth8 (no carrier), physical; ifb7, virtual: not a PIF."""
    add_nic(env.root, "eth7", MAC7, mtu=9000)
    add_nic(env.root, "eth8", MAC8, carrier=False)
    add_nic(env.root, "ifb7", "02:00:00:00:00:99", physical=False)


def pifs(engine):
    return {r["device"]: (ref, r) for ref, r in client(engine).records("PIF").items()}


def host_record(engine, ctx):
    return engine.call("db.read_record", "host",
                       engine.call("db.get_by_uuid", "host",
                                   ctx.inventory[inventory.INSTALLATION_UUID]))


HOOK = "/opt/xensource/libexec/interface-reconfigure"


def write_hook(ctx, body, dom0_path=HOOK, mode=0o755):
    path = ctx.paths.under(dom0_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, mode)
    return path


def configure(ctx, **options):
    ctx.paths.xapi_conf.write_text("".join(f"{k} = {v}\n" for k, v in options.items()))
    ctx.config = load_config(ctx.paths)


# -- Create networks ----------------------------------------------------------------------------

def test_create_networks_makes_the_host_internal_management_network_once(env, engine):
    ctx = make_ctx(env, engine)
    note = ns.create_networks(ctx, None)
    assert "created 'Host internal management network'" in note
    [(ref, net)] = client(engine).records("network").items()
    assert net["name_label"] == "Host internal management network"
    assert net["name_description"].startswith("Network on which guests will be assigned a "
                                              "private link-local IP address")
    assert (net["bridge"], net["MTU"]) == ("xenapi", 1500)
    assert net["other_config"] == {
        "is_guest_installer_network": "true", "is_host_internal_management_network": "true",
        "ip_begin": "169.254.0.1", "ip_end": "169.254.255.254", "netmask": "255.255.0.0"}
    note = assert_quiet(engine, lambda: ns.create_networks(ctx, None))
    assert note == f"'Host internal management network' exists ({ref})"


def test_create_networks_keeps_an_edited_network_and_puts_its_bridge_right(env, engine):
    ctx = make_ctx(env, engine)
    ref = client(engine).create("network", {
        "name_label": "my internal net", "bridge": "xenbr9",
        "other_config": {"is_host_internal_management_network": "true", "ip_begin": "10.0.0.1"}})
    note = ns.create_networks(ctx, None)
    assert note.endswith("bridge set to xenapi")
    [(same, net)] = client(engine).records("network").items()
    assert same == ref and net["bridge"] == "xenapi"
    assert (net["name_label"], net["other_config"]["ip_begin"]) == ("my internal net", "10.0.0.1")


# -- Bring up physical NICs: records --------------------------------------------------------------

def test_a_pif_per_physical_nic_with_its_network(env, engine, nics):
    ctx = make_ctx(env, engine)
    note = ns.bring_up_physical_nics(ctx, None)
    assert "2 physical NIC(s); PIFs: 2 created, 0 updated; link checked" in note
    found = pifs(engine)
    assert sorted(found) == ["eth7", "eth8"]                 # ifb7 has no device: not a PIF
    host = client(engine).find("host")[0]
    networks = client(engine).records("network")
    for device, mac, mtu, attached in (("eth7", MAC7, 9000, True), ("eth8", MAC8, 1500, False)):
        ref, pif = found[device]
        assert (pif["MAC"], pif["MTU"], pif["physical"], pif["host"], pif["VLAN"]) == \
            (mac, mtu, True, host, -1)
        assert pif["currently_attached"] is attached, device
        assert pif["management"] is False and pif["ip_configuration_mode"] == "None"
        net = networks[pif["network"]]
        bridge = "xenbr" + device[3:]
        assert (net["bridge"], net["name_label"], net["MTU"]) == \
            (bridge, f"Pool-wide network associated with {device}", 1500)
        metrics = engine.call("db.read_record", "PIF_metrics", pif["metrics"])
        assert (metrics["carrier"], metrics["speed"]) == (attached, 1000)
    assert "eth7 (xenbr7, attached)" in note
    assert "eth8 (xenbr8, unplugged (no carrier on eth8))" in note
    assert host_record(engine, ctx)["address"] == "127.0.0.1"
    assert "management address 127.0.0.1" in note
    assert_quiet(engine, lambda: ns.bring_up_physical_nics(ctx, None))


def test_existing_pifs_are_matched_by_device_then_mac_not_duplicated(env, engine, nics):
    ctx = make_ctx(env, engine)
    ns.bring_up_physical_nics(ctx, None)
    before = pifs(engine)
    shutil.rmtree(env.paths.root / "sys/class/net/eth7")
    add_nic(env.root, "eth9", MAC7, mtu=1500)               # eth7 renamed eth9, MTU changed
    (env.paths.root / "sys/class/net/eth8/mtu").write_text("1400\n")
    note = ns.bring_up_physical_nics(ctx, None)
    assert "PIFs: 0 created, 2 updated" in note
    after = pifs(engine)
    assert sorted(after) == ["eth8", "eth9"]
    assert after["eth9"][0] == before["eth7"][0] and after["eth9"][1]["MTU"] == 1500
    assert after["eth8"][0] == before["eth8"][0] and after["eth8"][1]["MTU"] == 1400
    assert len(client(engine).records("PIF")) == 2


def test_the_management_interface_by_bridge_with_the_management_address_option(env, engine,
                                                                                nics):
    ctx = make_ctx(env, engine, **{"management-address": "127.0.0.5"})
    ctx.inventory[inventory.MANAGEMENT_INTERFACE] = "xenbr7"   # as a dom0 inventory has it
    note = ns.bring_up_physical_nics(ctx, None)
    found = pifs(engine)
    assert found["eth7"][1]["management"] is True and found["eth8"][1]["management"] is False
    assert (found["eth7"][1]["IP"], found["eth7"][1]["ip_configuration_mode"]) == \
        ("127.0.0.5", "Static")
    assert host_record(engine, ctx)["address"] == "127.0.0.5"
    assert "eth7 (xenbr7, attached, management)" in note and "address 127.0.0.5" in note
    assert ctx.notes["management_address"] == "127.0.0.5"
    assert_quiet(engine, lambda: ns.bring_up_physical_nics(ctx, None))
    ctx.inventory[inventory.MANAGEMENT_INTERFACE] = "eth8"     # the operator moved it
    ns.bring_up_physical_nics(ctx, None)
    found = pifs(engine)
    assert found["eth7"][1]["management"] is False and found["eth8"][1]["management"] is True


def test_the_management_address_is_the_management_interface_address(env, engine, nics,
                                                                     monkeypatch):
    fake_addresses(monkeypatch, env.root, {"eth7": ("192.0.2.7", "255.255.255.0"),
                                           "eth8": ("198.51.100.8", "255.255.255.0")})
    ctx = make_ctx(env, engine)
    ctx.inventory[inventory.MANAGEMENT_INTERFACE] = "eth7"
    note = ns.bring_up_physical_nics(ctx, None)
    found = pifs(engine)
    assert [found["eth7"][1][k] for k in ("IP", "netmask", "ip_configuration_mode")] == \
        ["192.0.2.7", "255.255.255.0", "Static"]
    assert [found["eth8"][1][k] for k in ("IP", "netmask", "management")] == \
        ["198.51.100.8", "255.255.255.0", False]
    assert host_record(engine, ctx)["address"] == "192.0.2.7"
    assert "management address 192.0.2.7" in note


# -- the plug -----------------------------------------------------------------------------------

def test_plug_through_the_hook(env, engine, nics):
    ctx = make_ctx(env, engine)
    calls = env.paths.root / "hook.calls"
    hook = write_hook(ctx, f'echo "$@" >> {calls}\n')
    configure(ctx, **{"interface-reconfigure": HOOK})
    note = ns.bring_up_physical_nics(ctx, None)
    assert calls.read_text().splitlines() == ["--device=eth7 up", "--device=eth8 up"]
    assert {d: r["currently_attached"] for d, (_, r) in pifs(engine).items()} == \
        {"eth7": True, "eth8": True}                   # the hook says up, whatever the carrier
    assert f"plugged with {hook}" in note


def test_a_hook_that_fails_leaves_the_pif_unplugged_and_start_up_goes_on(env, engine, nics,
                                                                         caplog):
    ctx = make_ctx(env, engine, **{"interface-reconfigure": "/sbin/ifup-hook"})
    write_hook(ctx, 'echo "cannot bring $1 up" >&2\n[ "$1" = --device=eth7 ] && exit 1\nexit 0\n',
               dom0_path="/sbin/ifup-hook")
    note = ns.bring_up_physical_nics(ctx, None)
    found = pifs(engine)
    assert found["eth7"][1]["currently_attached"] is False
    assert found["eth8"][1]["currently_attached"] is True
    assert "exited with 1: cannot bring --device=eth7 up" in note
    assert any("not plugged" in r.getMessage() and "eth7" in r.getMessage()
               for r in caplog.records)


def test_a_hook_that_hangs_is_killed_within_its_bound(env, engine, nics, monkeypatch):
    monkeypatch.setattr(ns, "HOOK_TIMEOUT_S", 0.5)
    ctx = make_ctx(env, engine, **{"interface-reconfigure": "/hook"})
    write_hook(ctx, "exec sleep 30\n", dom0_path="/hook")
    note = ns.bring_up_physical_nics(ctx, None)
    assert "killed after 0.5 s" in note
    assert not any(r["currently_attached"] for _, r in pifs(engine).values())


@pytest.mark.parametrize("mode, what", [(0o644, "is not an executable file"),
                                        (None, "does not exist")])
def test_a_hook_that_cannot_run_fails_the_step_naming_the_file(env, engine, nics, mode, what):
    ctx = make_ctx(env, engine)
    ns.bring_up_physical_nics(ctx, None)
    assert pifs(engine)["eth7"][1]["currently_attached"] is True
    if mode is not None:
        write_hook(ctx, "exit 0\n", mode=mode)
    configure(ctx, **{"interface-reconfigure": HOOK})
    with pytest.raises(XapiError) as e:
        ns.bring_up_physical_nics(ctx, None)
    assert e.value.code == "INTERFACE_RECONFIGURE_NOT_EXECUTABLE"
    text = str(e.value)
    assert str(ctx.paths.under(HOOK)) in text
    assert what in text and "interface-reconfigure" in text and "xapi.conf:1" in text
    assert not any(r["currently_attached"] for _, r in pifs(engine).values())


def test_a_nic_that_disappears_between_scan_and_plug(env, engine, nics, caplog):
    """The hook, run for eth7 first, removes eth8 from the (fake) sysfs: eth8's PIF exists (the
    scan saw it) but is marked unplugged, and the step still ends normally."""
    ctx = make_ctx(env, engine, **{"interface-reconfigure": "/hook"})
    eth8 = env.paths.root / "sys/class/net/eth8"
    write_hook(ctx, f'[ "$1" = --device=eth7 ] && rm -rf {eth8}\nexit 0\n', dom0_path="/hook")
    note = ns.bring_up_physical_nics(ctx, None)
    assert not eth8.exists()
    found = pifs(engine)
    assert sorted(found) == ["eth7", "eth8"]
    assert found["eth7"][1]["currently_attached"] is True
    assert found["eth8"][1]["currently_attached"] is False
    assert "eth8 (xenbr8, unplugged (NIC eth8 is gone (since the scan)))" in note
    assert any("eth8" in r.getMessage() and "gone" in r.getMessage() for r in caplog.records)
    # the next start finds no eth8: its PIF is kept (its records are the operator's), unplugged
    note = assert_quiet(engine, lambda: ns.bring_up_physical_nics(ctx, None))
    assert "1 physical NIC(s)" in note and "eth8 is gone" in note
