"""Filter expressions of find_refs_with_filter / read_records_where, as they travel on the bus:

    ["true"]  ["false"]  ["not", e]  ["and", e1, e2]  ["or", e1, e2]  ["eq", v1, v2]
    v = ["field", name] | ["literal", value]

A literal compared with a field of another type is compared in the state.db string form, so
``["eq", ["field", "power_state"], ["literal", "Running"]]`` and integer fields given as
strings both work, as in xapi where every cell is a string.
"""

from common import schema
from common.errors import XapiError


def compile_filter(cls, expr):
    """Check ``expr`` against ``cls`` once; returns a predicate over a record."""
    if not isinstance(expr, (list, tuple)) or not expr:
        raise XapiError("INVALID_VALUE", "filter", repr(expr))
    op, *args = expr
    if op == "true" and not args:
        return lambda record: True
    if op == "false" and not args:
        return lambda record: False
    if op == "not" and len(args) == 1:
        inner = compile_filter(cls, args[0])
        return lambda record: not inner(record)
    if op in ("and", "or") and len(args) == 2:
        left, right = compile_filter(cls, args[0]), compile_filter(cls, args[1])
        if op == "and":
            return lambda record: left(record) and right(record)
        return lambda record: left(record) or right(record)
    if op == "eq" and len(args) == 2:
        return _compile_eq(cls, args[0], args[1])
    raise XapiError("INVALID_VALUE", "filter", repr(expr))


def _operand(cls, value):
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == "field":
        name = value[1]
        if name not in cls.fields:
            raise XapiError("DB_UNKNOWN_FIELD", cls.name, str(name))
        return "field", cls.fields[name]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == "literal":
        return "literal", value[1]
    raise XapiError("INVALID_VALUE", "filter operand", repr(value))


def _compile_eq(cls, a, b):
    kind_a, a = _operand(cls, a)
    kind_b, b = _operand(cls, b)
    if kind_a == "literal" and kind_b == "literal":
        return lambda record, same=(a == b): same
    if kind_a == "literal":
        kind_a, a, kind_b, b = kind_b, b, kind_a, a
    if kind_b == "field":
        fa, fb = a, b
        return lambda record: record.get(fa.name) == record.get(fb.name)
    field, literal = a, b
    if isinstance(literal, str) and field.type not in ("string", "enum", "ref"):
        return lambda record: _as_string(field, record.get(field.name)) == literal
    return lambda record: record.get(field.name) == literal


def _as_string(field, value):
    try:
        return schema.to_string(field, value)
    except (TypeError, ValueError):
        return None
