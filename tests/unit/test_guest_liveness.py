"""Guest liveness (daemons/liveness/guests.py) without a tree: a real XenSim on a fake clock, a
real xapi-db engine served on a real RpcServer in a temp ROOT, reached through the real
AsyncRpcClient; the guests' VMs made by the real events mirror. Each check is driven by hand
(``check()``), except where the loop itself is under test."""

import asyncio
import logging
import time
import uuid as uuid_mod

import pytest

from common.errors import ConfigError
from common.platform.xensim import XenSim, format_agent_time
from common.rpc import AsyncRpcClient, RpcServer
from daemons.db import front
from daemons.liveness import agent
from daemons.liveness.dbclient import LivenessDb, new_ref
from daemons.liveness.events import DomainEvents
from daemons.liveness.guests import (RESUMED, RESUMED_PRIORITY, SILENT, SILENT_PRIORITY,
                                     GuestLiveness)
from daemons.liveness.main import LivenessDaemon
from daemons.liveness.simwatch import SimChanges

HOST_UUID = str(uuid_mod.uuid4())
DOM0_UUID = str(uuid_mod.uuid4())
TIMEOUT_S = 300.0
INTERVAL_S = 300.0
AGENT_INTERVAL_S = 60.0
LOG = logging.getLogger("test-guest-liveness")


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self, start=1_700_000_000.0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Host:
    """A real engine on the bus, a XenSim with domain 0 on the fake clock, the events mirror
    (to make the guests' VMs) and the guest liveness checker."""

    def __init__(self, env, engine):
        self.env, self.engine = env, engine
        self.clock = Clock()
        self.endpoint = env.paths.rpc_endpoint("xapi-db")
        self.sim = XenSim(env.paths.xensim, clock=self.clock)
        self.sim.init(DOM0_UUID, 1024 * 1024, 2)
        self.client = AsyncRpcClient(self.endpoint)
        self.db = LivenessDb(self.client, timeout_s=2.0)
        self.server = None
        self.changes = None

    async def setup(self):
        self.env.paths.rpc_socket("xapi-db").parent.mkdir(parents=True, exist_ok=True)
        self.server = RpcServer(self.endpoint)
        front.register(self.server, self.engine)
        self.server.start()
        host = await self.db.call("db.create_row", "host",
                                  {"uuid": HOST_UUID, "name_label": "here"}, new_ref())
        await self.db.call("db.create_row", "VM", {
            "uuid": DOM0_UUID, "name_label": "Control domain", "is_control_domain": True,
            "power_state": "Running", "domid": 0, "resident_on": host}, new_ref())
        self.changes = SimChanges(self.sim, LOG)
        self.changes.start()
        self.events = DomainEvents(self.sim, self.changes, self.db, HOST_UUID, LOG)
        self.liveness = self.checker()

    def checker(self, timeout_s=TIMEOUT_S, interval_s=INTERVAL_S):
        return GuestLiveness(self.sim, self.changes, self.db, timeout_s, interval_s,
                             clock=self.clock, log=LOG)

    async def close(self):
        await self.changes.close()
        self.client.close()
        await self.server.close()
        await self.engine.close()

    async def mirror(self):
        """The events thread's resync: every guest domain gets its VM, in step."""
        await self.events.resync({d["uuid"]: d for d in self.sim.domains() if d["domid"]})

    def guest(self, name, **guest):
        domain = self.sim.create_domain(name, memory_kib=2 * 1024 * 1024, guest=guest or None,
                                        agent_interval_s=AGENT_INTERVAL_S)
        self.sim.start(name)
        return domain

    async def vm(self, uuid):
        ref = await self.db.ref_by_uuid("VM", uuid)
        return {"ref": ref, **await self.db.record("VM", ref)}

    async def metrics(self, uuid):
        """The VM_guest_metrics record of the VM of ``uuid``, or None."""
        return await self.db.record("VM_guest_metrics", (await self.vm(uuid))["guest_metrics"])

    async def messages(self, uuid=None):
        records = await self.db.call("message.get_all_records")
        found = [m for m in records.values() if uuid is None or m["obj_uuid"] == uuid]
        return sorted(found, key=lambda m: m["timestamp"])

    def generation(self):
        return self.engine.store.generation


def run(env, body):
    async def main():
        host = Host(env, await env.engine())
        try:
            await host.setup()
            return await body(host)
        finally:
            await host.close()
    return asyncio.run(main())


# -- the agent's report -----------------------------------------------------------------------
def test_the_report_maps_the_agents_keys_as_xapi(tmp_path):
    clock = Clock()
    sim = XenSim(tmp_path / "xensim", clock=clock)
    sim.init(DOM0_UUID, 1024 * 1024, 2)
    d = sim.create_domain("g", memory_kib=4096 * 1024,
                          guest={"pv_version": "8.2", "ipv4": "10.1.2.3",
                                 "meminfo_free_kib": 1000})
    sim.start("g")
    sim.write(f"/local/domain/{d['domid']}/attr/vif/1/ipv4/0", "10.9.9.9")
    sim.write(f"/local/domain/{d['domid']}/attr/vif/0/ipv6/0", "fe80::1")
    report = agent.read_report(sim, d["domid"])
    assert report == {
        "os_version": {"name": "Debian GNU/Linux 12 (bookworm)", "uname": "6.1.0-18-amd64",
                       "distro": "debian"},
        "PV_drivers_version": {"major": "8", "minor": "2", "micro": "0"},
        "PV_drivers_up_to_date": True,
        "networks": {"0/ipv4/0": "10.1.2.3", "0/ipv6/0": "fe80::1", "0/ip": "10.1.2.3",
                     "1/ipv4/0": "10.9.9.9", "1/ip": "10.9.9.9"},
        "memory": {"total": str(4096 * 1024), "free": "1000"},
    }
    raw, beat = agent.read_heartbeat(sim, d["domid"])
    assert raw == format_agent_time(clock.now) and beat == int(clock.now)
    sim.stop("g")
    assert agent.read_heartbeat(sim, d["domid"]) == (None, None)
    assert agent.read_report(sim, d["domid"])["os_version"] == {}


# -- creation on the first report ---------------------------------------------------------------
def test_metrics_are_created_and_linked_when_the_agent_first_reports(env):
    async def body(h):
        quiet = h.sim.create_domain("no-agent", guest={"agent": False})
        h.sim.start("no-agent")
        g = h.guest("g1", os_name="Fedora 40")
        await h.mirror()
        before = h.generation()
        done = await h.liveness.check()
        assert done == {g["uuid"]: "created"}
        vm = await h.vm(g["uuid"])
        m = await h.metrics(g["uuid"])
        assert m is not None and m["uuid"]
        assert m["live"] is True
        assert m["os_version"] == {"name": "Fedora 40", "uname": "6.1.0-18-amd64",
                                   "distro": "debian"}
        assert m["PV_drivers_version"] == {"major": "8", "minor": "4", "micro": "0"}
        ip = f"192.0.2.{g['domid'] % 254 + 1}"
        assert m["networks"] == {"0/ip": ip, "0/ipv4/0": ip}
        assert m["memory"] == {"total": str(2 * 1024 * 1024), "free": str(1024 * 1024)}
        assert int(m["last_updated"].timestamp()) == int(h.clock.now)
        # one batch: the row and the link together (the GC deletes unlinked metrics)
        assert h.generation() == before + 2
        assert (await h.db.records("VM_guest_metrics")).keys() == {vm["guest_metrics"]}
        assert (await h.vm(quiet["uuid"]))["guest_metrics"] == "OpaqueRef:NULL"
        assert await h.messages() == []
        assert h.liveness.guests == {"live": 1, "silent": 0, "unreported": 1}
    run(env, body)


def test_a_guest_without_a_vm_record_waits_for_the_events_thread(env):
    async def body(h):
        g = h.guest("early")
        assert await h.liveness.check() == {}          # no VM yet: nothing written
        assert await h.db.records("VM_guest_metrics") == {}
        await h.mirror()
        assert await h.liveness.check() == {g["uuid"]: "created"}
    run(env, body)


# -- no write when nothing changes --------------------------------------------------------------
def test_no_write_when_nothing_changes(env):
    async def body(h):
        g = h.guest("steady")
        await h.mirror()
        await h.liveness.check()
        before = h.generation()
        for _ in range(5):                     # the agent beats on; nothing else moves
            h.clock.advance(AGENT_INTERVAL_S)
            assert await h.liveness.check() == {}
        assert h.generation() == before
        assert (await h.metrics(g["uuid"]))["live"] is True
        assert await h.messages() == []
        # a restarted daemon (a fresh checker) agrees with the database: still nothing
        assert await h.checker().check() == {}
        assert h.generation() == before
    run(env, body)


# -- silent, then resumed -----------------------------------------------------------------------
def test_silent_agent_turns_live_false_once_with_one_message_then_back(env):
    async def body(h):
        g = h.guest("hung")
        other = h.guest("fine")
        await h.mirror()
        await h.liveness.check()
        h.clock.advance(30)
        h.sim.agent_silence("hung")            # frozen at its last beat (30 s ago)
        last_beat = h.clock.now - 30

        h.clock.advance(TIMEOUT_S - 30)        # exactly the timeout: not yet
        assert await h.liveness.check() == {}
        assert (await h.metrics(g["uuid"]))["live"] is True

        h.clock.advance(1)
        assert await h.liveness.check() == {g["uuid"]: "silent"}
        m = await h.metrics(g["uuid"])
        assert m["live"] is False and int(m["last_updated"].timestamp()) == int(last_beat)
        assert (await h.metrics(other["uuid"]))["live"] is True
        [msg] = await h.messages()
        assert (msg["name"], msg["priority"], msg["cls"], msg["obj_uuid"]) == (
            SILENT, SILENT_PRIORITY, "VM", g["uuid"])
        assert "'hung'" in msg["body"] and "guest_liveness_timeout (300 s)" in msg["body"]

        before = h.generation()
        for _ in range(3):                     # still silent: no write, no second message
            h.clock.advance(INTERVAL_S)
            assert await h.liveness.check() == {}
        assert h.generation() == before and len(await h.messages()) == 1
        assert await h.checker().check() == {}  # nor after a restart of the daemon
        assert len(await h.messages()) == 1
        assert h.liveness.guests == {"live": 1, "silent": 1, "unreported": 0}

        h.clock.advance(5)
        h.sim.agent_resume("hung")
        assert await h.liveness.check() == {g["uuid"]: "resumed"}
        assert (await h.metrics(g["uuid"]))["live"] is True
        silent, resumed = await h.messages(g["uuid"])
        assert silent["name"] == SILENT
        assert (resumed["name"], resumed["priority"], resumed["cls"]) == (
            RESUMED, RESUMED_PRIORITY, "VM")
        before = h.generation()
        h.clock.advance(AGENT_INTERVAL_S)
        assert await h.liveness.check() == {}
        assert h.generation() == before and len(await h.messages()) == 2
        assert h.liveness.counts["went_silent"] == 1 and h.liveness.counts["resumed"] == 1
    run(env, body)


def test_a_heartbeat_gone_while_the_guest_runs_is_silence(env):
    async def body(h):
        g = h.sim.create_domain("manual", guest={"agent": False})
        h.sim.start("manual")
        key = agent.heartbeat_path(g["domid"])
        h.sim.write(key, format_agent_time(h.clock.now))      # an agent written by hand
        await h.mirror()
        assert await h.liveness.check() == {g["uuid"]: "created"}
        h.sim.rm(key)
        assert await h.liveness.check() == {g["uuid"]: "silent"}
        [msg] = await h.messages(g["uuid"])
        assert "no data/updated key" in msg["body"]
    run(env, body)


def test_an_agent_already_silent_at_its_first_sight_is_created_not_live(env):
    async def body(h):
        g = h.guest("stale")
        h.sim.agent_silence("stale")
        await h.mirror()
        h.clock.advance(TIMEOUT_S + 10)
        assert await h.liveness.check() == {g["uuid"]: "created"}
        assert (await h.metrics(g["uuid"]))["live"] is False
        [msg] = await h.messages(g["uuid"])
        assert msg["name"] == SILENT
    run(env, body)


def test_a_failed_write_is_retried_without_a_second_message(env):
    async def body(h):
        g = h.guest("flaky")
        await h.mirror()
        await h.liveness.check()
        h.sim.agent_silence("flaky")
        h.clock.advance(TIMEOUT_S + AGENT_INTERVAL_S)
        real_batch = h.db.batch
        failed = []

        async def failing_batch(calls):
            failed.append(calls)
            raise ConfigError("injected failure")      # any XapiError of xapi-db
        h.db.batch = failing_batch
        assert await h.liveness.check() == {}          # the error is logged, the guest skipped
        assert failed and h.liveness.counts["errors"] == 1
        assert (await h.metrics(g["uuid"]))["live"] is True
        h.db.batch = real_batch
        assert await h.liveness.check() == {g["uuid"]: "silent"}
        assert (await h.metrics(g["uuid"]))["live"] is False
        assert [m["name"] for m in await h.messages(g["uuid"])] == [SILENT]
    run(env, body)


def test_a_halted_vm_loses_its_metrics_and_the_next_boot_makes_new_ones(env):
    """xapi's force_state_reset, in the events thread: a Halted VM has no guest metrics."""
    async def body(h):
        g = h.guest("reboots")
        await h.mirror()
        await h.liveness.check()
        old = (await h.vm(g["uuid"]))["guest_metrics"]
        h.sim.stop("reboots")
        await h.mirror()
        vm = await h.vm(g["uuid"])
        assert (vm["power_state"], vm["guest_metrics"]) == ("Halted", "OpaqueRef:NULL")
        assert await h.db.records("VM_guest_metrics") == {}
        assert await h.liveness.check() == {}            # not Running: not checked
        h.clock.advance(10)
        h.sim.start("reboots")
        await h.mirror()
        assert await h.liveness.check() == {g["uuid"]: "created"}
        new = (await h.vm(g["uuid"]))["guest_metrics"]
        assert new not in (old, "OpaqueRef:NULL")
        assert (await h.metrics(g["uuid"]))["live"] is True
        assert await h.messages() == []
    run(env, body)


# -- the report changes -------------------------------------------------------------------------
def test_a_changed_report_is_written_and_an_unchanged_one_is_not_reread(env):
    async def body(h):
        g = h.guest("moves")
        await h.mirror()
        await h.liveness.check()
        h.sim.write(f"/local/domain/{g['domid']}/attr/vif/0/ipv4/0", "198.51.100.7")
        assert await h.liveness.check() == {g["uuid"]: "updated"}
        m = await h.metrics(g["uuid"])
        assert m["networks"] == {"0/ip": "198.51.100.7", "0/ipv4/0": "198.51.100.7"}
        assert m["live"] is True
        # with no change of the hypervisor, the agent's keys are not read again
        reads = []
        real_read = h.sim.read
        h.sim.read = lambda path: reads.append(path) or real_read(path)
        assert await h.liveness.check() == {}
        assert reads == [agent.heartbeat_path(g["domid"])]
    run(env, body)


# -- bad input ----------------------------------------------------------------------------------
def test_an_unparseable_heartbeat_is_logged_once_and_left_alone(env, caplog):
    async def body(h):
        bad = h.sim.create_domain("garbled", guest={"agent": False})
        h.sim.start("garbled")
        h.sim.write(agent.heartbeat_path(bad["domid"]), "yesterday-ish")
        good = h.guest("good")
        await h.mirror()
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            assert await h.liveness.check() == {good["uuid"]: "created"}
            assert await h.liveness.check() == {}
        lines = [r.getMessage() for r in caplog.records if "yesterday-ish" in r.getMessage()]
        assert len(lines) == 1, lines
        assert agent.heartbeat_path(bad["domid"]) in lines[0]
        assert (await h.vm(bad["uuid"]))["guest_metrics"] == "OpaqueRef:NULL"
    run(env, body)


@pytest.mark.parametrize("lines, key", [
    ("guest_liveness_timeout = 0\n", "guest_liveness_timeout"),
    ("guest_liveness_timeout = 10\nguest_liveness_interval = -1\n", "guest_liveness_interval"),
])
def test_the_command_names_a_setting_that_cannot_work(tmp_path, lines, key):
    daemon = LivenessDaemon(["--root", str(tmp_path)])
    daemon.paths.xapi_conf.parent.mkdir(parents=True, exist_ok=True)
    daemon.paths.xapi_conf.write_text("# test\n" + lines)
    daemon = LivenessDaemon(["--root", str(tmp_path)])
    with pytest.raises(ConfigError) as info:
        daemon._liveness_options()
    line = lines.count("\n")
    assert f"{daemon.paths.xapi_conf}:{line + 1}: key '{key}'" in str(info.value)


def test_an_interval_of_0_means_the_timeout(tmp_path):
    daemon = LivenessDaemon(["--root", str(tmp_path), "-o", "guest_liveness_timeout=42"])
    assert daemon._liveness_options() == (42.0, 42.0)
    daemon = LivenessDaemon(["--root", str(tmp_path), "-o", "guest_liveness_interval=7"])
    assert daemon._liveness_options() == (300.0, 7.0)


# -- the loop -----------------------------------------------------------------------------------
def test_the_loop_wakes_on_a_hypervisor_change_and_on_its_interval(env):
    async def body(h):
        h.liveness = h.checker(timeout_s=TIMEOUT_S, interval_s=0.5)
        task = asyncio.get_running_loop().create_task(h.liveness.run())
        try:
            g = h.sim.create_domain("loop", guest=None, agent_interval_s=AGENT_INTERVAL_S)
            h.sim.start("loop")
            await h.mirror()        # a change of the DB only: the next tick finds the VM
            deadline = time.monotonic() + 10
            while (await h.metrics(g["uuid"])) is None:
                assert time.monotonic() < deadline, "no metrics 10 s after the start"
                await asyncio.sleep(0.02)
            checks = h.liveness.counts["checks"]
            deadline = time.monotonic() + 10   # ticks go on with no change at all
            while h.liveness.counts["checks"] < checks + 2:
                assert time.monotonic() < deadline, "the interval's checks stopped"
                await asyncio.sleep(0.05)
            # a change wakes it at once, well before a long interval's tick
            h.liveness.interval_s = 3600.0
            await asyncio.sleep(0.6)                    # let it take the long wait
            h.sim.agent_silence("loop")
            h.clock.advance(TIMEOUT_S + AGENT_INTERVAL_S)
            h.sim.write("/local/domain/0/data/poke", "x")      # any change of the sim
            deadline = time.monotonic() + 10
            while (await h.metrics(g["uuid"]))["live"] is not False:
                assert time.monotonic() < deadline, "a change did not wake the check"
                await asyncio.sleep(0.02)
            assert [m["name"] for m in await h.messages(g["uuid"])] == [SILENT]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(env, body)
