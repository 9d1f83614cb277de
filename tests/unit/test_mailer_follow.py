"""xapi-mailer's follower and delivery against an in-memory xapi-db (its db.events_since
semantics: message events above a token's message half, EVENTS_LOST) and a recording
transport: no message skipped or doubled across a crash between the outbox write and the token
save, catch-up after EVENTS_LOST, the priority filter, folding, retries with backoff, delivery
over several connections at once."""

import asyncio
import concurrent.futures
import logging
import threading
import time
from datetime import datetime, timezone

from common.errors import XapiError
from daemons.mailer import settings as settings_mod
from daemons.mailer.deliver import Delivery
from daemons.mailer.fold import RepeatFolder
from daemons.mailer.outbox import Outbox
from daemons.mailer.smtp import DeliveryError
from daemons.mailer.state import MailerState
from daemons.mailer.subscribe import Follower

log = logging.getLogger("test")
HOST = "2e00443d-ac29-4940-8433-a15dda1e8f8e"


class FakeDb:
    """message.create and db.events_since(["message"], token, wait) as xapi-db answers them."""

    def __init__(self):
        self.messages = []          # (generation, event)
        self.generation = 0
        self.lost_below = 0

    def create(self, name, priority, when=None):
        self.generation += 1
        when = when or datetime.now(timezone.utc)
        snap = {"uuid": f"uuid-{self.generation}", "name": name, "priority": priority,
                "cls": "Host", "obj_uuid": HOST, "timestamp": when, "body": "b"}
        self.messages.append((self.generation, {"id": str(self.generation), "class": "message",
                                                "operation": "add",
                                                "ref": f"OpaqueRef:{self.generation}",
                                                "snapshot": snap}))
        return snap["uuid"]

    def token(self):
        return "%020d,%020d" % (0, self.generation)

    async def call(self, method, *args, timeout_s=None, retries=0):
        if method == "db.token":
            return self.token()
        if method == "db.events_since":
            _classes, token, _wait = args
            since = int(token.split(",")[1]) if token else 0
            if token and not self.lost_below <= since <= self.generation:
                raise XapiError("EVENTS_LOST")
            return {"events": [e for g, e in self.messages if g > since],
                    "token": self.token()}
        raise AssertionError(method)


class FakePool:
    def __init__(self, **other_config):
        self.other_config = {"mail-destination": "ops@example.com",
                             "ssmtp-mailhub": "127.0.0.1:25", "mail-inhibit-period": "0",
                             **other_config}

    last_settings = None

    async def settings(self, max_age_s=0.0):
        return settings_mod.parse(self.other_config, pool_name="pool", fqdn="h.example")

    async def prefetch_names(self, keys):
        pass

    def new_batch(self):
        pass

    async def object_name(self, cls, obj_uuid, pool_name=""):
        return "host-1"


class Recorder:
    """A transport that records what it sends, or fails while ``failing`` is set."""

    def __init__(self):
        self.sent = []
        self.failing = None
        self.connected = False

    def send(self, settings, sender, to, data):
        if self.failing:
            raise self.failing
        self.sent.append(data)
        return []

    def close(self):
        pass


class Mailer:
    def __init__(self, root, db, pool, cap=100, transport=None, transports=None,
                 run_blocking=None):
        self.outbox = Outbox(root / "mailer", cap, log)
        self.outbox.load()
        self.state = MailerState(root / "mailer.state")
        self.state.load()
        self.folder = RepeatFolder(self.state.windows)
        self.counters = dict.fromkeys(("messages_seen", "below_min_priority", "no_destination",
                                       "folded", "sent", "hooks_run", "failures"), 0)
        self.transport = transport or Recorder()
        self.delivery = Delivery(self.outbox, pool, transports or [self.transport],
                                 run_blocking or self.blocking, self.blocking,
                                 lambda: None, 5.0, root, 0.05, 0.2, log, self.counters)
        self.follower = Follower(db, pool, self.outbox, self.state, self.folder, self.blocking,
                                 lambda: None, 0.0, log, self.delivery.wake, self.counters)
        self.db = db

    async def blocking(self, fn, *args):
        return fn(*args)

    async def poll(self):
        result = await self.db.call("db.events_since", ["message"], self.state.token, 0)
        await self.follower.take(result["events"], result["token"])

    async def drain(self, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) and time.monotonic() < deadline:
            entry, _ = self.outbox.next_ready(time.time())
            if entry is None:
                await asyncio.sleep(0.01)
                continue
            await self.delivery.deliver(entry)


def sent_ids(transport):
    return [d.split(b"Message-ID: <")[1].split(b"@")[0].decode() for d in transport.sent]


def run(coro):
    return asyncio.run(coro)


def test_filter_and_delivery_in_order(tmp_path):
    async def go():
        db, pool = FakeDb(), FakePool()
        m = Mailer(tmp_path, db, pool)
        await m.follower.prepare()
        a = db.create("A", 1)
        db.create("QUIET", 4)
        b = db.create("B", 3)
        await m.poll()
        assert len(m.outbox) == 2 and m.counters["below_min_priority"] == 1
        await m.drain()
        assert sent_ids(m.transport) == [a, b]
        assert list((tmp_path / "mailer").glob("*.json")) == []
        assert m.state.generation == 3
    run(go())


def test_crash_after_outbox_write_before_token_save_neither_skips_nor_doubles(tmp_path):
    async def go():
        db, pool = FakeDb(), FakePool()
        m = Mailer(tmp_path, db, pool)
        await m.follower.prepare()
        first = [db.create(f"M{i}", 1) for i in range(3)]
        real_save = m.state.save

        def crash():
            raise KeyboardInterrupt("killed between the outbox write and the token save")
        m.state.save = crash
        try:
            await m.poll()
        except KeyboardInterrupt:
            pass
        m.state.save = real_save
        assert len(list((tmp_path / "mailer").glob("*.json"))) == 3
        # a new process: the entries are on disk, the token is the old one
        later = db.create("M3", 1)
        m2 = Mailer(tmp_path, db, pool)
        await m2.follower.prepare()
        await m2.poll()
        await m2.drain()
        assert sorted(sent_ids(m2.transport)) == sorted(first + [later])
    run(go())


def test_restart_catches_up_from_the_saved_token(tmp_path):
    async def go():
        db, pool = FakeDb(), FakePool()
        m = Mailer(tmp_path, db, pool)
        await m.follower.prepare()
        before = db.create("BEFORE", 1)
        await m.poll()
        await m.drain()
        while_down = [db.create("DOWN", 2), db.create("DOWN2", 1)]
        m2 = Mailer(tmp_path, db, pool)
        await m2.follower.prepare()
        await m2.poll()
        await m2.drain()
        assert sent_ids(m.transport) == [before]
        assert sent_ids(m2.transport) == while_down
    run(go())


def test_events_lost_reads_everything_above_the_saved_generation(tmp_path):
    async def go():
        db, pool = FakeDb(), FakePool()
        m = Mailer(tmp_path, db, pool)
        db.create("OLD", 1)
        await m.follower.prepare()          # follows from generation 1 on
        new = db.create("NEW", 1)
        db.lost_below = db.generation       # as after a restart of xapi-db
        m.follower.db = db
        try:
            await m.poll()
        except XapiError as exc:
            assert exc.code == "EVENTS_LOST"
            await m.follower._resync()
        await m.drain()
        assert sent_ids(m.transport) == [new]
    run(go())


def test_repeats_fold_into_one_entry(tmp_path):
    async def go():
        db, pool = FakeDb(), FakePool(**{"mail-inhibit-period": "3600"})
        m = Mailer(tmp_path, db, pool)
        await m.follower.prepare()
        uuids = [db.create("SAME", 2) for _ in range(4)]
        await m.poll()
        kinds = [e["kind"] for e in m.outbox.entries.values()]
        assert kinds == ["mail", "fold"]
        fold = list(m.outbox.entries.values())[1]
        assert fold["fold"]["count"] == 3 and fold["fold"]["first_uuid"] == uuids[1]
        assert fold["due"] > time.time() + 3000
        more = db.create("SAME", 2)
        await m.poll()
        assert fold["fold"]["count"] == 4 and fold["message"]["uuid"] == more
        # the fold entry survives a restart, still collecting
        m2 = Mailer(tmp_path, db, pool)
        assert [e["kind"] for e in m2.outbox.entries.values()] == ["mail", "fold"]
        assert list(m2.outbox.entries.values())[1]["fold"]["count"] == 4
    run(go())


def test_server_failure_holds_the_outbox_then_everything_goes_once(tmp_path):
    async def go():
        db, pool = FakeDb(), FakePool()
        transport = Recorder()
        transport.failing = DeliveryError("127.0.0.1:25: ConnectionRefusedError")
        m = Mailer(tmp_path, db, pool, transport=transport)
        await m.follower.prepare()
        uuids = [db.create(f"M{i}", 1) for i in range(3)]
        await m.poll()
        entry, _ = m.outbox.next_ready(time.time())
        await m.delivery.deliver(entry)
        assert m.delivery.blocked_until > time.time() and len(m.outbox) == 3
        assert m.delivery.per_entry[entry["seq"]]["attempts"] == 1
        assert m.delivery.describe(entry, time.time())["last_error"].endswith(
            "ConnectionRefusedError")
        transport.failing = None
        await m.drain()
        assert sent_ids(transport) == uuids
    run(go())


def test_a_refused_email_does_not_hold_the_others(tmp_path):
    async def go():
        db, pool = FakeDb(), FakePool()
        transport = Recorder()
        m = Mailer(tmp_path, db, pool, transport=transport)
        await m.follower.prepare()
        bad, good = db.create("BAD", 1), db.create("GOOD", 1)
        await m.poll()
        first, _ = m.outbox.next_ready(time.time())
        transport.failing = DeliveryError("552 too big", per_message=True)
        await m.delivery.deliver(first)
        transport.failing = None
        assert m.delivery.blocked_until == 0.0
        second, _ = m.outbox.next_ready(time.time(), skip={first["seq"]})
        await m.delivery.deliver(second)
        assert sent_ids(transport) == [good]
        await m.drain()
        assert sent_ids(transport) == [good, bad]
    run(go())


class Gate:
    """Transports that share one record: each send takes ``hold_s`` in its thread; counts the
    sends going on at once (the most of them), what went, and fails while ``failing`` is set."""

    def __init__(self, hold_s=0.05):
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.sent = []
        self.failing = None
        self.attempts = 0

    def transport(self):
        gate = self

        class One:
            connected = False

            def send(self, settings, sender, to, data):
                with gate.lock:
                    gate.now += 1
                    gate.most = max(gate.most, gate.now)
                    gate.attempts += 1
                try:
                    time.sleep(gate.hold_s)
                    if gate.failing:
                        raise gate.failing
                    with gate.lock:
                        gate.sent.append(data)
                    return []
                finally:
                    with gate.lock:
                        gate.now -= 1

            def close(self):
                pass
        return One()


async def until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def parallel_mailer(tmp_path, db, pool, gate, k, executor):
    async def in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    return Mailer(tmp_path, db, pool, transports=[gate.transport() for _ in range(k)],
                  run_blocking=in_thread)


def test_k_connections_deliver_different_entries_at_once(tmp_path):
    async def go():
        db, pool, gate = FakeDb(), FakePool(), Gate(hold_s=0.2)
        with concurrent.futures.ThreadPoolExecutor(3) as executor:
            m = parallel_mailer(tmp_path, db, pool, gate, 3, executor)
            await m.follower.prepare()
            uuids = [db.create(f"M{i}", 1) for i in range(9)]
            await m.poll()
            task = asyncio.get_running_loop().create_task(m.delivery.run())
            try:
                await until(lambda: len(m.outbox) == 0)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert gate.most == 3                      # three at once, never more
        assert sorted(sent_ids(gate)) == sorted(uuids)   # each once
        assert m.outbox.in_flight == set() and sorted(m.delivery.idle) == [0, 1, 2]
        assert list((tmp_path / "mailer").glob("*.json")) == []
    run(go())


def test_server_failure_with_k_in_flight_is_one_failure_then_one_probe(tmp_path):
    async def go():
        db, pool, gate = FakeDb(), FakePool(), Gate()
        gate.failing = DeliveryError("127.0.0.1:25: ConnectionRefusedError")
        with concurrent.futures.ThreadPoolExecutor(3) as executor:
            m = parallel_mailer(tmp_path, db, pool, gate, 3, executor)
            m.delivery.retry_initial_s = 2.0     # no retry before the first checks
            await m.follower.prepare()
            uuids = [db.create(f"M{i}", 1) for i in range(6)]
            await m.poll()
            task = asyncio.get_running_loop().create_task(m.delivery.run())
            try:
                await until(lambda: gate.attempts >= 3 and not m.outbox.in_flight)
                # the three in flight when the server failed are one failure, one hold
                assert m.delivery.failures == 1 and m.counters["failures"] == 3
                assert m.delivery.blocked_until > 0 and len(m.outbox) == 6
                gate.most = 0
                m.delivery.retry_initial_s = 0.05
                m.delivery.blocked_until = 0.0
                m.delivery.wake()
                await until(lambda: m.delivery.failures >= 3)
                assert gate.most == 1                # while failing: one probe at a time
                gate.failing = None
                await until(lambda: len(m.outbox) == 0)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert sorted(sent_ids(gate)) == sorted(uuids)
        assert m.delivery.failures == 0
    run(go())


class RecordsDb:
    """db.read_refs/read_record/get_by_uuid/read_field over a dict of records, counting the
    calls by method."""

    def __init__(self):
        self.records = {"pool": {"OpaqueRef:p": {"name_label": "pool-a", "master": "",
                                                 "other_config": {"mail-destination": "a@b.c"}}},
                        "host": {"OpaqueRef:h": {"uuid": HOST, "name_label": "host-1"}}}
        self.calls = []

    async def call(self, method, *args, timeout_s=None, retries=0):
        self.calls.append(method)
        table = self.records[args[0]]
        if method == "db.read_refs":
            return list(table)
        if method == "db.get_by_uuid":
            for ref, record in table.items():
                if record["uuid"] == args[1]:
                    return ref
            raise XapiError("UUID_INVALID", args[0], args[1])
        if args[1] not in table:
            raise XapiError("HANDLE_INVALID", args[0], args[1])
        record = table[args[1]]
        return record if method == "db.read_record" else record[args[2]]


def test_pool_reader_keeps_refs_and_reads_values_each_batch():
    from daemons.mailer.pool import PoolReader

    async def go():
        db = RecordsDb()
        reader = PoolReader(db, log)
        reader.new_batch()
        await asyncio.gather(reader.settings(), reader.prefetch_names([("Host", HOST)] * 3))
        assert await reader.object_name("Host", HOST) == "host-1"
        assert sorted(db.calls) == ["db.get_by_uuid", "db.read_field", "db.read_record",
                                    "db.read_refs"]
        # the next batch: one call for the settings, one for the name, and a rename shows
        db.calls.clear()
        db.records["host"]["OpaqueRef:h"]["name_label"] = "renamed"
        db.records["pool"]["OpaqueRef:p"]["other_config"]["mail-destination"] = "x@y.z"
        reader.new_batch()
        assert (await reader.settings()).destination == ("x@y.z",)
        assert await reader.object_name("Host", HOST) == "renamed"
        assert sorted(db.calls) == ["db.read_field", "db.read_record"]
        # a ref no longer valid is looked up again; an object gone has no name
        db.records["host"] = {"OpaqueRef:h2": {"uuid": HOST, "name_label": "again"}}
        db.records["pool"] = {"OpaqueRef:p2": db.records["pool"]["OpaqueRef:p"]}
        reader.new_batch()
        assert (await reader.settings()).pool_name == "pool-a"
        assert await reader.object_name("Host", HOST) == "again"
        db.records["host"] = {}
        reader.new_batch()
        assert await reader.object_name("Host", HOST) == ""
    run(go())
