"""xapi-api's marshalling (marshal.py), its two wires (xmlrpc_wire.py, jsonrpc_wire.py) and the
method table generated from the schema (methods.py)."""

import json
import xmlrpc.client
from datetime import datetime, timezone

import pytest

from common import schema
from common.errors import XapiError
from daemons.api import jsonrpc_wire, xmlrpc_wire
from daemons.api import marshal as m
from daemons.api.events import Events
from daemons.api.methods import EMERGENCY_CALLS, build_table
from daemons.api.xmlrpc_wire import WireError

WHEN = datetime(2025, 3, 19, 4, 16, 24, tzinfo=timezone.utc)


# -- marshal -------------------------------------------------------------------------------------

def test_ints_are_strings_on_xmlrpc_and_numbers_on_jsonrpc():
    assert m.to_wire(m.INT, 2 ** 40, m.XML) == str(2 ** 40)
    assert m.to_wire(m.INT, 2 ** 40, m.JSON) == 2 ** 40
    assert m.to_wire(m.set_of(m.INT), [1, -2], m.XML) == ["1", "-2"]


def test_dates_are_xapi_form_on_both_wires():
    on_xml = m.to_wire(m.DATETIME, WHEN, m.XML)
    assert isinstance(on_xml, xmlrpc.client.DateTime) and on_xml.value == "20250319T04:16:24Z"
    assert m.to_wire(m.DATETIME, WHEN, m.JSON) == "20250319T04:16:24Z"
    body = xmlrpc_wire.success(on_xml).decode()
    assert "<dateTime.iso8601>20250319T04:16:24Z</dateTime.iso8601>" in body


def test_void_and_refs_and_maps():
    assert m.to_wire(m.VOID, None, m.XML) == ""
    assert m.to_wire(m.map_of(m.STRING), {"a": "b"}, m.JSON) == {"a": "b"}
    assert m.to_wire(m.FLOAT, float("nan"), m.JSON) == 0.0


def test_a_record_has_every_field_of_its_class_in_wire_form():
    vm = schema.CLASSES["VM"]
    values = schema.default_record(vm)
    values.update(name_label="x", memory_static_max=2 ** 33, VBDs=("OpaqueRef:a",))
    out = m.to_wire(m.record("VM"), values, m.XML)
    assert set(out) == set(vm.fields)
    assert out["memory_static_max"] == str(2 ** 33)
    assert out["VBDs"] == ["OpaqueRef:a"] and out["domid"] == "-1"
    assert isinstance(out["snapshot_time"], xmlrpc.client.DateTime)
    # and the whole record encodes (no None, no int over 32 bits left)
    assert b"<name>name_label</name>" in xmlrpc_wire.success(out)


@pytest.mark.parametrize("t,value,expected", [
    (m.INT, "42", 42), (m.INT, 42, 42), (m.INT, " -7", -7), (m.FLOAT, "1.5", 1.5),
    (m.FLOAT, 2, 2.0), (m.BOOL, True, True), (m.STRING, "x", "x"),
    (m.set_of(m.STRING), ["a", "b"], ["a", "b"]), (m.map_of(m.STRING), {"k": "v"}, {"k": "v"}),
    (m.DATETIME, xmlrpc.client.DateTime("20250319T04:16:24Z"), WHEN),
    (m.DATETIME, "2025-03-19T04:16:24Z", WHEN),
])
def test_parameters_from_the_wire(t, value, expected):
    assert m.from_wire(t, value, "p") == expected


@pytest.mark.parametrize("t,value", [
    (m.INT, "4x"), (m.INT, True), (m.INT, None), (m.INT, 1.5), (m.FLOAT, "nope"),
    (m.BOOL, "true"), (m.STRING, 5), (m.STRING, None), (m.set_of(m.STRING), "a"),
    (m.set_of(m.STRING), [1]), (m.map_of(m.STRING), ["k"]), (m.map_of(m.STRING), {"k": 1}),
    (m.DATETIME, "yesterday"), (m.DATETIME, 5), (m.ref("VM"), 3),
])
def test_wrong_types_are_field_type_errors_naming_the_parameter(t, value):
    with pytest.raises(XapiError) as err:
        m.from_wire(t, value, "the_param")
    assert err.value.description == ["FIELD_TYPE_ERROR", "the_param"]


def test_events_marshal_their_snapshot_by_class():
    event = {"id": "12", "timestamp": "1.5", "class": "vm", "operation": "mod",
             "ref": "OpaqueRef:a", "snapshot": {"name_label": "n", "domid": 3}}
    out = m.to_wire(m.EVENT, event, m.XML)
    assert out["class"] == "vm" and out["snapshot"]["domid"] == "3"
    gone = m.to_wire(m.EVENT, dict(event, operation="del", snapshot=None), m.XML)
    assert "snapshot" not in gone
    msg = {"id": "1", "timestamp": "1.0", "class": "message", "operation": "add", "ref": "r",
           "snapshot": {"uuid": "u", "name": "N", "priority": 3, "cls": "Host",
                        "obj_uuid": "o", "timestamp": WHEN, "body": ""}}
    assert m.to_wire(m.EVENT, msg, m.JSON)["snapshot"]["priority"] == 3


# -- XML-RPC -------------------------------------------------------------------------------------

def test_xmlrpc_request_and_replies():
    body = xmlrpc.client.dumps(("OpaqueRef:s", "5"), "VM.get_all")
    assert xmlrpc_wire.parse(body.encode()) == ("VM.get_all", ["OpaqueRef:s", "5"])
    reply, = xmlrpc.client.loads(xmlrpc_wire.success(["a"]))[0]
    assert reply == {"Status": "Success", "Value": ["a"]}
    reply, = xmlrpc.client.loads(xmlrpc_wire.failure(["HANDLE_INVALID", "VM", "x\x01"]))[0]
    assert reply == {"Status": "Failure", "ErrorDescription": ["HANDLE_INVALID", "VM", "x?"]}


@pytest.mark.parametrize("body", [
    b"", b"<methodCall>", b"not xml at all", b"<methodResponse><params/></methodResponse>",
    b"<?xml version='1.0'?><methodCall><methodName>x</methodName><params><param><value>"
    b"<int>notanint</int></value></param></params></methodCall>",
    b"\xff\xfe\x00garbage",
])
def test_malformed_xmlrpc_is_a_wire_error(body):
    with pytest.raises(WireError):
        xmlrpc_wire.parse(body)


def test_xmlrpc_nil_is_not_a_value_any_parameter_takes():
    body = b"<methodCall><methodName>VM.get_all</methodName><params><param><value><nil/>" \
           b"</value></param></params></methodCall>"
    _, params = xmlrpc_wire.parse(body)
    with pytest.raises(XapiError):
        m.from_wire(m.STRING, params[0], "session_id")


# -- JSON-RPC -------------------------------------------------------------------------------------

def test_jsonrpc_v1_and_v2_shapes():
    v1 = jsonrpc_wire.parse(json.dumps({"method": "a.b", "params": [1], "id": "x"}))
    assert (v1.method, v1.params, v1.id, v1.v2) == ("a.b", [1], "x", False)
    assert json.loads(jsonrpc_wire.success(v1, 5)) == {"result": 5, "error": None, "id": "x"}
    assert json.loads(jsonrpc_wire.failure(v1, ["E", "p"])) == \
        {"result": None, "error": ["E", "p"], "id": "x"}
    v2 = jsonrpc_wire.parse(json.dumps({"jsonrpc": "2.0", "method": "a.b", "params": [],
                                        "id": 3}))
    assert json.loads(jsonrpc_wire.success(v2, "")) == {"jsonrpc": "2.0", "result": "", "id": 3}
    assert json.loads(jsonrpc_wire.failure(v2, ["E", "p", "q"])) == {
        "jsonrpc": "2.0", "error": {"code": 1, "message": "E", "data": ["p", "q"]}, "id": 3}


@pytest.mark.parametrize("body", [
    "", "[]", "{", '{"params": [], "id": 1}', '{"method": "x", "params": {}, "id": 1}',
    '{"method": "x", "params": []}', '{"method": "x", "params": [], "id": null}',
    '{"jsonrpc": "3.0", "method": "x", "params": [], "id": 1}', "[" * 100000,
])
def test_malformed_jsonrpc_is_a_wire_error(body):
    with pytest.raises(WireError):
        jsonrpc_wire.parse(body)


# -- the method table -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table():
    return build_table(Events(api=None).methods())


def test_every_class_has_its_generated_methods(table):
    for cls in schema.CLASSES.values():
        for msg in ("get_all", "get_all_records", "get_record", "get_by_uuid"):
            assert f"{cls.name}.{msg}" in table, (cls.name, msg)
        for fld in cls.fields.values():
            assert f"{cls.name}.get_{fld.name}" in table
            writable = not fld.ro and not fld.derived
            assert (f"{cls.name}.set_{fld.name}" in table) == writable, (cls.name, fld.name)
            if fld.type == "map":
                assert (f"{cls.name}.add_to_{fld.name}" in table) == writable
                assert (f"{cls.name}.remove_from_{fld.name}" in table) == writable
            if fld.type == "set":
                assert (f"{cls.name}.add_{fld.name}" in table) == writable
        assert (f"{cls.name}.get_by_name_label" in table) == ("name_label" in cls.fields)


def test_method_shapes(table):
    assert table["VM.set_name_label"].arity == 3
    assert table["VM.add_to_other_config"].arity == 4
    assert table["VM.get_all"].arity == 1
    assert table["host.get_API_version_major"].result == m.INT
    assert table["pool.get_master"].result == m.ref("host")
    assert table["VM.get_power_state"].result[0] == "enum"
    login = table["session.login_with_password"]
    assert not login.session and login.arity == 4 and login.optional == 2
    assert "VM.set_power_state" not in table            # RO
    assert "host.set_PIFs" not in table                  # derived
    for name in ("message.create", "message.get_all_records", "message.get_since",
                 "message.destroy", "event.from", "event.inject", "event.register",
                 "event.next", "event.unregister", "event.get_current_id",
                 "task.get_all_records", "pool.is_slave", "host.is_in_emergency_mode",
                 "session.slave_local_login", "session.logout", "session.local_logout",
                 "session.get_record", "session.get_uuid"):
        assert name in table, name


def test_the_emergency_list_is_referencemd_s(table):
    assert len(EMERGENCY_CALLS) == 17
    assert {"session.slave_local_login", "pool.is_slave", "host.is_in_emergency_mode",
            "session.local_logout"} <= EMERGENCY_CALLS
    assert "session.login_with_password" not in EMERGENCY_CALLS
