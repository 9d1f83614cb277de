"""The message store: one XML file per message, its own generation, the cap, events."""

import logging
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from common.errors import XapiError
from daemons.db import messages
from daemons.db.messages import Message, MessageStore

OBJ = "2b1c1a84-0c35-4e62-a3f1-4e0e3c1d6d21"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def store(tmp_path, **kw):
    s = MessageStore(tmp_path / "messages", **kw)
    s.load()
    return s


def message_files(s):
    return sorted(p.name for p in s.directory.iterdir() if p.is_file()
                  and p.name != messages.GENERATION_FILE)


def make(s, n, start=T0, **kw):
    return [s.create(kw.get("name", f"ALERT_{i}"), 3, "VM", OBJ, f"body {i}",
                     timestamp=start + timedelta(seconds=i)) for i in range(n)]


@pytest.fixture
def no_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_create_reload_round_trip_of_every_field(tmp_path):
    s = store(tmp_path)
    body = "héllo ☃ <&> \"q\" 'a'\nline two\r\nthree\ttab\n"
    ts = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    a = s.create("POOL_MASTER_TRANSITION", 4, "Host", OBJ, body, timestamp=ts)
    b = s.create("HA_HOST_FAILED", 3, "Certificate", OBJ.upper(), "", timestamp=T0)
    c = s.create("X", 1, "PVS_proxy", OBJ, "z")  # now
    assert a.ref.startswith("OpaqueRef:") and a.uuid != b.uuid
    assert (a.generation, b.generation, c.generation) == (1, 2, 3)
    assert c.timestamp.tzinfo is not None
    again = store(tmp_path)
    assert {m.ref: m for m in again._msgs.values()} == {m.ref: m for m in (a, b, c)}
    assert again.get_all_records() == s.get_all_records()
    assert again.get_record(a.ref) == {
        "uuid": a.uuid, "name": "POOL_MASTER_TRANSITION", "priority": 4, "cls": "Host",
        "obj_uuid": OBJ, "timestamp": ts, "body": body}
    assert again.get_by_uuid(b.uuid) == b.ref


def test_file_is_named_by_timestamp_in_xapi_form(tmp_path):
    s = store(tmp_path)
    m = s.create("VM_STARTED", 5, "VM", OBJ, "a<b>&c", timestamp=T0)
    path = s.directory / f"{T0.timestamp():0.5f}"
    assert message_files(s) == [path.name]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == (
        '<?xml version="1.0" encoding="UTF-8"?>\n<message><generation>1</generation>'
        f"<ref>{m.ref}</ref><name>VM_STARTED</name><priority>5</priority><cls>VM</cls>"
        f"<obj_uuid>{OBJ}</obj_uuid><timestamp>20240501T12:00:00Z</timestamp>"
        f"<uuid>{m.uuid}</uuid><body>a&lt;b&gt;&amp;c</body></message>")
    # Same second: the next name is 0.00001 later; the message keeps its timestamp.
    n = s.create("VM_STARTED", 5, "VM", OBJ, "", timestamp=T0)
    assert f"{T0.timestamp() + 0.00001:0.5f}" in message_files(s)
    assert n.timestamp == T0


def test_reads_a_file_written_by_xapi(tmp_path):
    d = tmp_path / "messages"
    d.mkdir()
    ref, uuid = "OpaqueRef:8e2d2f1c-1b7a-4a5e-9a49-0c3f5f6d7e8f", "5d5c4b3a-2e1f-4a0b-9c8d-7e6f5a4b3c2d"
    (d / "1714564800.00000").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<message><generation>41</generation>'
        f"<ref>{ref}</ref><name>HA_HOST_FAILED</name><priority>2</priority><cls>Host</cls>"
        f"<obj_uuid>{OBJ}</obj_uuid><timestamp>20240501T12:00:00Z</timestamp>"
        f"<uuid>{uuid}</uuid><body></body></message>")
    (d / "VM" / OBJ).mkdir(parents=True)  # xapi's symlink directories are skipped
    s = store(tmp_path)
    assert s.get_record(ref)["timestamp"] == T0 and s.get_record(ref)["body"] == ""
    assert s.generation == 41 and s.get_by_uuid(uuid) == ref


def test_generation_increases_and_survives_reload(tmp_path):
    s = store(tmp_path)
    assert s.generation == 0
    ms = make(s, 3)
    assert [m.generation for m in ms] == [1, 2, 3] and s.generation == 3
    s.destroy(ms[2].ref)  # the newest: only the generation file remembers 4
    assert s.generation == 4
    again = store(tmp_path)
    assert again.generation == 4
    assert again.create("N", 3, "VM", OBJ, "").generation == 5
    (again.directory / messages.GENERATION_FILE).unlink()
    assert store(tmp_path).generation == 5  # from the newest message


def test_cap_deletes_the_oldest_files_with_del_events(tmp_path, caplog):
    s = store(tmp_path, cap=5)
    ms = make(s, 8)
    names = [f"{m.timestamp.timestamp():0.5f}" for m in ms]
    assert message_files(s) == sorted(names[3:])
    assert set(s.get_all_records()) == {m.ref for m in ms[3:]}
    events, gen = s.events_since(5)
    assert [(e["operation"], e["ref"], e["generation"]) for e in events] == [
        ("add", ms[5].ref, 6), ("del", ms[0].ref, 7), ("add", ms[6].ref, 8),
        ("del", ms[1].ref, 9), ("add", ms[7].ref, 10), ("del", ms[2].ref, 11)]
    assert all(e["snapshot"] is None for e in events if e["operation"] == "del")
    assert gen == s.generation == 11
    assert "over the limit of 5" in caplog.text
    # "Oldest" is by timestamp, as xapi's GC sorts the file names: an old one goes at once.
    old = s.create("OLD", 3, "VM", OBJ, "", timestamp=T0 - timedelta(days=1))
    assert old.ref not in s.get_all_records() and len(message_files(s)) == 5
    assert set(store(tmp_path, cap=5).get_all_records()) == {m.ref for m in ms[3:]}
    smaller = store(tmp_path, cap=2)  # a lower cap applies at load
    assert set(smaller.get_all_records()) == {m.ref for m in ms[6:]}
    assert message_files(smaller) == sorted(names[6:])


def test_destroy_and_handle_invalid(tmp_path):
    s = store(tmp_path)
    a, b = make(s, 2)
    s.destroy(a.ref)
    assert set(s.get_all_records()) == {b.ref} and len(message_files(s)) == 1
    with pytest.raises(XapiError) as err:
        s.destroy(a.ref)
    assert err.value.description == ["HANDLE_INVALID", "message", a.ref]
    with pytest.raises(XapiError) as err:
        s.get_record(a.ref)
    assert err.value.description == ["HANDLE_INVALID", "message", a.ref]
    with pytest.raises(XapiError) as err:
        s.get_by_uuid(a.uuid)
    assert err.value.description == ["UUID_INVALID", "message", a.uuid]
    assert a.ref not in store(tmp_path).get_all_records()


def test_get_since_is_strictly_after(tmp_path):
    s = store(tmp_path)
    ms = make(s, 3)
    assert set(s.get_since(T0)) == {ms[1].ref, ms[2].ref}
    assert set(s.get_since(T0 - timedelta(microseconds=1))) == {m.ref for m in ms}
    assert set(s.get_since(T0 + timedelta(seconds=2))) == set()
    naive = T0.replace(tzinfo=None) + timedelta(seconds=1)  # naive = UTC
    assert set(s.get_since(naive)) == {ms[2].ref}
    plus2 = timezone(timedelta(hours=2))
    assert set(s.get_since(T0.astimezone(plus2))) == {ms[1].ref, ms[2].ref}


def test_events_since_in_order(tmp_path):
    s = store(tmp_path)
    a, b, c = make(s, 3)  # 1 2 3
    s.destroy(a.ref)  # 4
    d = s.create("D", 3, "VM", OBJ, "")  # 5
    events, gen = s.events_since(0)  # from the start: live messages as add, no del
    assert gen == 5
    assert [(e["operation"], e["ref"], e["generation"]) for e in events] == [
        ("add", b.ref, 2), ("add", c.ref, 3), ("add", d.ref, 5)]
    assert events[0] == {"class": "message", "operation": "add", "ref": b.ref,
                         "snapshot": b.to_record(), "generation": 2}
    events, _ = s.events_since(2)
    assert [(e["operation"], e["ref"]) for e in events] == [
        ("add", c.ref), ("del", a.ref), ("add", d.ref)]
    assert events[1]["snapshot"] is None
    assert s.events_since(5) == ([], 5)
    e = s.create("E", 3, "VM", OBJ, "")  # 6, destroyed at 7: invisible from 5
    s.destroy(e.ref)
    assert s.events_since(5) == ([], 7)
    assert [x["operation"] for x in s.events_since(6)[0]] == ["del"]


def test_events_lost(tmp_path, no_fsync):
    s = store(tmp_path, cap=1)
    make(s, 2)  # 1, 2, del of the first at 3
    assert [e["operation"] for e in s.events_since(1)[0]] == ["add", "del"]
    with pytest.raises(XapiError) as err:
        s.events_since(s.generation + 1)  # a token from the future
    assert err.value.description == ["EVENTS_LOST"]
    make(s, messages.DELETED_MAX, start=T0 + timedelta(days=1))  # 512 more deletions
    assert len(s._deleted) == messages.DELETED_KEEP
    newest_dropped = s._deleted[0][0] - 2  # deletions are every other generation here
    with pytest.raises(XapiError, match="EVENTS_LOST"):
        s.events_since(newest_dropped - 1)  # would need a deletion no longer remembered
    events, _ = s.events_since(newest_dropped)  # saw every dropped one: nothing lost
    assert (events[0]["operation"], events[0]["ref"]) == ("del", s._deleted[0][1])
    assert [e["generation"] for e in events] == sorted(e["generation"] for e in events)
    # Later ones were created and destroyed inside the window: no event. The live one: add.
    assert [e["operation"] for e in events] == ["del", "add"]
    assert len(s.events_since(0)[0]) == 1  # from the start is never lost
    again = store(tmp_path, cap=1)  # deletions before a restart are not remembered
    with pytest.raises(XapiError, match="EVENTS_LOST"):
        again.events_since(again.generation - 1)
    assert again.events_since(again.generation) == ([], again.generation)


def test_corrupt_files_are_moved_aside_others_loaded(tmp_path, caplog):
    s = store(tmp_path)
    good = make(s, 2)
    d = s.directory
    (d / "1.00000").write_text("<message><name>trunc")
    (d / "2.00000").write_text((d / f"{T0.timestamp():0.5f}").read_text()
                               .replace("<cls>VM</cls>", "<cls>Blob</cls>"))
    (d / "3.00000").write_text((d / f"{T0.timestamp():0.5f}").read_text())  # duplicate ref
    (d / "4.00000").write_bytes(b"\xff\xfe")
    (d / ".5.00000.abc.tmp").write_text("half")  # an interrupted atomic write
    (d / "corrupt").mkdir()
    (d / "corrupt" / "1.00000").write_text("older")
    caplog.set_level(logging.WARNING)
    again = store(tmp_path)
    assert set(again.get_all_records()) == {m.ref for m in good}
    aside = sorted(p.name for p in (d / "corrupt").iterdir())
    assert len(aside) == 5 and {"2.00000", "3.00000", "4.00000"} <= set(aside)
    assert (d / "corrupt" / "1.00000").read_text() == "older"
    assert not (d / ".5.00000.abc.tmp").exists()
    assert message_files(again) == sorted(f"{m.timestamp.timestamp():0.5f}" for m in good)
    assert "is corrupt" in caplog.text and "unfinished write" in caplog.text


@pytest.mark.parametrize("kwargs, description", [
    ({"name": ""}, ["INVALID_VALUE", "name", ""]),
    ({"name": "A\nB"}, ["INVALID_VALUE", "name", "A\nB"]),
    ({"name": 5}, ["FIELD_TYPE_ERROR", "name"]),
    ({"priority": "3"}, ["FIELD_TYPE_ERROR", "priority"]),
    ({"priority": True}, ["FIELD_TYPE_ERROR", "priority"]),
    ({"priority": 2 ** 63}, ["INVALID_VALUE", "priority", str(2 ** 63)]),
    ({"cls": "vm"}, ["INVALID_VALUE", "cls", "vm"]),
    ({"cls": "Network"}, ["INVALID_VALUE", "cls", "Network"]),
    ({"obj_uuid": "not-a-uuid"}, ["INVALID_VALUE", "obj_uuid", "not-a-uuid"]),
    ({"body": "bell\x07"}, ["INVALID_VALUE", "body", "UTF8 expected"]),
    ({"body": "lone \udc80"}, ["INVALID_VALUE", "body", "UTF8 expected"]),
    ({"timestamp": "2024-05-01"}, ["FIELD_TYPE_ERROR", "timestamp"]),
])
def test_validation_errors_name_the_field(tmp_path, kwargs, description):
    s = store(tmp_path)
    args = {"name": "N", "priority": 3, "cls": "VM", "obj_uuid": OBJ, "body": "", **kwargs}
    with pytest.raises(XapiError) as err:
        s.create(**args)
    assert err.value.description == description
    assert s.generation == 0 and message_files(s) == []


def test_priority_is_any_int64_as_xapi(tmp_path):
    s = store(tmp_path)
    for p in (0, 1, 5, 7, -1, 2 ** 63 - 1, -(2 ** 63)):
        assert s.create("N", p, "SR", OBJ, "").priority == p
    assert sorted(r["priority"] for r in store(tmp_path).get_all_records().values()) == \
        sorted([0, 1, 5, 7, -1, 2 ** 63 - 1, -(2 ** 63)])
    assert set(messages.CLASSES) == {"VM", "Host", "SR", "Pool", "VMPP", "VMSS", "PVS_proxy",
                                     "VDI", "Certificate"}


def test_atomic_no_temp_files_left_and_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    s = store(tmp_path, cap=3)
    ms = make(s, 5)
    s.destroy(ms[-1].ref)
    assert all(not p.name.startswith(".") for p in s.directory.iterdir())

    def fail(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", fail)
    before = (s.generation, s.get_all_records(), sorted(os.listdir(s.directory)))
    with pytest.raises(OSError):
        s.create("N", 3, "VM", OBJ, "", timestamp=T0 + timedelta(days=1))
    assert (s.generation, s.get_all_records(), sorted(os.listdir(s.directory))) == before


def test_stats(tmp_path):
    s = store(tmp_path)
    assert s.stats() == {"count": 0, "generation": 0, "bytes": 0}
    make(s, 2)
    on_disk = sum((s.directory / f).stat().st_size for f in message_files(s))
    assert s.stats() == {"count": 2, "generation": 2, "bytes": on_disk}
    assert store(tmp_path).stats() == s.stats()


def test_message_xml_round_trip_and_bad_cap(tmp_path):
    m = Message("OpaqueRef:" + OBJ, OBJ, "N", 3, "VDI", OBJ, T0, "<x>\r\n", 9)
    assert Message.from_xml(m.to_xml().encode()) == m
    with pytest.raises(ValueError):
        MessageStore(tmp_path, cap=0)
