"""The database operations of REFERENCE.md ("The database"), driven through the Engine in-process:
every read and write operation, and every XenAPI error, each failing call leaving the store, its
generation and its state.db dump exactly as they were."""

import asyncio
import copy
import datetime
import uuid as uuid_mod

import pytest

from common import schema
from common.errors import XapiError


from db_harness import run  # noqa: E402

UTC = datetime.timezone.utc

NULL = "OpaqueRef:NULL"



async def state(e):
    """Everything a failed call must leave alone: generation, rows with stamps, indexes,
    deletion queues, derived sets, and the state.db dump."""
    store = e.store
    tables = {name: {ref: (store.record(name, ref), row.created, row.modified, row.extra)
                     for ref, row in table.rows.items()}
              for name, table in store.tables.items()}
    deleted = {name: [(stamp, created, ref) for stamp, created, ref, _ in table.deleted]
               for name, table in store.tables.items()}
    links = {key: {target: set(refs) for target, refs in index.items() if refs}
             for key, index in store.links.items()}
    dump = await e.dump()
    return copy.deepcopy((store.generation, tables, deleted, dict(store.by_ref),
                          dict(store.by_uuid), links, dump))


async def expect_write_error(e, fn, description, prefix=False):
    """``fn(txn)`` through the writer fails with ``description`` and changes nothing."""
    before = await state(e)
    with pytest.raises(XapiError) as info:
        await e.write(fn)
    got = info.value.description
    assert (got[:len(description)] if prefix else got) == description
    after = await state(e)
    assert after[0] == before[0], "the generation moved"
    assert after == before
    return info.value


def expect_read_error(fn, description, prefix=False):
    with pytest.raises(XapiError) as info:
        fn()
    got = info.value.description
    assert (got[:len(description)] if prefix else got) == description


async def populate(e):
    """A host, an SR with a VDI, two VMs (one with a VBD on the VDI)."""
    ops = e.ops
    r = {}
    r["host"] = await e.write(lambda t: ops.create_row(
        t, "host", {"name_label": "h1", "hostname": "h1.example"}))
    r["sr"] = await e.write(lambda t: ops.create_row(t, "SR", {"name_label": "local sr"}))
    r["vdi"] = await e.write(lambda t: ops.create_row(
        t, "VDI", {"name_label": "disk", "SR": r["sr"], "virtual_size": 10 << 30}))
    r["vm1"] = await e.write(lambda t: ops.create_row(t, "VM", {
        "name_label": "vm one", "power_state": "Running", "memory_static_max": 1024,
        "resident_on": r["host"], "tags": ["a", "b"], "other_config": {"k": "v"}}))
    r["vm2"] = await e.write(lambda t: ops.create_row(t, "VM", {
        "name_label": "vm two", "name_description": "vm two", "power_state": "Halted",
        "memory_static_max": 2048, "is_a_template": True}))
    r["vbd"] = await e.write(lambda t: ops.create_row(
        t, "VBD", {"VM": r["vm1"], "VDI": r["vdi"], "userdevice": "0"}))
    r["vm1_uuid"] = ops.read_field("VM", r["vm1"], "uuid")
    r["host_uuid"] = ops.read_field("host", r["host"], "uuid")
    return r


def missing_ref():
    return f"OpaqueRef:{uuid_mod.uuid4()}"


# -- reads --------------------------------------------------------------------------------------

def test_get_table_from_ref_and_is_valid_ref(env):
    async def body(e):
        r = await populate(e)
        ops = e.ops
        assert ops.get_table_from_ref(r["vm1"]) == "VM"
        assert ops.get_table_from_ref(r["host"]) == "host"
        assert ops.get_table_from_ref(r["vbd"]) == "VBD"
        assert ops.get_table_from_ref(missing_ref()) is None
        assert ops.get_table_from_ref(NULL) is None
        assert ops.is_valid_ref(r["sr"]) is True
        assert ops.is_valid_ref(missing_ref()) is False
        assert ops.is_valid_ref(NULL) is False
        await e.write(lambda t: ops.delete_row(t, "VBD", r["vbd"]))
        assert ops.is_valid_ref(r["vbd"]) is False
        assert ops.get_table_from_ref(r["vbd"]) is None
    run(env, body)


def test_read_refs(env):
    async def body(e):
        r = await populate(e)
        assert sorted(e.ops.read_refs("VM")) == sorted([r["vm1"], r["vm2"]])
        assert e.ops.read_refs("host") == [r["host"]]
        assert e.ops.read_refs("PIF") == []
        expect_read_error(lambda: e.ops.read_refs("Nope"), ["DB_UNKNOWN_FIELD", "Nope"],
                          prefix=True)
        expect_read_error(lambda: e.ops.read_refs("vm"), ["DB_UNKNOWN_FIELD", "vm"], prefix=True)
    run(env, body)


def test_find_refs_with_filter(env):
    async def body(e):
        r = await populate(e)
        vm1, vm2 = r["vm1"], r["vm2"]
        both = {vm1, vm2}
        f, lit = (lambda name: ["field", name]), (lambda value: ["literal", value])
        cases = [
            (["true"], both),
            (["false"], set()),
            (["not", ["true"]], set()),
            (["not", ["false"]], both),
            (["eq", f("name_label"), lit("vm one")], {vm1}),
            (["eq", lit("vm two"), f("name_label")], {vm2}),            # literal first
            (["eq", f("name_label"), lit("nobody")], set()),
            (["not", ["eq", f("name_label"), lit("vm one")]], {vm2}),
            (["and", ["eq", f("power_state"), lit("Running")],
              ["eq", f("name_label"), lit("vm one")]], {vm1}),
            (["and", ["eq", f("power_state"), lit("Running")],
              ["eq", f("name_label"), lit("vm two")]], set()),
            (["or", ["eq", f("name_label"), lit("vm one")],
              ["eq", f("name_label"), lit("vm two")]], both),
            (["or", ["false"], ["eq", f("power_state"), lit("Halted")]], {vm2}),
            # a non-string field against a string literal: compared in the state.db form
            (["eq", f("memory_static_max"), lit("1024")], {vm1}),
            (["eq", lit("2048"), f("memory_static_max")], {vm2}),
            (["eq", f("is_a_template"), lit("true")], {vm2}),
            (["eq", f("is_a_template"), lit("false")], {vm1}),
            (["eq", f("tags"), lit("('a' 'b')")], {vm1}),
            (["eq", f("tags"), lit("()")], {vm2}),
            (["eq", f("domid"), lit("-1")], both),
            # typed literals against typed fields
            (["eq", f("memory_static_max"), lit(2048)], {vm2}),
            (["eq", f("is_a_template"), lit(True)], {vm2}),
            # refs
            (["eq", f("resident_on"), lit(r["host"])], {vm1}),
            (["eq", f("resident_on"), lit(NULL)], {vm2}),
            # field against field, literal against literal
            (["eq", f("name_label"), f("name_description")], {vm2}),
            (["eq", lit("x"), lit("x")], both),
            (["eq", lit("x"), lit("y")], set()),
        ]
        for expr, expected in cases:
            assert set(e.ops.find_refs_with_filter("VM", expr)) == expected, expr
            records = e.ops.read_records_where("VM", expr)
            assert set(records) == expected, expr
            for ref, record in records.items():
                assert record == e.ops.read_record("VM", ref)
        # the same on another class
        assert e.ops.find_refs_with_filter(
            "VBD", ["eq", ["field", "VM"], ["literal", vm1]]) == [r["vbd"]]
        # errors
        for bad in (["bogus"], [], "true", ["and", ["true"]], ["not"], ["true", "x"],
                    ["eq", ["field", "name_label"]], ["eq", ["x", "y"], ["literal", "a"]]):
            expect_read_error(lambda: e.ops.find_refs_with_filter("VM", bad),
                              ["INVALID_VALUE"], prefix=True)
            expect_read_error(lambda: e.ops.read_records_where("VM", bad),
                              ["INVALID_VALUE"], prefix=True)
        expect_read_error(lambda: e.ops.find_refs_with_filter(
            "VM", ["eq", ["field", "nope"], ["literal", "x"]]), ["DB_UNKNOWN_FIELD", "VM", "nope"])
        expect_read_error(lambda: e.ops.read_records_where(
            "VM", ["or", ["true"], ["eq", ["field", "nope"], ["literal", "x"]]]),
            ["DB_UNKNOWN_FIELD", "VM", "nope"])
        expect_read_error(lambda: e.ops.find_refs_with_filter("Nope", ["true"]),
                          ["DB_UNKNOWN_FIELD", "Nope"], prefix=True)
    run(env, body)


def test_read_field_where(env):
    async def body(e):
        r = await populate(e)
        ops = e.ops
        assert ops.read_field_where("VM", "power_state", "Running", "name_label") == ["vm one"]
        assert ops.read_field_where("VM", "memory_static_max", "2048", "name_label") == ["vm two"]
        assert ops.read_field_where("VM", "name_label", "nobody", "uuid") == []
        assert sorted(ops.read_field_where("VM", "domid", "-1", "name_label")) == \
            ["vm one", "vm two"]
        # the return field may be a derived set
        assert ops.read_field_where("VM", "name_label", "vm one", "VBDs") == [(r["vbd"],)]
        expect_read_error(lambda: ops.read_field_where("VM", "nope", "x", "uuid"),
                          ["DB_UNKNOWN_FIELD", "VM", "nope"])
        expect_read_error(lambda: ops.read_field_where("VM", "uuid", "x", "nope"),
                          ["DB_UNKNOWN_FIELD", "VM", "nope"])
        expect_read_error(lambda: ops.read_field_where("Nope", "uuid", "x", "uuid"),
                          ["DB_UNKNOWN_FIELD", "Nope"], prefix=True)
    run(env, body)


def test_get_by_uuid(env):
    async def body(e):
        r = await populate(e)
        ops = e.ops
        assert ops.get_by_uuid("VM", r["vm1_uuid"]) == r["vm1"]
        assert ops.get_by_uuid("host", r["host_uuid"]) == r["host"]
        # a uuid of another class, and an unknown one
        expect_read_error(lambda: ops.get_by_uuid("VM", r["host_uuid"]),
                          ["UUID_INVALID", "VM", r["host_uuid"]])
        nobody = str(uuid_mod.uuid4())
        expect_read_error(lambda: ops.get_by_uuid("VM", nobody), ["UUID_INVALID", "VM", nobody])
        expect_read_error(lambda: ops.get_by_uuid("Nope", nobody), ["DB_UNKNOWN_FIELD", "Nope"],
                          prefix=True)
        # a uuid given at creation; gone after delete
        given = str(uuid_mod.uuid4())
        sr = await e.write(lambda t: ops.create_row(t, "SR", {"uuid": given}))
        assert ops.get_by_uuid("SR", given) == sr
        await e.write(lambda t: ops.delete_row(t, "SR", sr))
        expect_read_error(lambda: ops.get_by_uuid("SR", given), ["UUID_INVALID", "SR", given])
    run(env, body)


def test_get_by_name_label(env):
    async def body(e):
        r = await populate(e)
        ops = e.ops
        assert ops.get_by_name_label("VM", "vm one") == [r["vm1"]]
        assert ops.get_by_name_label("VM", "nobody") == []
        twin = await e.write(lambda t: ops.create_row(t, "VM", {"name_label": "vm one"}))
        assert sorted(ops.get_by_name_label("VM", "vm one")) == sorted([r["vm1"], twin])
        assert ops.get_by_name_label("host", "h1") == [r["host"]]
        # VBD has no name_label
        expect_read_error(lambda: ops.get_by_name_label("VBD", "x"),
                          ["DB_UNKNOWN_FIELD", "VBD", "name_label"])
        expect_read_error(lambda: ops.get_by_name_label("Nope", "x"),
                          ["DB_UNKNOWN_FIELD", "Nope"], prefix=True)
    run(env, body)


def test_read_field_and_read_record(env):
    async def body(e):
        r = await populate(e)
        ops = e.ops
        assert ops.read_field("VM", r["vm1"], "name_label") == "vm one"
        assert ops.read_field("VM", r["vm1"], "memory_static_max") == 1024
        assert ops.read_field("VM", r["vm1"], "tags") == ("a", "b")
        assert ops.read_field("VM", r["vm1"], "other_config") == {"k": "v"}
        assert ops.read_field("VM", r["vm1"], "resident_on") == r["host"]
        # schema defaults, including the non-zero ones
        assert ops.read_field("VM", r["vm2"], "resident_on") == NULL
        assert ops.read_field("VM", r["vm1"], "domid") == -1
        assert ops.read_field("VM", r["vm1"], "HVM_shadow_multiplier") == 1.0
        assert ops.read_field("VM", r["vm1"], "snapshot_time") == schema.EPOCH
        assert ops.read_field("VBD", r["vbd"], "unpluggable") is True
        assert ops.read_field("host", r["host"], "license_server") == \
            {"address": "localhost", "port": "27000"}
        assert ops.read_field("VDI", r["vdi"], "on_boot") == "persist"
        # derived sets
        assert ops.read_field("VM", r["vm1"], "VBDs") == (r["vbd"],)
        assert ops.read_field("VM", r["vm2"], "VBDs") == ()
        assert ops.read_field("host", r["host"], "resident_VMs") == (r["vm1"],)
        assert ops.read_field("SR", r["sr"], "VDIs") == (r["vdi"],)
        assert ops.read_field("VDI", r["vdi"], "VBDs") == (r["vbd"],)
        record = ops.read_record("VM", r["vm1"])
        assert set(record) == set(schema.CLASSES["VM"].fields)
        assert record["name_label"] == "vm one" and record["VBDs"] == (r["vbd"],)
        assert record["uuid"] == r["vm1_uuid"]
        for name, field in schema.CLASSES["VM"].fields.items():
            assert record[name] == ops.read_field("VM", r["vm1"], name), name
        # errors
        gone = missing_ref()
        expect_read_error(lambda: ops.read_field("VM", gone, "name_label"),
                          ["HANDLE_INVALID", "VM", gone])
        expect_read_error(lambda: ops.read_field("VM", r["host"], "name_label"),
                          ["HANDLE_INVALID", "VM", r["host"]])
        expect_read_error(lambda: ops.read_record("VM", gone), ["HANDLE_INVALID", "VM", gone])
        expect_read_error(lambda: ops.read_record("VM", r["host"]),
                          ["HANDLE_INVALID", "VM", r["host"]])
        expect_read_error(lambda: ops.read_field("VM", r["vm1"], "nope"),
                          ["DB_UNKNOWN_FIELD", "VM", "nope"])
        expect_read_error(lambda: ops.read_field("Nope", r["vm1"], "name_label"),
                          ["DB_UNKNOWN_FIELD", "Nope"], prefix=True)
        for bad_ref in (42, None, ["x"]):      # not a string, or not even hashable
            expect_read_error(lambda: ops.read_field("VM", bad_ref, "name_label"),
                              ["HANDLE_INVALID", "VM", str(bad_ref)])
        expect_read_error(lambda: ops.read_record("Nope", r["vm1"]),
                          ["DB_UNKNOWN_FIELD", "Nope"], prefix=True)
        # batched reads carry errors as error lists
        assert ops.read_fields([["VM", r["vm1"], "name_label"], ["VM", gone, "uuid"],
                                ["VM", r["vm1"], "nope"]]) == [
            "vm one", {"error": ["HANDLE_INVALID", "VM", gone]},
            {"error": ["DB_UNKNOWN_FIELD", "VM", "nope"]}]
    run(env, body)


# -- writes -------------------------------------------------------------------------------------

def test_create_row(env):
    async def body(e):
        ops = e.ops
        g0 = e.store.generation
        ref = await e.write(lambda t: ops.create_row(t, "VM", {"name_label": "a"}))
        assert ref.startswith("OpaqueRef:") and ref != NULL
        assert e.store.generation == g0 + 1
        record = ops.read_record("VM", ref)
        uuid_mod.UUID(record["uuid"])                     # a uuid was made
        defaults = schema.default_record("VM")
        for name, value in defaults.items():
            if name not in ("uuid", "name_label"):
                assert record[name] == value, name
        # an explicit ref and uuid
        given_ref, given_uuid = missing_ref(), str(uuid_mod.uuid4())
        values = {"name_label": "b", "uuid": given_uuid, "tags": ["x"],
                  "VCPUs_params": {"weight": "256"}, "memory_static_max": 4 << 30}
        got = await e.write(lambda t: ops.create_row(t, "VM", values, given_ref))
        assert got == given_ref
        assert ops.get_by_uuid("VM", given_uuid) == given_ref
        assert ops.read_field("VM", given_ref, "tags") == ("x",)
        # the same ref again with equal values: a no-op (no bump, no event)
        g1 = e.store.generation
        token = e.token()
        before = await state(e)
        assert await e.write(lambda t: ops.create_row(t, "VM", dict(values), given_ref)) \
            == given_ref
        assert e.store.generation == g1
        assert await state(e) == before
        assert (await e.events_since(["*"], token, 0))["events"] == []
        # same ref, different values
        await expect_write_error(
            e, lambda t: ops.create_row(t, "VM", dict(values, name_label="c"), given_ref),
            ["INTEGRITY_VIOLATION", "VM", given_ref])
        # same ref in another class
        await expect_write_error(
            e, lambda t: ops.create_row(t, "SR", {"uuid": str(uuid_mod.uuid4())}, given_ref),
            ["INTEGRITY_VIOLATION", "SR", given_ref])
        # a duplicate uuid, in the same class and in another
        await expect_write_error(
            e, lambda t: ops.create_row(t, "VM", {"uuid": given_uuid}),
            ["UNIQUENESS_CONSTRAINT_VIOLATION", "VM", "uuid", given_uuid])
        await expect_write_error(
            e, lambda t: ops.create_row(t, "SR", {"uuid": given_uuid}),
            ["UNIQUENESS_CONSTRAINT_VIOLATION", "SR", "uuid", given_uuid])
        # refs that are not refs
        for bad in ("junk", NULL):
            await expect_write_error(e, lambda t: ops.create_row(t, "SR", {}, bad),
                                     ["INVALID_VALUE", "ref", bad])
        # values: unknown field, derived field, wrong type, not a dict
        await expect_write_error(e, lambda t: ops.create_row(t, "VM", {"nope": 1}),
                                 ["DB_UNKNOWN_FIELD", "VM", "nope"])
        await expect_write_error(e, lambda t: ops.create_row(t, "VM", {"VBDs": []}),
                                 ["FIELD_TYPE_ERROR", "VBDs"])
        await expect_write_error(e, lambda t: ops.create_row(t, "VM", {"user_version": "1"}),
                                 ["FIELD_TYPE_ERROR", "user_version"])
        await expect_write_error(e, lambda t: ops.create_row(t, "VM", ["name_label"]),
                                 ["FIELD_TYPE_ERROR"], prefix=True)
        await expect_write_error(e, lambda t: ops.create_row(t, "Nope", {}),
                                 ["DB_UNKNOWN_FIELD", "Nope"], prefix=True)
    run(env, body)


def test_delete_row(env):
    async def body(e):
        r = await populate(e)
        ops = e.ops
        g0 = e.store.generation
        await e.write(lambda t: ops.delete_row(t, "VM", r["vm2"]))
        assert e.store.generation == g0 + 1
        assert r["vm2"] not in ops.read_refs("VM")
        assert not ops.is_valid_ref(r["vm2"])
        stamp, _created, ref, snapshot = e.store.tables["VM"].deleted[-1]
        assert (stamp, ref, snapshot["name_label"]) == (g0, r["vm2"], "vm two")
        vm2_uuid = snapshot["uuid"]
        expect_read_error(lambda: ops.get_by_uuid("VM", vm2_uuid),
                          ["UUID_INVALID", "VM", vm2_uuid])
        # the uuid is free again
        again = await e.write(lambda t: ops.create_row(t, "SR", {"uuid": vm2_uuid}))
        assert ops.get_by_uuid("SR", vm2_uuid) == again
        # errors: deleted, never there, another class
        await expect_write_error(e, lambda t: ops.delete_row(t, "VM", r["vm2"]),
                                 ["HANDLE_INVALID", "VM", r["vm2"]])
        gone = missing_ref()
        await expect_write_error(e, lambda t: ops.delete_row(t, "VM", gone),
                                 ["HANDLE_INVALID", "VM", gone])
        await expect_write_error(e, lambda t: ops.delete_row(t, "VM", r["host"]),
                                 ["HANDLE_INVALID", "VM", r["host"]])
        await expect_write_error(e, lambda t: ops.delete_row(t, "Nope", r["host"]),
                                 ["DB_UNKNOWN_FIELD", "Nope"], prefix=True)
    run(env, body)


def test_write_field(env):
    async def body(e):
        r = await populate(e)
        ops, vm = e.ops, r["vm1"]
        g0 = e.store.generation
        assert await e.write(lambda t: ops.write_field(t, "VM", vm, "name_label", "new")) is True
        assert ops.read_field("VM", vm, "name_label") == "new"
        assert e.store.generation == g0 + 1
        assert e.store.tables["VM"].rows[vm].modified == g0
        # unchanged: False, no bump
        assert await e.write(lambda t: ops.write_field(t, "VM", vm, "name_label", "new")) is False
        assert e.store.generation == g0 + 1
        # values are normalised: a list for a set, duplicates dropped
        assert await e.write(lambda t: ops.write_field(t, "VM", vm, "tags", ["z", "y", "z"]))
        assert ops.read_field("VM", vm, "tags") == ("z", "y")
        assert not await e.write(lambda t: ops.write_field(t, "VM", vm, "tags", ("z", "y")))
        # a naive datetime is taken as UTC
        naive = datetime.datetime(2024, 5, 6, 7, 8, 9)
        assert await e.write(lambda t: ops.write_field(t, "VM", vm, "snapshot_time", naive))
        assert ops.read_field("VM", vm, "snapshot_time") == naive.replace(tzinfo=UTC)
        # other types
        writes = {"memory_static_max": 1 << 40, "HVM_shadow_multiplier": 2.5, "is_a_template": True,
                  "power_state": "Paused", "affinity": r["host"], "platform": {"acpi": "1"},
                  "name_description": "spaces, 'quotes', \"dq\", 100% and\nnewlines\t\r"}
        for name, value in writes.items():
            assert await e.write(lambda t: ops.write_field(t, "VM", vm, name, value)) is True
            assert ops.read_field("VM", vm, name) == value
        # an int is a float's value too
        assert await e.write(lambda t: ops.write_field(t, "VM", vm, "HVM_shadow_multiplier", 3))
        assert ops.read_field("VM", vm, "HVM_shadow_multiplier") == 3.0
        # refs are not checked on write
        dangling = missing_ref()
        assert await e.write(lambda t: ops.write_field(t, "VM", vm, "affinity", dangling))
        # a new uuid moves the index
        old_uuid, new_uuid = r["vm1_uuid"], str(uuid_mod.uuid4())
        assert await e.write(lambda t: ops.write_field(t, "VM", vm, "uuid", new_uuid))
        assert ops.get_by_uuid("VM", new_uuid) == vm
        expect_read_error(lambda: ops.get_by_uuid("VM", old_uuid), ["UUID_INVALID", "VM", old_uuid])
        # another row's uuid
        await expect_write_error(
            e, lambda t: ops.write_field(t, "VM", vm, "uuid", r["host_uuid"]),
            ["UNIQUENESS_CONSTRAINT_VIOLATION", "VM", "uuid", r["host_uuid"]])
    run(env, body)


def test_process_structured_field(env):
    async def body(e):
        r = await populate(e)
        ops, vm = e.ops, r["vm1"]

        def psf(field, op, key, value=None):
            return e.write(lambda t: ops.process_structured_field(t, "VM", vm, field, op, key,
                                                                  value))
        g = e.store.generation
        # sets
        assert await psf("tags", "add_set", "c") is True
        assert ops.read_field("VM", vm, "tags") == ("a", "b", "c")
        assert e.store.generation == g + 1
        assert await psf("tags", "add_set", "c") is False          # there: nothing
        assert e.store.generation == g + 1
        assert await psf("tags", "remove_set", "a") is True
        assert ops.read_field("VM", vm, "tags") == ("b", "c")
        assert await psf("tags", "remove_set", "a") is False       # not there: nothing
        assert e.store.generation == g + 2
        # maps
        assert await psf("other_config", "add_map", "k2", "v2") is True
        assert ops.read_field("VM", vm, "other_config") == {"k": "v", "k2": "v2"}
        assert await psf("other_config", "add_map", "k2", "v2") is False   # same value
        assert e.store.generation == g + 3
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "other_config", "add_map",
                                                      "k2", "other"),
            ["MAP_DUPLICATE_KEY", "VM", "other_config", vm, "k2"])
        assert await psf("other_config", "remove_map", "k") is True
        assert ops.read_field("VM", vm, "other_config") == {"k2": "v2"}
        assert await psf("other_config", "remove_map", "k") is False
        assert e.store.generation == g + 4
        # a set of enums and a map of strings on another class
        assert await e.write(lambda t: ops.process_structured_field(
            t, "SR", r["sr"], "sm_config", "add_map", "key with space", "v'q"))
        assert ops.read_field("SR", r["sr"], "sm_config") == {"key with space": "v'q"}
        # errors
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "other_config", "add_map",
                                                      "", "x"),
            ["INVALID_VALUE", "other_config", "empty map key"])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "tags", "add_map", "k", "v"),
            ["FIELD_TYPE_ERROR", "tags"])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "other_config", "add_set",
                                                      "x"),
            ["FIELD_TYPE_ERROR", "other_config"])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "name_label", "add_set", "x"),
            ["FIELD_TYPE_ERROR", "name_label"])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "VBDs", "add_set", r["vbd"]),
            ["FIELD_TYPE_ERROR", "VBDs"])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "tags", "add_set", 5),
            ["FIELD_TYPE_ERROR", "tags"])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "tags", "add_set", "\ud800"),
            ["INVALID_VALUE", "tags", repr("\ud800")])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "tags", "explode", "x"),
            ["INVALID_VALUE", "operation", "explode"])
        gone = missing_ref()
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", gone, "tags", "add_set", "x"),
            ["HANDLE_INVALID", "VM", gone])
        await expect_write_error(
            e, lambda t: ops.process_structured_field(t, "VM", vm, "nope", "add_set", "x"),
            ["DB_UNKNOWN_FIELD", "VM", "nope"])
    run(env, body)


# -- every error leaves no trace ----------------------------------------------------------------

def _error_cases():
    """(name, fn(ops, refs) -> txn function, expected description, prefix match)."""
    gone = "OpaqueRef:00000000-0000-0000-0000-00000000dead"
    return [
        ("write missing row", lambda o, r: lambda t: o.write_field(t, "VM", gone, "name_label", "x"),
         ["HANDLE_INVALID", "VM", gone], False),
        ("write ref of another class", lambda o, r: lambda t: o.write_field(
            t, "VM", r["host"], "name_label", "x"), ["HANDLE_INVALID", "VM", "{host}"], False),
        ("delete missing row", lambda o, r: lambda t: o.delete_row(t, "VBD", gone),
         ["HANDLE_INVALID", "VBD", gone], False),
        ("delete ref of another class", lambda o, r: lambda t: o.delete_row(t, "VBD", r["vm1"]),
         ["HANDLE_INVALID", "VBD", "{vm1}"], False),
        ("touch missing row", lambda o, r: lambda t: o.touch(t, "VM", gone),
         ["HANDLE_INVALID", "VM", gone], False),
        ("unknown class", lambda o, r: lambda t: o.write_field(t, "Nope", r["vm1"], "x", "y"),
         ["DB_UNKNOWN_FIELD", "Nope"], True),
        ("unknown field", lambda o, r: lambda t: o.write_field(t, "VM", r["vm1"], "nope", "y"),
         ["DB_UNKNOWN_FIELD", "VM", "nope"], False),
        ("unknown field in create", lambda o, r: lambda t: o.create_row(
            t, "host", {"name_label": "x", "nope": "y"}), ["DB_UNKNOWN_FIELD", "host", "nope"],
         False),
        ("string for an int", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "memory_static_max", "12"), ["FIELD_TYPE_ERROR", "memory_static_max"],
         False),
        ("bool for an int", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "user_version", True), ["FIELD_TYPE_ERROR", "user_version"], False),
        ("int for a bool", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "is_a_template", 1), ["FIELD_TYPE_ERROR", "is_a_template"], False),
        ("string for a float", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "HVM_shadow_multiplier", "1.0"),
         ["FIELD_TYPE_ERROR", "HVM_shadow_multiplier"], False),
        ("string for a datetime", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "snapshot_time", "20240101T00:00:00Z"),
         ["FIELD_TYPE_ERROR", "snapshot_time"], False),
        ("string for a set", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "tags", "abc"), ["FIELD_TYPE_ERROR", "tags"], False),
        ("list for a map", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "other_config", [["k", "v"]]), ["FIELD_TYPE_ERROR", "other_config"],
         False),
        ("int in a map", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "other_config", {"k": 1}), ["FIELD_TYPE_ERROR", "other_config"],
         False),
        ("int for a string", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "name_label", 5), ["FIELD_TYPE_ERROR", "name_label"], False),
        ("int for a ref", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "affinity", 5), ["FIELD_TYPE_ERROR", "affinity"], False),
        ("write a derived set", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "VBDs", []), ["FIELD_TYPE_ERROR", "VBDs"], False),
        ("surrogate in a string", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "name_label", "bad\ud800"),
         ["INVALID_VALUE", "name_label", repr("bad\ud800")], False),
        ("control char in a string", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "name_label", "bad\x01"),
         ["INVALID_VALUE", "name_label", repr("bad\x01")], False),
        ("surrogate in create", lambda o, r: lambda t: o.create_row(
            t, "SR", {"name_label": "\udfff"}), ["INVALID_VALUE", "name_label", repr("\udfff")],
         False),
        ("surrogate in a map value", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "other_config", {"k": "\ud800"}),
         ["INVALID_VALUE", "other_config", repr("\ud800")], False),
        ("empty map key", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "other_config", {"": "x"}),
         ["INVALID_VALUE", "other_config", "empty map key"], False),
        ("empty map key in create", lambda o, r: lambda t: o.create_row(
            t, "VM", {"platform": {"": "x"}}), ["INVALID_VALUE", "platform", "empty map key"],
         False),
        ("enum value outside the enum", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "power_state", "Flying"),
         ["INVALID_VALUE", "power_state", repr("Flying")], False),
        ("int outside int64", lambda o, r: lambda t: o.write_field(
            t, "VM", r["vm1"], "user_version", 1 << 63),
         ["INVALID_VALUE", "user_version", repr(1 << 63)], False),
        ("duplicate uuid", lambda o, r: lambda t: o.create_row(t, "SR", {"uuid": r["vm1_uuid"]}),
         ["UNIQUENESS_CONSTRAINT_VIOLATION", "SR", "uuid", "{vm1_uuid}"], False),
        ("integrity violation", lambda o, r: lambda t: o.create_row(
            t, "VM", {"name_label": "other"}, r["vm1"]), ["INTEGRITY_VIOLATION", "VM", "{vm1}"],
         False),
        ("map duplicate key", lambda o, r: lambda t: o.process_structured_field(
            t, "VM", r["vm1"], "other_config", "add_map", "k", "not v"),
         ["MAP_DUPLICATE_KEY", "VM", "other_config", "{vm1}", "k"], False),
    ]


@pytest.mark.parametrize("name,make,description,prefix", _error_cases(),
                         ids=[case[0] for case in _error_cases()])
def test_error_changes_nothing(env, name, make, description, prefix):
    async def body(e):
        r = await populate(e)
        expected = [item.format(**r) for item in description]
        await expect_write_error(e, make(e.ops, r), expected, prefix)
        # the same call after good work in the same round: the good work stays, the bad
        # call still changes nothing
        good = e.write(lambda t: e.ops.write_field(t, "SR", r["sr"], "name_label", "renamed"))
        bad = e.write(make(e.ops, r))
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert results[0] is True
        assert isinstance(results[1], XapiError) and \
            (results[1].description[:len(expected)] if prefix else results[1].description) \
            == expected
        assert e.ops.read_field("SR", r["sr"], "name_label") == "renamed"
    run(env, body)


def test_failing_function_takes_back_its_earlier_changes(env):
    """A write function that makes several changes and then fails leaves nothing behind: rows,
    derived sets, uuid index, deletion queue and generation as before."""
    async def body(e):
        r = await populate(e)
        ops = e.ops
        before = await state(e)

        def several(t):
            vm = ops.create_row(t, "VM", {"name_label": "temp", "resident_on": r["host"]})
            ops.create_row(t, "VBD", {"VM": vm})
            ops.write_field(t, "VBD", r["vbd"], "VM", vm)
            ops.write_field(t, "VM", r["vm1"], "uuid", str(uuid_mod.uuid4()))
            ops.process_structured_field(t, "VM", r["vm1"], "tags", "add_set", "zzz")
            ops.delete_row(t, "VM", r["vm2"])
            ops.touch(t, "host", r["host"])
            ops.write_field(t, "VM", vm, "memory_static_max", "oops")
        await expect_write_error(e, several, ["FIELD_TYPE_ERROR", "memory_static_max"])
        assert await state(e) == before
        assert ops.read_field("VM", r["vm1"], "VBDs") == (r["vbd"],)
        assert ops.read_field("host", r["host"], "resident_VMs") == (r["vm1"],)
        # a non-XapiError exception is reported and rolled back too
        def crash(t):
            ops.create_row(t, "SR", {"name_label": "half"})
            raise RuntimeError("boom")
        with pytest.raises(XapiError) as info:
            await e.write(crash)
        assert info.value.code == "INTERNAL_ERROR"
        assert await state(e) == before
        # ... also in a round shared with good writes, which go through (and are durable)
        results = await asyncio.gather(
            e.write(lambda t: ops.write_field(t, "SR", r["sr"], "name_label", "before")),
            e.write(crash),
            e.write(lambda t: ops.write_field(t, "host", r["host"], "hostname", "after")),
            return_exceptions=True)
        assert results[0] is True and results[2] is True
        assert isinstance(results[1], XapiError) and results[1].code == "INTERNAL_ERROR"
        assert e.store.generation == before[0] + 2
        assert e.ops.get_by_name_label("SR", "half") == []
        # and the writer still works afterwards
        assert await e.write(lambda t: ops.write_field(t, "VM", r["vm1"], "name_label", "ok"))
    run(env, body)
