"""Generations, derived sets and events (REFERENCE.md "The database" and "Events"): each change
+1, an unchanged write nothing, a touch (event.inject) +2; the one-to-many sets kept in step and
their owners stamped; event.from tokens, add/mod/del, class filters, blocking and timeouts, and
message events in the second half of the token."""

import asyncio
import time
import uuid as uuid_mod

import pytest

from common.errors import XapiError
from daemons.db import store as store_mod
from daemons.db.events import make_token, parse_token


from db_harness import create, delete, run, write  # noqa: E402

NULL = "OpaqueRef:NULL"




def row(e, cls, ref):
    return e.store.tables[cls].rows[ref]


def summary(result):
    """[(class, operation, ref)] of an events_since result, in order."""
    return [(ev["class"], ev["operation"], ev["ref"]) for ev in result["events"]]


def db_part(token):
    return parse_token(token)[0]


# -- generation rules ---------------------------------------------------------------------------

def test_each_change_stamps_then_adds_one(env):
    async def body(e):
        g = e.store.generation
        vm = await create(e, "VM", {"name_label": "a"})
        assert e.store.generation == g + 1
        assert (row(e, "VM", vm).created, row(e, "VM", vm).modified) == (g, g)
        assert await write(e, "VM", vm, "name_label", "b")
        assert e.store.generation == g + 2
        assert (row(e, "VM", vm).created, row(e, "VM", vm).modified) == (g, g + 1)
        assert await e.write(lambda t: e.ops.process_structured_field(
            t, "VM", vm, "other_config", "add_map", "k", "v"))
        assert e.store.generation == g + 3
        assert row(e, "VM", vm).modified == g + 2
        await delete(e, "VM", vm)
        assert e.store.generation == g + 4
        stamp, created, ref, snapshot = e.store.tables["VM"].deleted[-1]
        assert (stamp, created, ref) == (g + 3, g, vm)
        assert snapshot["name_label"] == "b" and snapshot["other_config"] == {"k": "v"}
        # two changes in one write: +2, each with its own stamp
        def two(t):
            a = e.ops.create_row(t, "SR", {"name_label": "one"})
            e.ops.write_field(t, "SR", a, "name_label", "two")
            return a
        sr = await e.write(two)
        assert e.store.generation == g + 6
        assert (row(e, "SR", sr).created, row(e, "SR", sr).modified) == (g + 4, g + 5)
        # the token is the last stamp handed out
        assert db_part(e.token()) == e.store.generation - 1
    run(env, body)


def test_unchanged_write_no_bump_no_event(env):
    async def body(e):
        vm = await create(e, "VM", {"name_label": "a", "tags": ["x"],
                                     "other_config": {"k": "v"}})
        uuid = e.ops.read_field("VM", vm, "uuid")
        g, token = e.store.generation, e.token()
        modified = row(e, "VM", vm).modified
        unchanged = [
            lambda t: e.ops.write_field(t, "VM", vm, "name_label", "a"),
            lambda t: e.ops.write_field(t, "VM", vm, "tags", ["x", "x"]),
            lambda t: e.ops.write_field(t, "VM", vm, "other_config", {"k": "v"}),
            lambda t: e.ops.write_field(t, "VM", vm, "domid", -1),            # the default
            lambda t: e.ops.write_field(t, "VM", vm, "uuid", uuid),
            lambda t: e.ops.process_structured_field(t, "VM", vm, "tags", "add_set", "x"),
            lambda t: e.ops.process_structured_field(t, "VM", vm, "tags", "remove_set", "y"),
            lambda t: e.ops.process_structured_field(t, "VM", vm, "other_config", "add_map",
                                                     "k", "v"),
            lambda t: e.ops.process_structured_field(t, "VM", vm, "other_config",
                                                     "remove_map", "nope"),
        ]
        for fn in unchanged:
            assert await e.write(fn) is False
        redo_records = e.redo.stats["records"]
        assert e.store.generation == g
        assert row(e, "VM", vm).modified == modified
        result = await e.events_since(["*"], token, 0)
        assert result["events"] == []
        assert result["token"] == token
        assert e.redo.stats["records"] == redo_records      # nothing logged either
    run(env, body)


def test_inject_touches_by_two_and_its_token_sees_the_row(env):
    async def body(e):
        vm = await create(e, "VM", {"name_label": "a"})
        other = await create(e, "VM", {"name_label": "b"})
        g, before = e.store.generation, e.token()
        token = await e.inject("VM", vm)
        assert e.store.generation == g + 2
        assert row(e, "VM", vm).modified == g + 1
        assert db_part(token) == g                          # just below the touched row
        assert parse_token(token)[1] == e.messages.generation
        result = await e.events_since(["vm"], token, 0)
        assert summary(result) == [("vm", "mod", vm)]
        assert result["events"][0]["snapshot"]["name_label"] == "a"
        assert summary(await e.events_since(["vm"], before, 0)) == [("vm", "mod", vm)]
        # the next token is past it
        assert (await e.events_since(["vm"], result["token"], 0))["events"] == []
        # nothing else moved
        assert row(e, "VM", other).modified < g
        # inject on a missing row: HANDLE_INVALID, no bump
        gone = f"OpaqueRef:{uuid_mod.uuid4()}"
        with pytest.raises(XapiError) as info:
            await e.inject("VM", gone)
        assert info.value.description == ["HANDLE_INVALID", "VM", gone]
        host = await create(e, "host", {})
        with pytest.raises(XapiError) as info:
            await e.inject("VM", host)                       # a ref of another class
        assert info.value.description == ["HANDLE_INVALID", "VM", host]
        assert e.store.generation == g + 3                   # only the host create
    run(env, body)


# -- derived sets -------------------------------------------------------------------------------

def test_derived_sets_follow_create_repoint_delete(env):
    async def body(e):
        ops = e.ops
        host = await create(e, "host", {"name_label": "h"})
        sr = await create(e, "SR", {"name_label": "sr"})
        vm1 = await create(e, "VM", {"name_label": "vm1", "resident_on": host})
        vm2 = await create(e, "VM", {"name_label": "vm2"})
        assert ops.read_field("host", host, "resident_VMs") == (vm1,)
        # the host was stamped when vm1 started to point at it
        assert row(e, "host", host).modified == row(e, "VM", vm1).created

        token = e.token()
        g = e.store.generation
        vdi = await create(e, "VDI", {"SR": sr})
        vbd = await create(e, "VBD", {"VM": vm1, "VDI": vdi})
        assert ops.read_field("VM", vm1, "VBDs") == (vbd,)
        assert ops.read_field("VDI", vdi, "VBDs") == (vbd,)
        assert ops.read_field("SR", sr, "VDIs") == (vdi,)
        assert ops.read_field("VM", vm2, "VBDs") == ()
        assert e.store.generation == g + 2                 # one bump per create, not per link
        assert row(e, "SR", sr).modified == g              # stamped with the VDI's create
        assert row(e, "VM", vm1).modified == g + 1          # ... and the VBD's
        assert row(e, "VDI", vdi).modified == g + 1
        result = await e.events_since(["vm", "vbd", "vdi", "sr"], token, 0)
        assert sorted(summary(result)) == sorted([
            ("sr", "mod", sr), ("vdi", "add", vdi), ("vbd", "add", vbd), ("vm", "mod", vm1)])
        vm_event = [ev for ev in result["events"] if ev["class"] == "vm"][0]
        assert vm_event["snapshot"]["VBDs"] == (vbd,)
        # events come oldest first
        assert [int(ev["id"]) for ev in result["events"]] == \
            sorted(int(ev["id"]) for ev in result["events"])

        # re-pointing: both VMs change, both are stamped
        token = e.token()
        g = e.store.generation
        assert await write(e, "VBD", vbd, "VM", vm2)
        assert ops.read_field("VM", vm1, "VBDs") == ()
        assert ops.read_field("VM", vm2, "VBDs") == (vbd,)
        assert row(e, "VM", vm1).modified == g and row(e, "VM", vm2).modified == g
        assert sorted(summary(await e.events_since(["vm", "vbd"], token, 0))) == sorted([
            ("vm", "mod", vm1), ("vm", "mod", vm2), ("vbd", "mod", vbd)])
        # re-pointing to NULL and back
        assert await write(e, "VM", vm1, "resident_on", NULL)
        assert ops.read_field("host", host, "resident_VMs") == ()
        assert await write(e, "VM", vm2, "resident_on", host)
        assert ops.read_field("host", host, "resident_VMs") == (vm2,)

        # delete: the set shrinks, the owner is stamped with the deletion
        token = e.token()
        g = e.store.generation
        await delete(e, "VBD", vbd)
        assert ops.read_field("VM", vm2, "VBDs") == ()
        assert ops.read_field("VDI", vdi, "VBDs") == ()
        assert row(e, "VM", vm2).modified == g and row(e, "VDI", vdi).modified == g
        assert sorted(summary(await e.events_since(["vm", "vbd", "vdi"], token, 0))) == sorted([
            ("vm", "mod", vm2), ("vbd", "del", vbd), ("vdi", "mod", vdi)])
        await delete(e, "VDI", vdi)
        assert ops.read_field("SR", sr, "VDIs") == ()
        # a delete of the "one" side leaves the "many" side pointing at it (the GC's job)
        vbd2 = await create(e, "VBD", {"VM": vm1})
        await delete(e, "VM", vm1)
        assert ops.read_field("VBD", vbd2, "VM") == vm1
    run(env, body)


def test_derived_set_of_a_row_created_after_its_members(env):
    async def body(e):
        vm_ref = f"OpaqueRef:{uuid_mod.uuid4()}"
        vbd = await create(e, "VBD", {"VM": vm_ref})                # dangling for now
        vm = await create(e, "VM", {"name_label": "late"}, ref=vm_ref)
        assert vm == vm_ref
        assert e.ops.read_field("VM", vm, "VBDs") == (vbd,)
        # several members, sorted, and other derived sets of the same class
        vbd2 = await create(e, "VBD", {"VM": vm})
        vif = await create(e, "VIF", {"VM": vm})
        snap = await create(e, "VM", {"snapshot_of": vm, "parent": vm})
        record = e.ops.read_record("VM", vm)
        assert record["VBDs"] == tuple(sorted([vbd, vbd2]))
        assert record["VIFs"] == (vif,)
        assert record["snapshots"] == (snap,) and record["children"] == (snap,)
        # a self-reference
        assert await write(e, "VM", snap, "parent", snap)
        assert e.ops.read_field("VM", snap, "children") == (snap,)
        assert e.ops.read_field("VM", vm, "children") == ()
    run(env, body)


def test_deletion_queue_is_capped(env):
    async def body(e):
        def make(t):
            return [e.ops.create_row(t, "console", {}) for _ in range(600)]
        refs = await e.write(make)
        token = e.token()

        def remove(t):
            for ref in refs:
                e.ops.delete_row(t, "console", ref)
        await e.write(remove)
        queue = e.store.tables["console"].deleted
        assert store_mod.DELETION_QUEUE_KEEP <= len(queue) <= store_mod.DELETION_QUEUE_CAP
        # the newest deletions are the ones kept
        assert queue[-1][2] == refs[-1]
        assert [item[0] for item in queue] == sorted(item[0] for item in queue)
        dels = summary(await e.events_since(["console"], token, 0))
        assert dels and all(op == "del" for _c, op, _r in dels)
        assert dels[-1][2] == refs[-1]
    run(env, body)


# -- events_since -------------------------------------------------------------------------------

def test_empty_token_gives_every_object_as_add(env):
    async def body(e):
        host = await create(e, "host", {"name_label": "h"})
        vm = await create(e, "VM", {"name_label": "v", "resident_on": host})
        gone = await create(e, "SR", {})
        await delete(e, "SR", gone)
        await write(e, "VM", vm, "name_label", "v2")
        result = await e.events_since(["*"], "", 0)
        assert sorted(summary(result)) == sorted([("host", "add", host), ("vm", "add", vm)])
        snap = {ev["ref"]: ev["snapshot"] for ev in result["events"]}
        assert snap[vm]["name_label"] == "v2"
        assert snap[host]["resident_VMs"] == (vm,)
        for ev in result["events"]:
            assert set(ev) == {"id", "timestamp", "class", "operation", "ref", "snapshot"}
            float(ev["timestamp"])
        assert db_part(result["token"]) == e.store.generation - 1
        assert result["valid_ref_counts"]["vm"] == 1
        assert result["valid_ref_counts"]["sr"] == 0
        # with a class filter
        assert summary(await e.events_since(["vm"], "", 0)) == [("vm", "add", vm)]
        assert summary(await e.events_since(["vm/" + host], "", 0)) == []
        # None is the start too
        assert summary(await e.events_since(["host"], None, 0)) == [("host", "add", host)]
    run(env, body)


def test_token_after_changes_gives_add_mod_del(env):
    async def body(e):
        kept = await create(e, "VM", {"name_label": "kept"})
        changed = await create(e, "VM", {"name_label": "changed"})
        doomed = await create(e, "VM", {"name_label": "doomed"})
        token = e.token()
        await write(e, "VM", changed, "name_label", "changed!")
        await delete(e, "VM", doomed)
        born = await create(e, "VM", {"name_label": "born"})
        flash = await create(e, "VM", {"name_label": "flash"})     # created and deleted inside
        await write(e, "VM", flash, "name_label", "flash!")
        await delete(e, "VM", flash)
        born_and_changed = await create(e, "VM", {"name_label": "bc"})
        await write(e, "VM", born_and_changed, "name_label", "bc!")
        result = await e.events_since(["vm"], token, 0)
        assert summary(result) == [("vm", "mod", changed), ("vm", "del", doomed),
                                   ("vm", "add", born), ("vm", "add", born_and_changed)]
        by_ref = {ev["ref"]: ev for ev in result["events"]}
        assert by_ref[changed]["snapshot"]["name_label"] == "changed!"
        assert by_ref[doomed]["snapshot"]["name_label"] == "doomed"   # the last snapshot
        assert by_ref[born_and_changed]["snapshot"]["name_label"] == "bc!"
        assert kept not in by_ref and flash not in by_ref
        assert result["valid_ref_counts"] == {"vm": 4}
        # ids are the stamps: increasing
        ids = [int(ev["id"]) for ev in result["events"]]
        assert ids == sorted(ids) and ids[0] > db_part(token)
        # the returned token: nothing more, then only what follows
        assert (await e.events_since(["vm"], result["token"], 0))["events"] == []
        await write(e, "VM", kept, "name_label", "kept!")
        assert summary(await e.events_since(["vm"], result["token"], 0)) == \
            [("vm", "mod", kept)]
        # a token in the middle: the events after it only
        mid = make_token(int(by_ref[doomed]["id"]), 0)
        after_mid = summary(await e.events_since(["vm"], mid, 0))
        assert ("vm", "del", doomed) not in after_mid and ("vm", "add", born) in after_mid
    run(env, body)


def test_token_of_an_empty_database_sees_the_first_row(env):
    """The first row is stamped 0: a token taken before it must be below 0."""
    async def body(e):
        assert e.store.generation == 0
        token = e.token()
        assert db_part(token) == -1
        vm = await create(e, "VM", {})
        assert row(e, "VM", vm).created == 0
        assert summary(await e.events_since(["vm"], token, 0)) == [("vm", "add", vm)]
    run(env, body)


def test_class_filters(env):
    async def body(e):
        token = e.token()
        host = await create(e, "host", {})
        vm1 = await create(e, "VM", {})
        vm2 = await create(e, "VM", {})
        sr = await create(e, "SR", {})
        every = summary(await e.events_since(["*"], token, 0))
        assert sorted(every) == sorted([("host", "add", host), ("vm", "add", vm1),
                                        ("vm", "add", vm2), ("sr", "add", sr)])
        assert sorted(summary(await e.events_since(["vm"], token, 0))) == \
            sorted([("vm", "add", vm1), ("vm", "add", vm2)])
        assert summary(await e.events_since(["VM"], token, 0)) == \
            summary(await e.events_since(["vm"], token, 0))
        assert summary(await e.events_since(["vm/" + vm2], token, 0)) == [("vm", "add", vm2)]
        assert sorted(summary(await e.events_since(["vm/" + vm2, "sr"], token, 0))) == \
            sorted([("vm", "add", vm2), ("sr", "add", sr)])
        # a class and one of its refs: the whole class
        assert len(summary(await e.events_since(["vm/" + vm2, "vm"], token, 0))) == 2
        assert len(summary(await e.events_since(["vm", "vm/" + vm2], token, 0))) == 2
        # a single string is a list of one
        assert summary(await e.events_since("sr", token, 0)) == [("sr", "add", sr)]
        # a ref filter sees the deletion of its row
        await delete(e, "VM", vm2)
        assert summary(await e.events_since(["vm/" + vm2], token, 0)) == []   # born inside
        later = e.token()
        await delete(e, "VM", vm1)
        assert summary(await e.events_since(["vm/" + vm1], later, 0)) == [("vm", "del", vm1)]
        # bad subscriptions and tokens
        with pytest.raises(XapiError) as info:
            await e.events_since(["nosuchclass"], token, 0)
        assert info.value.code == "EVENT_SUBSCRIPTION_PARSE_FAILURE"
        for bad in ("garbage", "12,x", 12):
            with pytest.raises(XapiError) as info:
                await e.events_since(["vm"], bad, 0)
            assert info.value.code == "EVENT_FROM_TOKEN_PARSE_FAILURE"
    run(env, body)


def test_events_since_blocks_until_a_write(env):
    async def body(e):
        vm = await create(e, "VM", {"name_label": "a"})
        token = e.token()

        async def later():
            await asyncio.sleep(0.2)
            await write(e, "SR", await create(e, "SR", {}), "name_label", "not wanted")
            await asyncio.sleep(0.1)
            await write(e, "VM", vm, "name_label", "b")
        task = asyncio.get_running_loop().create_task(later())
        started = time.monotonic()
        result = await e.events_since(["vm"], token, 10)
        took = time.monotonic() - started
        await task
        assert summary(result) == [("vm", "mod", vm)]
        assert result["events"][0]["snapshot"]["name_label"] == "b"
        assert 0.2 <= took < 5, took            # woke at the write, not at the timeout
    run(env, body)


def test_events_since_times_out_empty(env):
    async def body(e):
        await create(e, "VM", {})
        token = e.token()

        async def unrelated():
            await asyncio.sleep(0.1)
            await create(e, "SR", {})                 # wakes the waiter, which waits on
        task = asyncio.get_running_loop().create_task(unrelated())
        started = time.monotonic()
        result = await e.events_since(["vm"], token, 0.5)
        took = time.monotonic() - started
        await task
        assert result["events"] == []
        assert 0.4 <= took < 5, took
        # the token moved on with the generation (the SR create), so nothing is lost
        assert db_part(result["token"]) == e.store.generation - 1
        # timeout 0: at once
        started = time.monotonic()
        assert (await e.events_since(["vm"], e.token(), 0))["events"] == []
        assert time.monotonic() - started < 1
    run(env, body)


def test_message_events_in_the_second_half_of_the_token(env):
    async def body(e):
        host = await create(e, "host", {})
        host_uuid = e.ops.read_field("host", host, "uuid")
        token = e.token()
        db_gen, msg_gen = parse_token(token)
        ref = await e.message_create("TEST", 3, "Host", host_uuid, "hello")
        assert e.messages.generation == msg_gen + 1
        result = await e.events_since(["message"], token, 0)
        assert summary(result) == [("message", "add", ref)]
        snap = result["events"][0]["snapshot"]
        assert snap["name"] == "TEST" and snap["body"] == "hello"
        new_db, new_msg = parse_token(result["token"])
        assert (new_db, new_msg) == (db_gen, msg_gen + 1)   # the DB half did not move
        assert (await e.events_since(["message"], result["token"], 0))["events"] == []
        # DB classes alone see no message; "*" sees both
        assert (await e.events_since(["vm"], token, 0))["events"] == []
        vm = await create(e, "VM", {})
        both = summary(await e.events_since(["*"], token, 0))
        assert ("message", "add", ref) in both and ("vm", "add", vm) in both
        # a waiter on messages wakes at message_create
        token = (await e.events_since(["message"], result["token"], 0))["token"]

        async def later():
            await asyncio.sleep(0.2)
            return await e.message_create("LATER", 1, "Host", host_uuid, "")
        task = asyncio.get_running_loop().create_task(later())
        started = time.monotonic()
        woke = await e.events_since(["message"], token, 10)
        assert time.monotonic() - started < 5
        assert summary(woke) == [("message", "add", await task)]
        # destroy: a del event
        token = woke["token"]
        await e.message_destroy(ref)
        assert summary(await e.events_since(["message"], token, 0)) == [("message", "del", ref)]
    run(env, body)
