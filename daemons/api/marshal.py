"""Typed values to and from the two XenAPI wires, driven by the schema's types.

A type is a tuple: ``("string",)``, ``("int",)``, ``("float",)``, ``("bool",)``,
``("datetime",)``, ``("enum", values)``, ``("ref", class)``, ``("set", item type)``,
``("map", value type)`` (keys are strings), ``("record", class)``, ``("message",)`` (a message
record) and ``("raw",)`` (already wire-neutral: str, bool, small int, list, dict).

Wire conventions (xen-api doc/content/xen-api/wire-protocol.md): on XML-RPC an int travels as
a decimal string and a datetime as ``dateTime.iso8601`` (``20250319T04:16:24Z``); on JSON-RPC an
int is a JSON number and a datetime a string. Sets are arrays, maps structs / objects, refs,
enums and strings are strings. Incoming ints are taken as numbers or decimal strings on both
wires; anything of the wrong shape is ``FIELD_TYPE_ERROR [name]``.
"""

import math
import xmlrpc.client
from datetime import datetime

from common import schema
from common.errors import XapiError

XML, JSON = "xml", "json"

STRING, INT, FLOAT, BOOL, DATETIME = ("string",), ("int",), ("float",), ("bool",), ("datetime",)
RAW, MESSAGE = ("raw",), ("message",)
VOID = ("void",)


def ref(cls_name):
    return ("ref", cls_name)


def set_of(item):
    return ("set", item)


def map_of(value):
    return ("map", value)


def record(cls_name):
    return ("record", cls_name)


def field_type(field):
    """The wire type of a schema field."""
    t = field.type
    if t in ("string", "int", "float", "bool", "datetime"):
        return (t,)
    if t == "enum":
        return ("enum", field.enum_values)
    if t == "ref":
        return ref(field.ref_class)
    return (t, _item_type(field))


def _item_type(field):
    if field.item_type == "ref":
        return ref(field.ref_class)
    if field.item_type == "enum":
        return ("enum", field.enum_values)
    return STRING


# The message record (messages live beside the DB, not in the schema).
MESSAGE_FIELDS = {"uuid": STRING, "name": STRING, "priority": INT, "cls": STRING,
                  "obj_uuid": STRING, "timestamp": DATETIME, "body": STRING}


# -- to the wire ---------------------------------------------------------------------------------

def to_wire(t, value, wire):
    kind = t[0]
    if kind in ("string", "ref", "enum"):
        return "" if value is None else str(value)
    if kind == "void":
        return ""
    if kind == "int":
        value = int(value)
        return str(value) if wire == XML else value
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):     # neither wire has NaN or infinities
            value = 0.0
        return value
    if kind == "bool":
        return bool(value)
    if kind == "datetime":
        text = value if isinstance(value, str) else schema.format_datetime(value)
        return xmlrpc.client.DateTime(text) if wire == XML else text
    if kind == "set":
        return [to_wire(t[1], item, wire) for item in value or ()]
    if kind == "map":
        return {str(k): to_wire(t[1], v, wire) for k, v in (value or {}).items()}
    if kind == "record":
        return record_to_wire(t[1], value, wire)
    if kind == "message":
        return {name: to_wire(ft, value[name], wire)
                for name, ft in MESSAGE_FIELDS.items() if name in value}
    if kind == "event":
        return event_to_wire(value, wire)
    if kind == "event_batch":
        return {"events": [event_to_wire(e, wire) for e in value["events"]],
                "valid_ref_counts": {str(k): int(v)
                                     for k, v in value["valid_ref_counts"].items()},
                "token": str(value["token"])}
    if kind == "raw":
        return value
    raise TypeError(f"unknown wire type {t!r}")


EVENT, EVENT_BATCH = ("event",), ("event_batch",)


def event_to_wire(event, wire):
    """An event of event.from / event.next: id and timestamp as xapi sends them (strings),
    the snapshot as a record of its class (left out when there is none, as for a deleted
    message)."""
    cls_name = str(event["class"])
    out = {"id": str(event["id"]), "timestamp": str(event["timestamp"]), "class": cls_name,
           "operation": str(event["operation"]), "ref": str(event["ref"])}
    snapshot = event.get("snapshot")
    if snapshot is not None:
        if cls_name == "message":
            out["snapshot"] = to_wire(MESSAGE, snapshot, wire)
        else:
            out["snapshot"] = record_to_wire(cls_name, snapshot, wire)
    return out


_RECORD_FIELDS = {}     # class name -> ((field, wire type, default), ...): made once per class


def record_fields(cls_name):
    fields = _RECORD_FIELDS.get(cls_name)
    if fields is None:
        cls = schema.get_class(cls_name)
        fields = tuple((name, field_type(fld), fld.default) for name, fld in cls.fields.items())
        _RECORD_FIELDS[cls_name] = fields
    return fields


def record_to_wire(cls_name, values, wire):
    """A record of the schema class ``cls_name``: every field the schema knows, in its order."""
    get = values.get
    return {name: to_wire(ftype, get(name, default), wire)
            for name, ftype, default in record_fields(cls_name)}


# -- from the wire -------------------------------------------------------------------------------

def _type_error(name):
    return XapiError("FIELD_TYPE_ERROR", name)


def from_wire(t, value, name):
    """The typed value of a parameter ``name`` of type ``t`` (either wire)."""
    kind = t[0]
    if kind in ("string", "ref", "enum"):
        if not isinstance(value, str):
            raise _type_error(name)
        return value
    if kind == "int":
        if isinstance(value, bool):
            raise _type_error(name)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                raise _type_error(name) from None
        raise _type_error(name)
    if kind == "float":
        if isinstance(value, bool):
            raise _type_error(name)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _type_error(name) from None
        raise _type_error(name)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(name)
        return value
    if kind == "datetime":
        if isinstance(value, xmlrpc.client.DateTime):
            value = value.value
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise _type_error(name)
        try:
            return schema.parse_datetime(value.strip())
        except ValueError:
            raise _type_error(name) from None
    if kind == "set":
        if not isinstance(value, (list, tuple)):
            raise _type_error(name)
        return [from_wire(t[1], item, name) for item in value]
    if kind == "map":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(name)
        return {k: from_wire(t[1], v, name) for k, v in value.items()}
    raise TypeError(f"type {t!r} is not a parameter type")
