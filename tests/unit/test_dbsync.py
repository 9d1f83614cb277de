"""dbsync (daemons/init/dbsync.py) against a real xapi-db Engine running in a background thread's
asyncio loop: the sub-steps on a fresh database and again (a second run changes nothing: no
generation bump, no new row), the skip list, a failing sub-step named in the error, the VM power
states from the simulated hypervisor, and the master's reset of VMs whose host is gone.

Host facts are fixed (monkeypatched) so a second run sees the same host; every value crosses a
msgpack round trip as on the bus."""

import argparse
import asyncio
import inspect
import logging
import os
import threading
import uuid as uuid_mod

import psutil
import pytest

from common import inventory, poolconf, protocol
from common import license as license_mod
from common.config import load_config
from common.errors import XapiError
from common.platform import hostfacts
from common.platform.xensim import XenSim
from daemons.db import front
from daemons.init import dbsync, dbsync_common, dbsync_host, dbsync_master
from daemons.init.context import HostContext
from daemons.rrd.store import RrdStore

from db_harness import Env  # noqa: E402

NULL = "OpaqueRef:NULL"
GIB = 2 ** 30
BOOT_TIME = 1_700_000_000.0
AGENT_START = 1_712_345_678.25
CALL_TIMEOUT_S = 30.0


# -- harness ------------------------------------------------------------------------------------

class EngineThread:
    """An Engine on its own loop in a thread, and ``call(method, *args)`` as xapi-db's bus front
    answers it (the methods front.register gives a daemon), arguments and results through
    msgpack as on the bus."""

    def __init__(self, env):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="test-engine")
        self.thread.start()
        self.engine = self._run(env.engine())
        self.methods = {}
        front.register(self, self.engine)

    def register(self, name, fn, **_):
        self.methods[name] = fn

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    def call(self, method, *args):
        fn = self.methods[method]
        args = protocol.unpack(protocol.pack(list(args)))

        async def invoke():
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        return protocol.unpack(protocol.pack(self._run(invoke())))

    @property
    def generation(self):
        return self._run(self._generation())

    async def _generation(self):
        return self.engine.store.generation

    def counts(self):
        return self._run(self._counts())

    async def _counts(self):
        return {name: len(table.rows) for name, table in self.engine.store.tables.items()}

    def shutdown(self):   # not close(): DbClient.close() closes its caller
        try:
            self._run(self.engine.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def env():
    env = Env()
    yield env
    env.close()


@pytest.fixture
def db(env):
    engine = EngineThread(env)
    yield engine
    engine.shutdown()


def fake_cpu(number, mhz=2400.0):
    return hostfacts.Cpu(number=number, vendor="GenuineIntel", model_name="Test CPU @ 2.40GHz",
                         family="6", model="85", stepping="7", flags=("fpu", "vme", "sse2"),
                         speed_mhz=mhz)


def fake_nic(device, carrier=True, ipv4=("192.0.2.10",)):
    return hostfacts.Nic(device=device, mac="02:00:00:00:00:01", mtu=1500, ipv4=ipv4, ipv6=(),
                         netmask="255.255.255.0", carrier=carrier, speed_mbps=1000,
                         driver="e1000", physical=True)


class Facts:
    """The host as the tests want it; ``nics`` by device."""

    def __init__(self):
        self.cpus = [fake_cpu(i) for i in range(4)]
        self.memory = (16 * GIB, 10 * GIB)
        self.nics = {}


@pytest.fixture
def facts(monkeypatch):
    f = Facts()
    monkeypatch.setattr(hostfacts, "hostname", lambda: "testhost")
    monkeypatch.setattr(hostfacts, "cpus", lambda *a, **k: list(f.cpus))
    monkeypatch.setattr(hostfacts, "memory", lambda: f.memory)
    monkeypatch.setattr(hostfacts, "boot_time", lambda: BOOT_TIME)
    monkeypatch.setattr(hostfacts, "nic", lambda device, *a, **k: f.nics.get(device))
    return f


def make_ctx(env, role="master", **options):
    paths = env.paths
    if options:
        paths.xapi_conf.write_text("".join(f"{k} = {v}\n" for k, v in options.items()))
    ctx = HostContext(paths=paths, config=load_config(paths),
                      role=poolconf.parse_pool_conf(role),
                      args=argparse.Namespace(root=str(paths.root)),
                      log=logging.getLogger("test-dbsync"))
    ctx.inventory, _ = inventory.ensure_inventory(paths.inventory)
    ctx.license = license_mod.read_license(paths.license)
    return ctx


class _InProcessRrd:
    """xapi-rrd's rrd.load_host_rrd (its real RrdStore on this ROOT) without the process:
    dbsync's unit tests run no daemons."""

    def __init__(self, paths):
        self.store = RrdStore(paths)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def call(self, method, *args):
        assert method == "rrd.load_host_rrd", method
        return self.store.load(args[0], "host")


@pytest.fixture(autouse=True)
def in_process_rrd(monkeypatch):
    real = HostContext.rpc

    def rpc(self, program="xapi-db"):
        return _InProcessRrd(self.paths) if program == "xapi-rrd" else real(self, program)
    monkeypatch.setattr(HostContext, "rpc", rpc)


def sync(ctx, db):
    return dbsync.sync(ctx, dbsync.DbClient(db), agent_start_time=AGENT_START)


def run_substep(ctx, db, name):
    fn = dict(dbsync.PER_HOST + dbsync.MASTER_ONLY)[name]
    return fn(dbsync.Sync(ctx, dbsync.DbClient(db), agent_start_time=AGENT_START))


def records(db, cls, **eq):
    return dbsync.DbClient(db).records(cls, **eq)


def one(db, cls, **eq):
    found = records(db, cls, **eq)
    assert len(found) == 1, (cls, eq, found)
    return next(iter(found.items()))


def localhost(db, ctx):
    return db.call("db.get_by_uuid", "host", ctx.inventory[inventory.INSTALLATION_UUID])


def assert_quiet(db, ctx, body):
    """``body()`` (a second run) changes nothing: same generation, same rows."""
    before = (db.generation, db.counts())
    body()
    assert (db.generation, db.counts()) == before


def populate(ctx, db):
    """A host with something for every sub-step to find: a crash dump, an applied patch, SM
    plugins, ISOs, a PIF with a VLAN, a guest domain, a pending task."""
    root = ctx.paths
    crash = root.under(dbsync_host.CRASH_DIR) / "20240102-030405-UTC"
    crash.mkdir(parents=True)
    (crash / "dump").write_bytes(b"x" * 1000)
    applied = root.under(dbsync_host.PATCH_APPLIED_DIR)
    applied.mkdir(parents=True)
    (applied / "p1").write_text(
        f'<info uuid="{uuid_mod.uuid4()}" name-label="hotfix 1" name-description="fixes" '
        f'version="1.0" after-apply-guidance="restartXAPI restartHost"/>')
    sm = root.under(dbsync_master.SM_DIR)
    sm.mkdir(parents=True)
    (sm / "EXTSR").write_text("#!/bin/sh\n")
    os.chmod(sm / "EXTSR", 0o755)
    iso = root.under(dbsync_master.TOOLS_SR_DIR)
    iso.mkdir(parents=True)
    (iso / "guest-tools.iso").write_bytes(b"iso")


# -- the whole list -----------------------------------------------------------------------------

def test_a_fresh_master_gets_every_record(env, db, facts):
    ctx = make_ctx(env)
    results = sync(ctx, db)
    assert [name for name, _, _ in results] == list(dbsync.SUBSTEP_NAMES)
    status = {name: st for name, st, _ in results}
    assert status.pop("load_host_rrd") == "done"
    assert set(status.values()) == {"done"}

    host, h = one(db, "host")
    assert h["uuid"] == ctx.inventory[inventory.INSTALLATION_UUID]
    assert (h["name_label"], h["hostname"], h["address"]) == ("testhost", "testhost", "127.0.0.1")
    assert (h["API_version_major"], h["API_version_minor"]) == (2, 21)
    assert h["API_version_vendor"] == "XenSource"
    assert h["software_version"]["xapi"] == dbsync_host.VERSION
    assert h["software_version"]["build_number"] == "0"
    assert h["other_config"]["boot_time"] == "1700000000."
    assert h["other_config"]["agent_start_time"] == "1712345678.25"
    assert h["edition"] == "free"
    assert h["license_params"] == {"sku_type": "free", "expiry": "never",
                                   "restrict_pooling": "false"}
    assert h["cpu_info"]["cpu_count"] == "4" and h["cpu_info"]["speed"] == "2400.000"
    metrics = db.call("db.read_record", "host_metrics", h["metrics"])
    assert (metrics["memory_total"], metrics["memory_free"], metrics["live"]) == \
        (16 * GIB, 10 * GIB, True)

    cpus = records(db, "host_cpu", host=host)
    assert sorted(c["number"] for c in cpus.values()) == [0, 1, 2, 3]
    assert {(c["speed"], c["family"], c["model"], c["flags"]) for c in cpus.values()} == \
        {(2400, 6, 85, "fpu vme sse2")}

    vm, dom0 = one(db, "VM", is_control_domain=True)
    assert dom0["uuid"] == ctx.inventory[inventory.CONTROL_DOMAIN_UUID]
    assert (dom0["resident_on"], dom0["power_state"], dom0["domid"]) == (host, "Running", 0)
    assert dom0["memory_static_max"] == 16 * GIB and dom0["VCPUs_max"] == 4
    assert db.call("db.read_field", "VM_metrics", dom0["metrics"], "VCPUs_number") == 4
    consoles = records(db, "console", VM=vm)
    assert sorted(c["protocol"] for c in consoles.values()) == ["rfb", "vt100"]
    for ref, console in consoles.items():
        assert console["location"] == f"https://127.0.0.1/console?ref={ref}"

    _, pool = one(db, "pool")
    assert (pool["master"], pool["name_label"]) == (host, "")
    _, user = one(db, "user")
    assert (user["short_name"], user["fullname"]) == ("root", "superuser")
    sr, tools = one(db, "SR")
    assert (tools["name_label"], tools["type"], tools["content_type"], tools["shared"]) == \
        ("XenServer Tools", "iso", "iso", True)
    assert tools["other_config"]["xenserver_tools_sr"] == "true"
    _, pbd = one(db, "PBD")
    assert (pbd["host"], pbd["SR"]) == (host, sr)
    assert pbd["device_config"] == {"location": "/opt/xensource/packages/iso",
                                    "legacy_mode": "true"}


def test_a_second_run_changes_nothing(env, db, facts):
    ctx = make_ctx(env)
    populate(ctx, db)
    sim = XenSim(ctx.paths.xensim)
    sim.init(ctx.inventory[inventory.CONTROL_DOMAIN_UUID], 8 * 2 ** 20, 2)
    guest = sim.create_domain("guest")
    sim.start("guest")
    sync(ctx, db)
    host = localhost(db, ctx)
    dbsync.DbClient(db).create("VM", {"uuid": guest["uuid"], "power_state": "Running",
                                      "resident_on": host, "domid": guest["domid"]})
    facts.nics["eth0"] = fake_nic("eth0")
    pif = dbsync.DbClient(db).create("PIF", {"host": host, "device": "eth0", "VLAN": -1})
    dbsync.DbClient(db).create("PIF", {"host": host, "device": "eth0", "VLAN": 7})
    sync(ctx, db)   # the first run that sees them
    assert db.call("db.read_field", "PIF", pif, "currently_attached") is True
    assert_quiet(db, ctx, lambda: sync(ctx, db))
    assert len(records(db, "VLAN")) == 1 and len(records(db, "host_crashdump")) == 1
    assert len(records(db, "host_patch")) == 1 and len(records(db, "SM")) == 1


def test_memory_free_that_moves_a_little_is_not_rewritten(env, db, facts):
    ctx = make_ctx(env)
    sync(ctx, db)
    facts.memory = (16 * GIB, 10 * GIB + 2 ** 20)       # 1 MiB: within the slack
    assert_quiet(db, ctx, lambda: sync(ctx, db))
    facts.memory = (16 * GIB, 8 * GIB)
    sync(ctx, db)
    _, h = one(db, "host")
    assert db.call("db.read_field", "host_metrics", h["metrics"], "memory_free") == 8 * GIB


@pytest.mark.parametrize("name", dbsync.SUBSTEP_NAMES)
def test_each_substep_on_a_fresh_database_then_again(env, db, facts, name):
    ctx = make_ctx(env)
    populate(ctx, db)
    if name != "create_localhost":
        run_substep(ctx, db, "create_localhost")
    note = run_substep(ctx, db, name)
    assert isinstance(note, str) and note
    assert_quiet(db, ctx, lambda: run_substep(ctx, db, name))


def test_real_host_facts_give_one_host_cpu_per_logical_cpu(env, db):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    run_substep(ctx, db, "create_host_cpu")
    assert len(records(db, "host_cpu")) == psutil.cpu_count(logical=True)


# -- the skip list, failures ---------------------------------------------------------------------

def test_the_skip_list_is_honoured(env, db, facts, caplog):
    ctx = make_ctx(env, **{"disable-dbsync-for": "create_host_cpu, sync_create_root_user bogus"})
    with caplog.at_level(logging.INFO, logger="test-dbsync"):
        results = sync(ctx, db)
    status = {name: st for name, st, _ in results}
    assert status["create_host_cpu"] == status["create_root_user"] == "skipped"
    assert records(db, "host_cpu") == {} and records(db, "user") == {}
    assert len(records(db, "pool")) == 1
    assert "dbsync: create_host_cpu: skipped (disable-dbsync-for)" in caplog.text
    assert "bogus" in caplog.text
    note = dbsync.describe(results, "master")
    for name in dbsync.SUBSTEP_NAMES:
        assert f"{name}: " in note


def test_a_failing_substep_fails_dbsync_with_its_name(env, db, facts, monkeypatch):
    ctx = make_ctx(env)

    def broken(*args, **kwargs):
        raise RuntimeError("cpuinfo is on fire")
    monkeypatch.setattr(hostfacts, "cpus", broken)
    with pytest.raises(XapiError) as info:
        sync(ctx, db)
    assert info.value.description == ["DBSYNC_FAILED", "create_host_cpu",
                                      "RuntimeError: cpuinfo is on fire"]
    assert len(records(db, "host")) == 1          # the sub-steps before it ran
    assert records(db, "VM") == {}                # the ones after it did not


def test_without_localhost_a_substep_says_why(env, db, facts):
    ctx = make_ctx(env, **{"disable-dbsync-for": "create_localhost"})
    with pytest.raises(XapiError) as info:
        sync(ctx, db)
    assert info.value.params[:1] == ["record_hostname"]
    assert "DBSYNC_NO_LOCALHOST" in info.value.params[1]


def test_a_slave_runs_the_per_host_part_only(env, db, facts):
    ctx = make_ctx(env, role="slave:127.0.0.2")
    results = sync(ctx, db)
    assert [name for name, _, _ in results] == [name for name, _ in dbsync.PER_HOST]
    status = {name: (st, note) for name, st, note in results}
    assert status["copy_pifs_from_master"][0] == "pending"
    assert records(db, "pool") == {} and records(db, "user") == {}
    assert len(records(db, "host")) == 1


# -- VM power states ------------------------------------------------------------------------------

def test_a_vm_whose_domain_stopped_becomes_halted(env, db, facts, caplog):
    ctx = make_ctx(env)
    sim = XenSim(ctx.paths.xensim)
    sim.init(ctx.inventory[inventory.CONTROL_DOMAIN_UUID], 4 * 2 ** 20, 2)
    guest = sim.create_domain("guest")
    sim.start("guest")
    sim.create_domain("other")
    sim.start("other")                        # a domain no VM record knows: left alone
    sync(ctx, db)
    host = localhost(db, ctx)
    client = dbsync.DbClient(db)
    vm = client.create("VM", {"uuid": guest["uuid"], "power_state": "Halted"})
    vbd = client.create("VBD", {"VM": vm, "currently_attached": True})

    with caplog.at_level(logging.INFO, logger="test-dbsync"):
        sync(ctx, db)                         # Halted in the DB, live domain: Running here
    record = db.call("db.read_record", "VM", vm)
    assert (record["power_state"], record["resident_on"], record["domid"]) == \
        ("Running", host, guest["domid"])
    assert "has no VM record: left alone" in caplog.text
    assert_quiet(db, ctx, lambda: sync(ctx, db))

    sim.stop("guest")
    sync(ctx, db)
    record = db.call("db.read_record", "VM", vm)
    assert (record["power_state"], record["resident_on"], record["domid"]) == \
        ("Halted", NULL, -1)
    assert db.call("db.read_field", "VBD", vbd, "currently_attached") is False
    dom0 = one(db, "VM", is_control_domain=True)[1]
    assert (dom0["power_state"], dom0["memory_static_max"], dom0["VCPUs_max"]) == \
        ("Running", 4 * GIB, 2)


def test_a_running_vm_whose_host_is_gone_is_halted_by_the_master(env, db, facts):
    ctx = make_ctx(env)
    sync(ctx, db)
    client = dbsync.DbClient(db)
    gone = "OpaqueRef:" + str(uuid_mod.uuid4())
    vm = client.create("VM", {"power_state": "Running", "resident_on": gone, "domid": 3})
    vif = client.create("VIF", {"VM": vm, "currently_attached": True})
    dom0_of_gone = client.create("VM", {"is_control_domain": True, "power_state": "Running",
                                        "resident_on": gone})
    halted = client.create("VM", {"power_state": "Halted", "scheduled_to_be_resident_on": gone})

    slave_ctx = make_ctx(env, role="slave:127.0.0.2")
    sync(slave_ctx, db)                       # not the slave's business
    assert db.call("db.read_field", "VM", vm, "power_state") == "Running"

    sync(ctx, db)
    record = db.call("db.read_record", "VM", vm)
    assert (record["power_state"], record["resident_on"], record["domid"]) == \
        ("Halted", NULL, -1)
    assert db.call("db.read_field", "VIF", vif, "currently_attached") is False
    assert not db.call("db.is_valid_ref", dom0_of_gone)
    assert db.call("db.read_field", "VM", halted, "scheduled_to_be_resident_on") == NULL
    assert_quiet(db, ctx, lambda: sync(ctx, db))


# -- sub-steps one by one -----------------------------------------------------------------------

def test_crashdumps_follow_the_crash_directory(env, db, facts):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    crash = ctx.paths.under(dbsync_host.CRASH_DIR)
    note = run_substep(ctx, db, "crashdump_resynchronise")     # no directory: nothing
    assert note.startswith("0 new, 0 removed")
    (crash / "20240102-030405-UTC").mkdir(parents=True)
    (crash / "20240102-030405-UTC" / "vmcore").write_bytes(b"x" * 4000)
    (crash / "odd-name").mkdir()
    (crash / "not-a-dump.txt").write_text("a file")
    run_substep(ctx, db, "crashdump_resynchronise")
    dumps = {r["other_config"]["filename"]: r for r in records(db, "host_crashdump").values()}
    assert sorted(dumps) == ["20240102-030405-UTC", "odd-name"]
    stamp = dumps["20240102-030405-UTC"]["timestamp"]
    assert (stamp.year, stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second) == \
        (2024, 1, 2, 3, 4, 5)
    assert dumps["20240102-030405-UTC"]["size"] >= 4000
    (crash / "odd-name").rmdir()
    assert run_substep(ctx, db, "crashdump_resynchronise").startswith("0 new, 1 removed")
    assert len(records(db, "host_crashdump")) == 1


def test_patches_follow_the_applied_directory(env, db, facts, caplog):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    applied = ctx.paths.under(dbsync_host.PATCH_APPLIED_DIR)
    applied.mkdir(parents=True)
    uuid = str(uuid_mod.uuid4())
    (applied / "good").write_text(
        f'<info uuid="{uuid}" name-label="hotfix" name-description="d" version="2" '
        'after-apply-guidance="restartHost"/>')
    (applied / "bad").write_text("<info uuid='x'")
    with caplog.at_level(logging.WARNING, logger="test-dbsync"):
        run_substep(ctx, db, "patch_update_db")
    assert "patch stamp file" in caplog.text and "bad" in caplog.text
    pool_patch, pp = one(db, "pool_patch")
    assert (pp["uuid"], pp["name_label"], pp["version"], pp["after_apply_guidance"]) == \
        (uuid, "hotfix", "2", ["restartHost"])
    _, hp = one(db, "host_patch")
    assert (hp["pool_patch"], hp["applied"], hp["host"]) == (pool_patch, True,
                                                             localhost(db, ctx))
    (applied / "good").unlink()
    run_substep(ctx, db, "patch_update_db")
    assert records(db, "host_patch") == {} and len(records(db, "pool_patch")) == 1


def test_the_sm_table_follows_the_plugins(env, db, facts, caplog):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    sm = ctx.paths.under(dbsync_master.SM_DIR)
    sm.mkdir(parents=True)
    for name, mode in (("EXTSR", 0o755), ("NFSSR", 0o644), ("README", 0o755),
                       ("ISOSR", 0o755)):
        (sm / name).write_text("#!/bin/sh\n")
        os.chmod(sm / name, mode)
    with caplog.at_level(logging.INFO, logger="test-dbsync"):
        run_substep(ctx, db, "update_sm_table")
    assert "NFSSR is not an executable file: skipped" in caplog.text
    table = {r["type"]: r for r in records(db, "SM").values()}
    assert sorted(table) == ["ext", "iso"]
    assert (table["ext"]["name_label"], table["ext"]["driver_filename"]) == \
        ("EXT", "/opt/xensource/sm/EXTSR")
    dbsync.DbClient(db).create("SR", {"type": "iso"})         # in use: kept when its plugin goes
    (sm / "EXTSR").unlink()
    (sm / "ISOSR").unlink()
    run_substep(ctx, db, "update_sm_table")
    assert sorted(r["type"] for r in records(db, "SM").values()) == ["iso"]


def test_pif_currently_attached_follows_the_nics(env, db, facts):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    host = localhost(db, ctx)
    client = dbsync.DbClient(db)
    facts.nics = {"eth0": fake_nic("eth0"), "eth1": fake_nic("eth1", carrier=False)}
    pifs = {dev: client.create("PIF", {"host": host, "device": dev,
                                       "currently_attached": dev == "eth2"})
            for dev in ("eth0", "eth1", "eth2")}
    run_substep(ctx, db, "resynchronise_pif_currently_attached")
    assert {dev: db.call("db.read_field", "PIF", ref, "currently_attached")
            for dev, ref in pifs.items()} == {"eth0": True, "eth1": False, "eth2": False}


def test_leaked_dom0_vbds_are_removed(env, db, facts):
    ctx = make_ctx(env)
    for name in ("create_localhost", "create_domain_zero"):
        run_substep(ctx, db, name)
    client = dbsync.DbClient(db)
    dom0, _ = one(db, "VM", is_control_domain=True)
    task = client.create("task", {"status": "pending"})
    leaked = client.create("VBD", {"VM": dom0, "other_config": {"task_id": "OpaqueRef:gone"}})
    busy = client.create("VBD", {"VM": dom0, "other_config": {"task_id": task}})
    orphan = client.create("VBD", {"VM": dom0})
    related = client.create("VBD", {"VM": dom0, "other_config": {"related_to": orphan}})
    assert run_substep(ctx, db, "remove_leaked_vbds").startswith("2 leaked")
    assert [db.call("db.is_valid_ref", r) for r in (leaked, busy, orphan, related)] == \
        [False, True, True, False]


def test_running_tasks_are_cancelled(env, db, facts):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    client = dbsync.DbClient(db)
    task = client.create("task", {"status": "pending"})
    done = client.create("task", {"status": "success"})
    vm = client.create("VM", {"current_operations": {task: "start", done: "clean_shutdown"}})
    assert run_substep(ctx, db, "cancel_tasks").startswith("1 task cancelled")
    assert db.call("db.read_field", "task", task, "status") == "cancelled"
    assert db.call("db.read_field", "task", done, "status") == "success"
    assert db.call("db.read_field", "VM", vm, "current_operations") == {done: "clean_shutdown"}


def test_missing_vlan_records_and_host_metrics_are_recreated(env, db, facts):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    host = localhost(db, ctx)
    client = dbsync.DbClient(db)
    physical = client.create("PIF", {"host": host, "device": "eth0", "VLAN": -1})
    tagged = client.create("PIF", {"host": host, "device": "eth0", "VLAN": 42})
    run_substep(ctx, db, "create_vlan_records")
    vlan, v = one(db, "VLAN")
    assert (v["tag"], v["tagged_PIF"], v["untagged_PIF"]) == (42, physical, tagged)
    assert db.call("db.read_field", "PIF", tagged, "VLAN_master_of") == vlan
    other = client.create("host", {"name_label": "other"})
    run_substep(ctx, db, "create_host_metrics")
    metrics = db.call("db.read_field", "host", other, "metrics")
    assert db.call("db.read_field", "host_metrics", metrics, "live") is False
    mine = db.call("db.read_field", "host", host, "metrics")     # made by create_localhost
    assert db.call("db.get_table_from_ref", mine) == "host_metrics"
    assert len(records(db, "host_metrics")) == 2


def test_console_urls_follow_the_host_address(env, db, facts):
    ctx = make_ctx(env, **{"management-address": "127.0.0.9"})
    sync(ctx, db)
    host = localhost(db, ctx)
    client = dbsync.DbClient(db)
    vm = client.create("VM", {"resident_on": host, "power_state": "Running"})
    console = client.create("console", {"VM": vm, "location": "stale"})
    nowhere = client.create("console", {"VM": client.create("VM", {}), "location": "kept"})
    run_substep(ctx, db, "refresh_console_urls")
    assert db.call("db.read_field", "console", console, "location") == \
        f"https://127.0.0.9/console?ref={console}"
    assert db.call("db.read_field", "console", nowhere, "location") == "kept"
    assert db.call("db.read_field", "host", host, "address") == "127.0.0.9"


def test_the_management_address_comes_from_the_management_interface(env, db, facts):
    ctx = make_ctx(env)
    ctx.inventory[inventory.MANAGEMENT_INTERFACE] = "xenbr0"
    facts.nics["xenbr0"] = fake_nic("xenbr0", ipv4=("198.51.100.7",))
    assert dbsync_common.management_address(ctx) == "198.51.100.7"
    facts.nics.clear()
    assert dbsync_common.management_address(ctx) == "127.0.0.1"


def test_one_tools_sr_with_a_pbd_per_host(env, db, facts):
    ctx = make_ctx(env)
    run_substep(ctx, db, "create_localhost")
    client = dbsync.DbClient(db)
    other = client.create("host", {"name_label": "other"})
    duplicate = client.create("SR", {"other_config": {"xenserver_tools_sr": "true"}})
    client.create("PBD", {"SR": duplicate, "host": other})
    run_substep(ctx, db, "create_tools_sr")
    sr, tools = one(db, "SR")
    assert tools["name_label"] == "XenServer Tools"
    assert sorted(p["host"] for p in records(db, "PBD", SR=sr).values()) == \
        sorted([other, localhost(db, ctx)])
    assert len(records(db, "PBD")) == 2


def test_run_dbsync_notes_every_substep(env, db, facts, monkeypatch):
    ctx = make_ctx(env)
    monkeypatch.setattr(dbsync.DbClient, "connect", classmethod(lambda cls, *a: cls(db)))
    note = dbsync.run_dbsync(ctx, None)
    assert note.startswith("master: 25 sub-steps, 25 done;")
    assert "load_host_rrd: no archive" in note
    assert ctx.notes["dbsync"]["create_host_cpu"].startswith("done: 4 CPUs")


def test_ocaml_string_of_float():
    assert dbsync_host.ocaml_string_of_float(1700000000.0) == "1700000000."
    assert dbsync_host.ocaml_string_of_float(1712345678.123456) == "1712345678.12"
    assert dbsync_host.ocaml_string_of_float(0.5) == "0.5"


def test_a_bridge_named_management_interface_falls_back_to_its_device(env, db, facts):
    """Where there are no bridges (here), the inventory's xenbr0 finds eth0's address."""
    ctx = make_ctx(env)
    ctx.inventory[inventory.MANAGEMENT_INTERFACE] = "xenbr0"
    facts.nics["eth0"] = fake_nic("eth0", ipv4=("198.51.100.8",))
    assert dbsync_common.management_address(ctx) == "198.51.100.8"
    assert dbsync_common.interface_candidates("xenbr0") == ["xenbr0", "eth0"]
    assert dbsync_common.interface_candidates("brbond0") == ["brbond0", "bond0"]
    assert dbsync_common.interface_candidates("eth1") == ["eth1"]
    assert dbsync_common.interface_candidates("") == []
