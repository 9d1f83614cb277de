"""Durability of the pool database through crashes of xapi-db: no acknowledged write is lost and
no write appears that nobody sent (kill -9 while eight clients write), event tokens never go
backwards across a restart, `xapi-ctl db dump|get|restore`, and a corrupt newest connection.

One tree for the module (the corrupt-connection test starts its own small trees).
`make soak` runs the kill test XAPI_SOAK_ROUNDS=20 times; `make test` runs it 3 times.
"""

import json
import os
import signal
import threading
import time
import uuid as uuid_mod

import pytest

from common import schema
from common.errors import RpcError, XapiError
from common.rpc import RpcClient
from daemons.db import xmlfile

from .conftest import daemon, describe, running_tree, summary, wait_until

ROUNDS = int(os.environ.get("XAPI_SOAK_ROUNDS", "3"))
CLIENTS = 8
WRITE_TIMEOUT_S = 1.0           # per call: a call to a dead xapi-db is given up quickly
WRITES_PER_ROW = 8              # then a new row: the table stays small
FIELDS = ("name_description", "memory_static_max")
WRITE_BEFORE_KILL_S = 1.0
WRITE_AFTER_BACK_S = 1.0
RESTART_TIMEOUT_S = 30.0
READ_CHUNK = 2000


@pytest.fixture(scope="module")
def tree():
    with running_tree() as t:
        yield t


# -- helpers ----------------------------------------------------------------------------------
def token_key(token):
    """An event token as (DB generation, message generation), for comparisons."""
    db_half, _, msg_half = token.partition(",")
    return int(db_half), int(msg_half)


def db_running(tree, old_pid=None, timeout_s=RESTART_TIMEOUT_S):
    """Wait until xapi-db is ready in `xapi-ctl status` (replayed), past supervisord's startsecs
    (RUNNING: a kill now is a crash, not a failed start) and, if ``old_pid`` is given, with a new
    pid; then until it answers sys.health with that pid. Returns its pid."""
    def ok(status):
        entry = daemon(status, "xapi-db")
        return (entry["ready"] and entry["state"] == "RUNNING"
                and entry["pid"] not in (None, old_pid))
    what = "xapi-db ready and RUNNING" + (f" with a pid other than {old_pid}" if old_pid else "")
    pid = daemon(tree.wait_status(ok, timeout_s, what), "xapi-db")["pid"]
    wait_until(lambda: tree.health("xapi-db", timeout_s=2)["pid"] == pid, 10,
               f"sys.health of xapi-db pid {pid}")
    return pid


def kill_db(tree):
    """SIGKILL the running xapi-db (pid from `xapi-ctl status --json`); returns the old pid."""
    pid = db_running(tree)
    os.kill(pid, signal.SIGKILL)
    return pid


def db(tree, method, *args, timeout_s=10.0):
    return tree.call("xapi-db", method, *args, timeout_s=timeout_s)


def read_fields(tree, refs, fields):
    """{ref: {field: value}} through db.read_fields, in chunks."""
    reads = [["VM", ref, field] for ref in refs for field in fields]
    values = []
    for start in range(0, len(reads), READ_CHUNK):
        values += db(tree, "db.read_fields", reads[start:start + READ_CHUNK], timeout_s=30)
    out = {}
    for (_, ref, field), value in zip(reads, values):
        assert not (isinstance(value, dict) and "error" in value), (ref, field, value)
        out.setdefault(ref, {})[field] = value
    return out


# -- 1. kill -9 while 8 clients write ---------------------------------------------------------
class Client(threading.Thread):
    """Creates its own VM rows and writes their fields in a loop, with its own RpcClient.
    Every call is recorded as acknowledged (it returned) or unknown (it raised: it may or may
    not have landed). A create is retried with the same ref and values until acknowledged (the
    same row again is a no-op), so every row it made is known by ref."""

    def __init__(self, endpoint, index, stop):
        super().__init__(name=f"db-client-{index}", daemon=True)
        self.endpoint = endpoint
        self.index = index
        self.stop = stop
        self.rows = {}          # ref -> (name_label, uuid): every create sent
        self.created = set()    # refs whose create was acknowledged
        self.attempts = {}      # (ref, field) -> [(value, acknowledged), ...] in order
        self.ack_times = []     # time.monotonic() of every acknowledgement
        self.unknown = 0
        self.errors = []        # definite error replies: none is expected
        self.crash = None

    def run(self):
        try:
            with RpcClient(self.endpoint, timeout_s=WRITE_TIMEOUT_S) as client:
                self._loop(client)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.crash = exc

    def _call(self, client, method, *args):
        try:
            client.call(method, *args)
        except RpcError:            # timeout (or garbage): unknown outcome
            self.unknown += 1
            return False
        except XapiError as exc:
            self.errors.append((method, args[:3], exc.description))
            return False
        self.ack_times.append(time.monotonic())
        return True

    def _loop(self, client):
        n = 0
        while not self.stop.is_set():
            ref = f"OpaqueRef:{uuid_mod.uuid4()}"
            values = {"name_label": f"c{self.index}-{n}", "uuid": str(uuid_mod.uuid4())}
            self.rows[ref] = (values["name_label"], values["uuid"])
            while not self.stop.is_set():
                if self._call(client, "db.create_row", "VM", values, ref):
                    self.created.add(ref)
                    break
                if self.errors:
                    return
            if ref not in self.created:
                return
            for k in range(WRITES_PER_ROW):
                if self.stop.is_set():
                    return
                field = FIELDS[k % len(FIELDS)]
                value = (f"c{self.index}-{n}-w{k}" if field == "name_description"
                         else (self.index + 1) * 10**9 + n * 100 + k)
                acked = self._call(client, "db.write_field", "VM", ref, field, value)
                self.attempts.setdefault((ref, field), []).append((value, acked))
                if self.errors:
                    return
            n += 1


def allowed_values(attempts, default):
    """What a field may hold after ``attempts`` (in order): the last acknowledged value, or any
    unacknowledged one sent after it (it may have landed); with nothing acknowledged, the
    default or any value sent."""
    last_ack = max((i for i, (_, acked) in enumerate(attempts) if acked), default=None)
    if last_ack is None:
        return {default} | {value for value, _ in attempts}
    return {attempts[last_ack][0]} | {value for value, acked in attempts[last_ack + 1:]
                                      if not acked}


def run_clients_through_a_kill(tree, pid):
    """8 clients write for ~1 s, xapi-db (``pid``) is SIGKILLed, they keep writing until ~1 s
    after the restarted xapi-db answers, then stop. Returns (clients, kill time, back time)."""
    stop = threading.Event()
    clients = [Client(str(tree.paths.rpc_endpoint("xapi-db")), i, stop) for i in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        started = time.monotonic()
        wait_until(lambda: (time.monotonic() - started >= WRITE_BEFORE_KILL_S
                            and all(c.ack_times for c in clients))
                   or any(c.errors or c.crash for c in clients),
                   15, "every client to get writes acknowledged before the kill")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: tree.health("xapi-db", timeout_s=1)["pid"] != pid,
                   RESTART_TIMEOUT_S, "the restarted xapi-db answering sys.health")
        back_at = time.monotonic()
        wait_until(lambda: time.monotonic() - back_at >= WRITE_AFTER_BACK_S, 5,
                   "more writes after the restart")
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=WRITE_TIMEOUT_S * 5)
    assert not any(c.is_alive() for c in clients), "a client thread did not stop"
    return clients, killed_at, back_at


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_no", range(1, ROUNDS + 1))
def test_kill_9_of_xapi_db_while_8_clients_write(tree, round_no):
    pid = db_running(tree)
    before = set(db(tree, "db.read_refs", "VM"))
    restarts = daemon(tree.status(), "xapi-db")["restarts"]

    clients, killed_at, back_at = run_clients_through_a_kill(tree, pid)

    for client in clients:
        assert client.crash is None, f"client {client.index} crashed: {client.crash!r}"
        assert not client.errors, f"client {client.index}: error replies {client.errors[:5]}"
        assert any(t < killed_at for t in client.ack_times), \
            f"client {client.index}: no write acknowledged before the kill"
        assert any(t > back_at for t in client.ack_times), \
            f"client {client.index}: no write acknowledged after the restart"
    db_running(tree, old_pid=pid)
    status = tree.status()
    assert daemon(status, "xapi-db")["restarts"] == restarts + 1, summary(status)

    # Read everything back from the restarted xapi-db.
    after = set(db(tree, "db.read_refs", "VM"))
    new = after - before
    sent = {ref: row for c in clients for ref, row in c.rows.items()}
    created = set().union(*(c.created for c in clients))
    attempts = {key: tries for c in clients for key, tries in c.attempts.items()}
    acked = sum(ok for tries in attempts.values() for _, ok in tries) + len(created)
    unknown = sum(c.unknown for c in clients)

    missing_rows = created - after
    assert not missing_rows, f"{len(missing_rows)} acknowledged create(s) lost: " \
        f"{sorted(missing_rows)[:5]}"
    strangers = new - set(sent)
    assert not strangers, f"{len(strangers)} row(s) nobody sent: {sorted(strangers)[:5]}"

    values = read_fields(tree, sorted(new), ("name_label", "uuid") + FIELDS)
    wrong = []
    for ref in sorted(new):
        name, uuid = sent[ref]
        if (values[ref]["name_label"], values[ref]["uuid"]) != (name, uuid):
            wrong.append((ref, "identity", (name, uuid),
                          (values[ref]["name_label"], values[ref]["uuid"])))
        for field in FIELDS:
            tries = attempts.get((ref, field), [])
            default = schema.CLASSES["VM"].fields[field].default
            allowed = allowed_values(tries, default)
            if values[ref][field] not in allowed:
                wrong.append((ref, field, tries, values[ref][field]))
    assert not wrong, (f"{len(wrong)} field(s) lost an acknowledged write or hold a value "
                       f"nobody sent ({acked} acknowledged, {unknown} unknown): {wrong[:3]}")
    assert acked > 50, f"only {acked} writes acknowledged in the round"

    # Keep the table small for the next round (make soak runs 20).
    deletes = [["delete_row", "VM", ref] for ref in sorted(new)]
    for start in range(0, len(deletes), 500):
        db(tree, "db.batch", deletes[start:start + 500], timeout_s=30)
    assert set(db(tree, "db.read_refs", "VM")) == before


# -- 2. events across a restart ---------------------------------------------------------------
def vm_events(result, ref):
    return [e for e in result["events"] if e["ref"] == ref]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("flush_first", [False, True], ids=["from-redo-log", "from-state-db"])
def test_events_across_a_db_restart(tree, flush_first):
    db_running(tree)
    ref = db(tree, "db.create_row", "VM", {"name_label": f"events-{flush_first}"})
    t1 = db(tree, "db.token")
    assert db(tree, "db.write_field", "VM", ref, "name_description", "before") is True
    # A touch is not in the redo log: only the generations it used are reserved there.
    injected = db(tree, "db.inject", "VM", ref)
    first = db(tree, "db.events_since", ["vm"], t1, 5)
    mods = vm_events(first, ref)
    assert [(e["operation"], e["snapshot"]["name_description"]) for e in mods] == \
        [("mod", "before")], first
    t2 = first["token"]
    assert token_key(t2) > token_key(injected) > token_key(t1), (t1, injected, t2)
    if flush_first:        # the snapshot holds the write and the redo log is cut
        assert db(tree, "db.flush_now") is True

    old_pid = kill_db(tree)
    db_running(tree, old_pid=old_pid)

    tokens = [db(tree, "db.token")]
    quiet = db(tree, "db.events_since", ["vm"], t2, 0)
    tokens.append(quiet["token"])
    assert vm_events(quiet, ref) == [], f"an event reported again after the restart: {quiet}"
    assert db(tree, "db.write_field", "VM", ref, "name_description", "after") is True
    second = db(tree, "db.events_since", ["vm"], t2, 5)
    tokens.append(second["token"])
    mods = vm_events(second, ref)
    assert [(e["operation"], e["snapshot"]["name_description"]) for e in mods] == \
        [("mod", "after")], second
    assert token_key(second["token"]) > token_key(t2)
    # The new token covers the new write: nothing more for this row since it.
    rest = db(tree, "db.events_since", ["vm"], second["token"], 0)
    tokens.append(rest["token"])
    assert vm_events(rest, ref) == [], rest
    tokens.append(db(tree, "db.inject", "VM", ref))
    tokens.append(db(tree, "db.token"))
    backwards = [t for t in tokens if token_key(t) < token_key(t2)]
    assert not backwards, f"token(s) {backwards} below {t2} after the restart"
    db(tree, "db.delete_row", "VM", ref)


# -- 3. xapi-ctl db dump | get | restore ------------------------------------------------------
@pytest.mark.timeout(150)
def test_db_dump_get_and_restore(tree):
    db_running(tree)
    kept = {}
    for label in ("dump-a", "dump-b"):
        ref = db(tree, "db.create_row", "VM", {"name_label": label})
        db(tree, "db.write_field", "VM", ref, "name_description", f"{label} as dumped")
        kept[ref] = db(tree, "db.read_record", "VM", ref)
    dump = os.path.join(tree.root, "dump.db")

    done = tree.ctl_ok("db", "dump", "--file", dump)
    assert dump in done.stdout, describe(done)
    raw = xmlfile.read_file(dump)
    dumped = {row["ref"]: row for row in raw.tables["VM"]}
    for ref, record in kept.items():
        assert ref in dumped, (ref, sorted(dumped))
        assert dumped[ref]["name__label"] == record["name_label"]
        assert dumped[ref]["name__description"] == record["name_description"]
        assert dumped[ref]["uuid"] == record["uuid"]

    ref_a, ref_b = kept
    done = tree.ctl_ok("db", "get", "VM", kept[ref_a]["uuid"])
    got = json.loads(done.stdout)
    assert got["ref"] == ref_a, got
    assert (got["uuid"], got["name_label"], got["name_description"]) == (
        kept[ref_a]["uuid"], "dump-a", "dump-a as dumped"), got
    assert json.loads(tree.ctl_ok("db", "get", "VM", ref_b).stdout)["name_label"] == "dump-b"
    missing = tree.ctl("db", "get", "VM", str(uuid_mod.uuid4()))
    assert missing.returncode != 0 and "UUID_INVALID" in missing.stdout + missing.stderr, \
        describe(missing)

    # After the dump: a new row, a changed field.
    late = db(tree, "db.create_row", "VM", {"name_label": "after-the-dump"})
    db(tree, "db.write_field", "VM", ref_a, "name_description", "changed after the dump")
    done = tree.ctl_ok("db", "restore", dump)
    assert tree.paths.restore_db.exists(), describe(done)

    # A restart of xapi-db alone does not apply it.
    old_pid = kill_db(tree)
    db_running(tree, old_pid=old_pid)
    assert late in db(tree, "db.read_refs", "VM"), "the restore was applied by a crash restart"
    assert db(tree, "db.read_field", "VM", ref_a, "name_description") == \
        "changed after the dump"
    assert tree.paths.restore_db.exists()
    token_before = db(tree, "db.token")

    # A start of the tree applies it, once.
    tree.ctl_ok("down")
    done = tree.up()
    assert done.returncode == 0, describe(done)
    db_running(tree)
    refs = set(db(tree, "db.read_refs", "VM"))
    assert late not in refs, "a row created after the dump survived the restore"
    for ref, record in kept.items():
        assert ref in refs, f"{ref} of the dump is not back"
        back = db(tree, "db.read_record", "VM", ref)
        assert (back["uuid"], back["name_label"], back["name_description"]) == (
            record["uuid"], record["name_label"], record["name_description"]), back
    assert not tree.paths.restore_db.exists(), "restore_db.db is still there after the restore"
    assert "restored the database from" in "\n".join(tree.log_lines("xapi-db"))
    assert token_key(db(tree, "db.token")) >= token_key(token_before), "tokens went backwards"


# -- 4. a corrupt newest connection -----------------------------------------------------------
DB_CONF = "[/var/lib/xcp/state.db]\nmode:no_limit\n\n[/var/lib/xcp/state2.db]\nmode:no_limit\n"


@pytest.mark.timeout(150)
def test_corrupt_newest_connection_is_set_aside_and_never_overwritten(make_tree):
    tree = make_tree()
    tree.init()
    tree.paths.db_conf.write_text(DB_CONF)
    tree.configure(ready_timeout=15)
    first = tree.paths.under("/var/lib/xcp/state.db")
    second = tree.paths.under("/var/lib/xcp/state2.db")
    done = tree.up()
    assert done.returncode == 0, describe(done)
    ref = db(tree, "db.create_row", "VM", {"name_label": "survivor"})
    tree.ctl_ok("down")
    for path in (first, second):           # written to every connection
        assert ref in {row["ref"] for row in xmlfile.read_file(path).tables["VM"]}, path

    # The first connection: garbage, and a generation above the second's.
    garbage = b"\x00garbage\xff" + os.urandom(200) + b"<database>"
    first.write_bytes(garbage)
    newer = (xmlfile.read_generation(second) or 0) + 100
    xmlfile.generation_path(first).write_text(f"{newer}\n")

    done = tree.up()
    assert done.returncode == 0, describe(done)
    assert db(tree, "db.read_field", "VM", ref, "name_label") == "survivor"
    assert db(tree, "sys.stats")["loaded_from"] == str(second)
    aside = wait_until(lambda: sorted(first.parent.glob("state.db.corrupt.*")), 10,
                       "the corrupt state.db kept aside")
    assert [p.read_bytes() for p in aside] == [garbage], aside
    log = "\n".join(tree.log_lines("xapi-db"))
    assert f"{first} is unusable" in log, log[-2000:]
    # What replaced it is the good database again.
    wait_until(lambda: xmlfile.read_file(first).tables["VM"], 10, "state.db written again")
    tree.ctl_ok("down")

    # Both connections garbage: xapi-db cannot start, the start-up fails naming the file,
    # and neither file is touched.
    bad = {first: b"junk one\x00" + os.urandom(100), second: b"junk two\x01" + os.urandom(100)}
    for path, data in bad.items():
        path.write_bytes(data)
    done = tree.up(timeout_s=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, describe(done)
    failed = [line for line in output.splitlines()
              if "failed" in line and "Start up database engine" in line]
    assert failed, describe(done)
    assert "xapi-db" in failed[0] and str(first) in failed[0], describe(done)
    status = tree.status()
    assert not daemon(status, "xapi-db")["ready"], summary(status)
    assert status["init"]["complete"] is False, summary(status)
    for path, data in bad.items():
        assert path.read_bytes() == data, f"{path} was overwritten although it never loaded"
    tree.ctl_ok("down")
    for path, data in bad.items():
        assert path.read_bytes() == data, f"{path} was overwritten at the stop"
    assert [p.read_bytes() for p in sorted(first.parent.glob("state.db.corrupt.*"))] == [garbage]
