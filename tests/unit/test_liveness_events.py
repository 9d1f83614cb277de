"""xapi-liveness's events thread without a tree: the inotify wrapper, the hypervisor watch
(SimChanges) on a real XenSim directory, and the mirror (DomainEvents) against a real xapi-db
engine served on a real RpcServer in a temp ROOT, reached through the real AsyncRpcClient."""

import asyncio
import json
import logging
import select
import time
import uuid as uuid_mod

import pytest

from common.errors import XapiError
from common.fileutil import atomic_write
from common.platform.xensim import XenSim
from common.rpc import AsyncRpcClient, RpcServer
from daemons.db import front
from daemons.liveness import inotify
from daemons.liveness.dbclient import NULL_REF, DbUnreachable, LivenessDb, new_ref
from daemons.liveness.events import DomainEvents
from daemons.liveness.main import LivenessDaemon
from daemons.liveness.simwatch import SimChanges

HOST_UUID = str(uuid_mod.uuid4())
DOM0_UUID = str(uuid_mod.uuid4())
MIB = 1024 * 1024
LOG = logging.getLogger("test-liveness")


async def eventually(predicate, timeout_s, what):
    """Await ``predicate()`` until it is truthy (returned) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        last = await predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last {last!r}")
        await asyncio.sleep(0.02)


class Host:
    """A real engine served on the bus, a XenSim with domain 0, and this host's records."""

    def __init__(self, env, engine):
        self.env, self.engine = env, engine
        self.endpoint = env.paths.rpc_endpoint("xapi-db")
        self.server = None
        self.sim = XenSim(env.paths.xensim)
        self.sim.init(DOM0_UUID, 1024 * 1024, 2)
        self.client = AsyncRpcClient(self.endpoint)
        self.db = LivenessDb(self.client, timeout_s=1.0)
        self.changes = None
        self.events = None
        self.task = None

    def serve(self):
        self.env.paths.rpc_socket("xapi-db").parent.mkdir(parents=True, exist_ok=True)
        self.server = RpcServer(self.endpoint)
        front.register(self.server, self.engine)
        self.server.start()

    async def unserve(self):
        await self.server.close()
        self.env.paths.rpc_socket("xapi-db").unlink(missing_ok=True)
        self.server = None

    async def setup(self):
        self.serve()
        self.host = await self.db.call("db.create_row", "host",
                                       {"uuid": HOST_UUID, "name_label": "here"}, new_ref())
        self.dom0 = await self.db.call("db.create_row", "VM", {
            "uuid": DOM0_UUID, "name_label": "Control domain", "is_control_domain": True,
            "power_state": "Running", "domid": 0, "resident_on": self.host}, new_ref())
        self.changes = SimChanges(self.sim, LOG)
        self.changes.start()
        self.events = DomainEvents(self.sim, self.changes, self.db, HOST_UUID, LOG)

    def start_thread(self):
        self.task = asyncio.get_running_loop().create_task(self.events.run())

    async def close(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.changes.close()
        self.client.close()
        if self.server is not None:
            await self.unserve()
        await self.engine.close()

    async def vm(self, uuid):
        ref = await self.db.ref_by_uuid("VM", uuid)
        return ref and {"ref": ref, **await self.db.record("VM", ref)}

    async def vms(self):
        return await self.db.records("VM")

    async def domains(self):
        return {d["uuid"]: d for d in self.sim.domains() if d["domid"] != 0}


def run(env, body):
    async def main():
        host = Host(env, await env.engine())
        try:
            await host.setup()
            return await body(host)
        finally:
            await host.close()
    return asyncio.run(main())


def state(vm):
    return (vm["power_state"], vm["domid"], vm["resident_on"])


# -- inotify ----------------------------------------------------------------------------------
def test_inotify_reports_a_file_replaced_in_a_directory(tmp_path):
    watcher = inotify.Inotify()
    try:
        watcher.add_watch(tmp_path, inotify.IN_MOVED_TO | inotify.IN_ONLYDIR)
        assert watcher.read() == []
        atomic_write(tmp_path / "generation", "7\n")
        readable, _, _ = select.select([watcher.fileno()], [], [], 5.0)
        assert readable, "no inotify event within 5 s"
        events = watcher.read()
        assert any(name == "generation" and mask & inotify.IN_MOVED_TO
                   for _, mask, name in events), events
    finally:
        watcher.close()


def test_inotify_names_a_directory_it_cannot_watch(tmp_path):
    watcher = inotify.Inotify()
    try:
        with pytest.raises(FileNotFoundError) as info:
            watcher.add_watch(tmp_path / "missing", inotify.IN_MOVED_TO)
        assert str(tmp_path / "missing") in str(info.value)
    finally:
        watcher.close()


# -- the hypervisor watch -----------------------------------------------------------------------
def test_sim_changes_wakes_on_a_change_without_polling(tmp_path):
    sim = XenSim(tmp_path / "xensim")
    sim.init(DOM0_UUID, 1024 * 1024, 1)

    async def main():
        changes = SimChanges(sim, LOG)
        changes.start()
        try:
            assert changes.mode == "inotify"
            before, wakeups = changes.generation, changes.wakeups
            # idle: nothing reads the generation file (the safeguard read is every 5 s)
            assert await changes.wait_beyond(before, 0.5) == before
            assert changes.wakeups == wakeups
            started = time.monotonic()
            sim.create_domain("guest")
            after = await changes.wait_beyond(before, 5.0)
            assert after == sim.generation == before + 1
            assert time.monotonic() - started < 1.0
            assert changes.wakeups == wakeups + 1
        finally:
            await changes.close()
    asyncio.run(main())


def test_sim_changes_polls_until_the_directory_exists_then_watches(tmp_path):
    sim = XenSim(tmp_path / "later" / "xensim")

    async def main():
        changes = SimChanges(sim, LOG, fallback_poll_s=0.05)
        changes.start()
        try:
            assert (changes.mode, changes.generation) == ("polling", 0)
            sim.init(DOM0_UUID, 1024 * 1024, 1)
            assert await changes.wait_beyond(0, 5.0) == 1
            await eventually(lambda: _async(changes.mode == "inotify"), 5.0, "the inotify watch")
            sim.create_domain("guest")
            assert await changes.wait_beyond(1, 5.0) == 2
        finally:
            await changes.close()
    asyncio.run(main())


def test_sim_changes_reports_a_corrupt_generation_file_once(tmp_path, caplog):
    sim = XenSim(tmp_path / "xensim")
    sim.init(DOM0_UUID, 1024 * 1024, 1)

    async def main():
        changes = SimChanges(sim, LOG)
        changes.start()
        try:
            atomic_write(sim.generation_file, "not a number\n")
            await eventually(lambda: _async(changes.error), 5.0, "the error")
            atomic_write(sim.generation_file, "not a number either\n")
            await eventually(lambda: _async("either" in (changes.error or "")), 5.0,
                             "the second error")
            assert changes.generation == 1        # the last good one is kept
            atomic_write(sim.generation_file, "5\n")     # repaired
            assert await changes.wait_beyond(1, 5.0) == 5
            assert changes.error is None
        finally:
            await changes.close()
    with caplog.at_level(logging.INFO, logger=LOG.name):
        asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("SIM_STATE_CORRUPT" in e and str(sim.generation_file) in e
                                    for e in errors), errors


async def _async(value):
    return value


# -- the mirror -------------------------------------------------------------------------------
def test_resync_creates_vms_for_domains_and_leaves_domain_0_alone(env):
    async def body(h):
        halted = h.sim.create_domain("halted-one", memory_kib=512 * 1024, vcpus=2)
        running = h.sim.create_domain("running-one", memory_kib=256 * 1024, vcpus=1)
        running = h.sim.start("running-one")
        dom0_before = await h.db.record("VM", h.dom0)
        done = await h.events.resync(await h.domains())
        assert done == {"created": 2, "updated": 0, "halted": 0}

        vm = await h.vm(halted["uuid"])
        assert state(vm) == ("Halted", -1, NULL_REF)
        assert (vm["name_label"], vm["is_a_template"], vm["is_control_domain"]) == \
            ("halted-one", False, False)
        assert (vm["memory_static_max"], vm["memory_dynamic_max"], vm["memory_target"],
                vm["VCPUs_max"], vm["VCPUs_at_startup"]) == (512 * MIB, 512 * MIB, 512 * MIB, 2, 2)
        metrics = await h.db.record("VM_metrics", vm["metrics"])
        assert (metrics["memory_actual"], metrics["VCPUs_number"]) == (512 * MIB, 2)

        vm = await h.vm(running["uuid"])
        assert state(vm) == ("Running", running["domid"], h.host)
        metrics = await h.db.record("VM_metrics", vm["metrics"])
        assert (metrics["memory_actual"], metrics["VCPUs_number"]) == (256 * MIB, 1)
        assert int(metrics["start_time"].timestamp()) == int(running["running_since"])

        vms = await h.vms()
        assert sorted(r["uuid"] for r in vms.values()) == \
            sorted([DOM0_UUID, halted["uuid"], running["uuid"]])
        assert await h.db.record("VM", h.dom0) == dom0_before
        assert h.events.mirrored.keys() == {halted["uuid"], running["uuid"]}
    run(env, body)


def test_a_second_resync_writes_nothing(env):
    async def body(h):
        h.sim.create_domain("a")
        h.sim.start("a")
        h.sim.create_domain("b")
        await h.events.resync(await h.domains())
        generation = h.engine.store.generation
        assert await h.events.resync(await h.domains()) == \
            {"created": 0, "updated": 0, "halted": 0}
        assert h.engine.store.generation == generation
    run(env, body)


def test_resync_halts_a_vm_resident_here_without_a_domain_and_spares_other_hosts(env):
    async def body(h):
        gone = str(uuid_mod.uuid4())
        vm = await h.db.call("db.create_row", "VM", {
            "uuid": gone, "name_label": "gone", "power_state": "Running", "domid": 7,
            "resident_on": h.host}, new_ref())
        vbd = await h.db.call("db.create_row", "VBD", {"VM": vm, "currently_attached": True},
                              new_ref())
        other = await h.db.call("db.create_row", "host", {"name_label": "other"}, new_ref())
        # a domain Halted here whose VM runs on the other host: not ours to change
        elsewhere = h.sim.create_domain("elsewhere")
        await h.db.call("db.create_row", "VM", {
            "uuid": elsewhere["uuid"], "name_label": "elsewhere", "power_state": "Running",
            "domid": 3, "resident_on": other}, new_ref())
        done = await h.events.resync(await h.domains())
        assert done["halted"] == 1
        assert state(await h.vm(gone)) == ("Halted", -1, NULL_REF)
        assert (await h.db.record("VBD", vbd))["currently_attached"] is False
        assert state(await h.vm(elsewhere["uuid"])) == ("Running", 3, other)
    run(env, body)


def test_an_existing_vm_record_is_updated_not_duplicated(env):
    async def body(h):
        d = h.sim.create_domain("known")
        ref = await h.db.call("db.create_row", "VM", {"uuid": d["uuid"], "name_label": "known"},
                              new_ref())
        d = h.sim.start("known")
        done = await h.events.resync(await h.domains())
        assert done == {"created": 0, "updated": 1, "halted": 0}
        vm = await h.vm(d["uuid"])
        assert vm["ref"] == ref and state(vm) == ("Running", d["domid"], h.host)
        assert (await h.db.record("VM_metrics", vm["metrics"]))["VCPUs_number"] == 1
        assert len(await h.vms()) == 2
    run(env, body)


def test_the_thread_follows_start_stop_and_destroy(env):
    async def body(h):
        h.start_thread()
        await eventually(lambda: _async(h.events.counts["resyncs"] == 1), 5.0, "the resync")
        d = h.sim.create_domain("guest", memory_kib=128 * 1024, vcpus=2)

        async def vm_state(want):
            vm = await h.vm(d["uuid"])
            return vm and state(vm) == want and vm

        vm = await eventually(lambda: vm_state(("Halted", -1, NULL_REF)), 5.0, "a Halted VM")
        started = time.monotonic()
        d = h.sim.start("guest")
        vm = await eventually(lambda: vm_state(("Running", d["domid"], h.host)), 5.0, "Running")
        assert time.monotonic() - started < 1.0
        metrics = await h.db.record("VM_metrics", vm["metrics"])
        assert (metrics["memory_actual"], metrics["VCPUs_number"]) == (128 * MIB, 2)

        h.sim.stop("guest")
        await eventually(lambda: vm_state(("Halted", -1, NULL_REF)), 5.0, "Halted after stop")
        h.sim.start("guest")
        await eventually(lambda: vm_state(("Running", d["domid"], h.host)), 5.0, "Running again")
        h.sim.destroy("guest")
        vm = await eventually(lambda: vm_state(("Halted", -1, NULL_REF)), 5.0,
                              "Halted after destroy")
        assert vm["ref"] and h.events.mirrored == {}
        assert h.events.counts["resyncs"] == 1 and h.events.last_error is None
    run(env, body)


def test_xapi_db_away_is_logged_once_and_changes_are_mirrored_when_it_is_back(env, caplog):
    async def body(h):
        h.start_thread()
        await eventually(lambda: _async(h.events.counts["resyncs"] == 1), 5.0, "the resync")
        await h.unserve()
        d = h.sim.create_domain("during")
        h.sim.start("during")
        await eventually(lambda: _async(h.events.state == "waiting for xapi-db"), 10.0,
                         "the outage noticed")
        await asyncio.sleep(2.5)       # several retries meanwhile (1 s timeout each)
        assert h.events.counts["outages"] == 1
        h.serve()

        async def running():
            vm = await h.vm(d["uuid"])
            return vm and vm["power_state"] == "Running"
        await eventually(running, 10.0, "the change made during the outage")
        late = h.sim.create_domain("after")
        await eventually(lambda: h.vm(late["uuid"]), 5.0, "the change made after the outage")
        assert h.events.counts["resyncs"] == 2 and h.events.counts["outages"] == 1
    with caplog.at_level(logging.INFO, logger=LOG.name):
        run(env, body)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "does not answer" in m]) == 1, messages
    assert len([m for m in messages if "answers again" in m]) == 1, messages


def test_a_corrupt_hypervisor_file_is_an_error_naming_it_and_nothing_is_written(env, caplog):
    async def body(h):
        h.sim.create_domain("guest")
        atomic_write(h.sim.domains_file, "{not json")
        generation = h.engine.store.generation
        h.start_thread()
        await eventually(lambda: _async(h.events.last_error), 5.0, "the error")
        assert "SIM_STATE_CORRUPT" in h.events.last_error
        assert str(h.sim.domains_file) in h.events.last_error
        assert h.engine.store.generation == generation
        atomic_write(h.sim.domains_file, json.dumps({"next_domid": 1, "domains": []}))
        await eventually(lambda: _async(h.events.last_error is None), 10.0, "the recovery")
        assert h.events.counts["resyncs"] == 1
    with caplog.at_level(logging.INFO, logger=LOG.name):
        run(env, body)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "SIM_STATE_CORRUPT" in errors[0], errors


def test_db_unreachable_is_raised_for_a_call_without_an_answer(env):
    async def body(h):
        await h.unserve()
        with pytest.raises(DbUnreachable):
            await h.db.ref_by_uuid("host", HOST_UUID)
    run(env, body)


# -- the command's bad input ------------------------------------------------------------------
def test_start_events_names_the_inventory_it_cannot_use(tmp_path):
    daemon = LivenessDaemon(["--root", str(tmp_path)])
    with pytest.raises(XapiError) as info:
        daemon._host_uuid()
    assert info.value.description == ["INVENTORY_MISSING", str(daemon.paths.inventory)]
    daemon.paths.inventory.parent.mkdir(parents=True, exist_ok=True)
    daemon.paths.inventory.write_text("BUILD_NUMBER='0'\n")
    with pytest.raises(XapiError) as info:
        daemon._host_uuid()
    assert info.value.description == ["INVENTORY_KEY_MISSING", str(daemon.paths.inventory),
                                      "INSTALLATION_UUID"]
    daemon.paths.inventory.write_text(f"INSTALLATION_UUID='{HOST_UUID}'\n")
    assert daemon._host_uuid() == HOST_UUID
