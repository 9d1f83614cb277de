"""The data model as data: classes, fields, their types and their state.db string forms.

The one source of truth for xapi-db (which validates writes against it) and for the XenAPI
front (which generates its getters and setters from it). The class table itself is in
:mod:`common.schema_classes`; this module turns it into :class:`Field` and :class:`Class`
objects and holds the codecs.

Field names. The API and the bus use xapi's API names (``name_label``,
``memory_static_max``); state.db uses the column names, xapi's namespaced field names joined
by ``__`` (``name__label``, ``memory__static_max``). Each field records both.

String forms, as xapi writes them (checked in xapi-project/xen-api):

- ``ocaml/idl/ocaml_backend/gen_db_actions.ml`` (DM_to_String / String_to_DM): int
  ``Int64.to_string``; float ``Printf.sprintf "%0.18g"`` (18 significant digits, enough to
  read back the same double); bool ``string_of_bool`` (``true``/``false``); enum, ref and
  string as they are; datetime ``Date.to_string``.
- ``ocaml/libs/clock/date.ml``: a datetime is written ``%04i%02i%02iT%02i:%02i:%02iZ``
  (``19700101T00:00:00Z``, whole seconds, UTC); reading also accepts the extended form
  (``1970-01-01T00:00:00Z``), fractions, ``+hh:mm`` offsets, and no zone at all (= UTC).
- ``ocaml/database/string_marshall_helper.ml`` / ``string_unmarshall_helper.ml``: a set is
  ``SExpr.Node`` of ``SExpr.String``, a map a ``Node`` of two-element ``Node``s; unknown
  values in sets and maps of enums are dropped when read; an empty map key is refused
  (``Empty_key_in_map``).
- ``ocaml/libs/sexpr/sExpr.ml`` (``string_of``, ``escape``) and ``sExprLexer.mll``: an atom
  is written between single quotes with ``\\``, ``'`` and ``"`` each preceded by a
  backslash; a list is ``(`` items joined by one space ``)``; so ``('a' 'b')``,
  ``(('k' 'v'))``, and ``()`` for empty. Reading takes ``'...'`` or ``"..."`` atoms where a
  backslash makes the next character literal, separated by spaces, tabs, CR or LF.
- ``ocaml/database/schema.ml``: a field xapi does not persist still has a column in memory
  and is given its empty value at load; ``allowed_operations`` / ``current_operations``
  are such fields (``persist:false`` in ``datamodel_common.ml``).
"""

import re
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Mapping

from common import schema_classes
from common.errors import XapiError

SCHEMA_MAJOR_VSN = 5
SCHEMA_MINOR_VSN = 909

TYPES = ("string", "int", "float", "bool", "datetime", "enum", "ref", "set", "map")
ITEM_TYPES = ("string", "ref", "enum")
NULL_REF = "OpaqueRef:NULL"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EMPTY_MAP = MappingProxyType({})
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

# --- the model ---------------------------------------------------------------------------


class _Frozen:
    """Read-only attributes after __init__. Plain classes with __slots__ rather than frozen
    dataclasses: building ~400 fields at import is on every daemon's start-up path."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is read-only: cannot delete {name!r}")


class Field(_Frozen):
    """One field: API name (e.g. "name_label"), state.db column (e.g. "name__label"), one of
    TYPES, default, ro (no API setter: xapi's DynamicRO/StaticRO), persist (False for fields
    xapi does not persist), ref_class (the target class of a ref or a set of refs), item_type
    (element type of a set, value type of a map with string keys), enum_values (for an enum, or
    a set/map of enums), derived (one-to-many set: (other_class, other_field)), required (a ref
    whose dangling makes the GC delete the row)."""

    __slots__ = ("name", "column", "type", "default", "ro", "persist", "ref_class",
                 "item_type", "enum_values", "derived", "required")

    def __init__(self, name, column, type, default, ro, persist=True, ref_class=None,
                 item_type="string", enum_values=(), derived=None, required=False):
        init = object.__setattr__
        init(self, "name", name)
        init(self, "column", column)
        init(self, "type", type)
        init(self, "default", default)
        init(self, "ro", ro)
        init(self, "persist", persist)
        init(self, "ref_class", ref_class)
        init(self, "item_type", item_type)
        init(self, "enum_values", enum_values)
        init(self, "derived", derived)
        init(self, "required", required)

    def __repr__(self):
        return f"Field({self.name!r}, {self.type}{', ro' if self.ro else ''})"

    @property
    def is_derived(self):
        return self.derived is not None


class Class(_Frozen):
    """A class of the data model: xapi's name (e.g. "VM", "host"), its fields by API name in
    table order, and whether it persists (False for session and task)."""

    __slots__ = ("name", "fields", "persist", "_columns")

    def __init__(self, name, fields, persist=True):
        if not isinstance(fields, Mapping):
            fields = {f.name: f for f in fields}
        init = object.__setattr__
        init(self, "name", name)
        init(self, "fields", MappingProxyType(dict(fields)))
        init(self, "persist", persist)
        init(self, "_columns", MappingProxyType({f.column: f for f in self.fields.values()}))

    def __repr__(self):
        return f"Class({self.name!r}, {len(self.fields)} fields)"

    def field(self, name) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(f"class {self.name} has no field {name!r}") from None

    def by_column(self, column) -> Field:
        try:
            return self._columns[column]
        except KeyError:
            raise KeyError(f"class {self.name} has no column {column!r}") from None


def _type_default(type_, enum_values):
    return {"string": "", "int": 0, "float": 0.0, "bool": False, "datetime": EPOCH,
            "enum": enum_values[0] if enum_values else "", "ref": NULL_REF,
            "set": (), "map": EMPTY_MAP}[type_]


def _make_field(path, type_, ro, options):
    options = dict(options)
    parts = path.split("/")
    if type_ not in TYPES:
        raise ValueError(f"{path}: unknown type {type_!r}")
    enum_values = tuple(options.pop("enum", ()))
    item_type = options.pop("item", "ref" if type_ == "set" and "ref" in options else "string")
    if item_type not in ITEM_TYPES:
        raise ValueError(f"{path}: unknown item type {item_type!r}")
    default = options.pop("default", None)
    if default is None:
        default = _type_default(type_, enum_values)
    elif type_ == "map":
        default = MappingProxyType(dict(default))
    elif type_ == "set":
        default = tuple(default)
    derived = options.pop("derived", None)
    persist = options.pop("persist", True)
    return Field(name="_".join(parts), column="__".join(parts), type=type_, default=default,
                 ro=ro, persist=persist, ref_class=options.pop("ref", None),
                 item_type=item_type, enum_values=enum_values,
                 derived=tuple(derived) if derived else None,
                 required=options.pop("required", False), **options)


def _build(table):
    classes = {}
    for name, specs, persist in table:
        fields = {}
        for spec in specs:
            fld = _make_field(*spec)
            if fld.name in fields:
                raise ValueError(f"{name}.{fld.name} defined twice")
            fields[fld.name] = fld
        classes[name] = Class(name, fields, persist)
    _check_relations(classes)
    return MappingProxyType(classes)


def _check_relations(classes):
    for c in classes.values():
        for fld in c.fields.values():
            if fld.type == "ref" or (fld.type == "set" and fld.item_type == "ref"):
                if fld.ref_class not in classes:
                    raise ValueError(f"{c.name}.{fld.name} points at unknown {fld.ref_class!r}")
            if fld.derived:
                other_cls, other_field = fld.derived
                other = classes[other_cls].fields.get(other_field)
                if other is None or other.type != "ref" or other.ref_class != c.name:
                    raise ValueError(f"{c.name}.{fld.name}: {other_cls}.{other_field} "
                                     f"is not a ref to {c.name}")
            check_value(fld, fld.default)


# GC "metrics without owner": a metrics row that no owner_class.owner_field points at.
OWNER_RULES = (
    ("VM_metrics", "VM", "metrics"),
    ("VM_guest_metrics", "VM", "guest_metrics"),
    ("host_metrics", "host", "metrics"),
    ("PIF_metrics", "PIF", "metrics"),
)


def get_class(name) -> Class:
    """The class by its exact name, or case-insensitively ("vm", "vm_guest_metrics")."""
    found = CLASSES.get(name)
    if found is None and isinstance(name, str):
        found = _BY_LOWER_NAME.get(name.lower())
    if found is None:
        raise KeyError(f"no class {name!r}")
    return found


def derived_sets():
    """Every one-to-many derived set, as (class, field)."""
    return [(c, f) for c in CLASSES.values() for f in c.fields.values() if f.derived]


def required_refs():
    """Every ref whose dangling makes the GC delete the row, as (class, field)."""
    return [(c, f) for c in CLASSES.values() for f in c.fields.values() if f.required]


_MAP_TYPES = (dict, MappingProxyType)


def _fresh(value):
    return dict(value) if type(value) in _MAP_TYPES else value


def default_record(cls, persisted_only=False):
    """Every non-derived field at its default, by API name.

    Fields xapi does not persist (``allowed_operations``...) are included: they exist in
    memory and start at their default; ``persisted_only=True`` leaves them out. Maps come
    back as fresh dicts, sets as tuples.
    """
    if isinstance(cls, str):
        cls = get_class(cls)
    return {f.name: _fresh(f.default) for f in cls.fields.values()
            if not f.derived and (f.persist or not persisted_only)}


# --- S-expressions -----------------------------------------------------------------------

_SEXPR_ESCAPE = re.compile(r"""[\\'"]""")
_SEXPR_SPACE = re.compile(r"[ \t\r\n]*")
_SEXPR_ATOM = {"'": re.compile(r"'([^'\\]*(?:\\.[^'\\]*)*)'", re.S),
               '"': re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.S)}
_SEXPR_UNESCAPE = re.compile(r"\\(.)", re.S)


def sexpr_dumps(obj):
    """xapi's SExpr.string_of: a str is a quoted atom, a list or tuple a list."""
    if isinstance(obj, str):
        return "'" + _SEXPR_ESCAPE.sub(lambda m: "\\" + m.group(), obj) + "'"
    if isinstance(obj, (list, tuple)):
        return "(" + " ".join(sexpr_dumps(item) for item in obj) + ")"
    raise TypeError(f"cannot write {obj!r} as an S-expression")


def sexpr_loads(text):
    """Read one S-expression: a str for an atom, a list (of str / lists) for a list.

    Raises ValueError on anything else (unquoted atoms included: xapi never writes them and
    its set and map readers refuse them).
    """
    if not isinstance(text, str):
        raise ValueError(f"not a string: {text!r}")
    stack = [[]]
    pos = _SEXPR_SPACE.match(text).end()
    while pos < len(text):
        char = text[pos]
        if char == "(":
            stack.append([])
            pos += 1
        elif char == ")":
            if len(stack) == 1:
                raise ValueError(f"unbalanced ')' at offset {pos} in {text!r}")
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif char in _SEXPR_ATOM:
            match = _SEXPR_ATOM[char].match(text, pos)
            if match is None:
                raise ValueError(f"unterminated atom at offset {pos} in {text!r}")
            stack[-1].append(_SEXPR_UNESCAPE.sub(lambda m: m.group(1), match.group(1)))
            pos = match.end()
        else:
            raise ValueError(f"unexpected {char!r} at offset {pos} in {text!r}")
        pos = _SEXPR_SPACE.match(text, pos).end()
    if len(stack) != 1:
        raise ValueError(f"unbalanced '(' in {text!r}")
    if len(stack[0]) != 1:
        raise ValueError(f"expected one S-expression, found {len(stack[0])} in {text!r}")
    return stack[0][0]


# --- datetimes ---------------------------------------------------------------------------

_DATE_XAPI = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2}):(\d{2}):(\d{2})Z\Z")
_DATE_ISO = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})T(\d{2}):?(\d{2}):?(\d{2})(\.\d+)?"
                       r"(Z|[+-]\d{2}(?::?\d{2})?)?\Z", re.I)


def _utc(value):
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def format_datetime(value):
    """xapi's Date.to_rfc3339: ``YYYYMMDDTHH:MM:SSZ`` in UTC, whole seconds."""
    v = _utc(value)
    return (f"{v.year:04d}{v.month:02d}{v.day:02d}"
            f"T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z")


def parse_datetime(text):
    """An aware UTC datetime from xapi's form or ISO 8601 (no zone = UTC); ValueError."""
    match = _DATE_XAPI.match(text) or _DATE_ISO.match(text)
    if match is None:
        raise ValueError(f"not a datetime: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    value = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    if match.re is _DATE_ISO:
        fraction, zone = match.group(7), match.group(8)
        if fraction:
            value += timedelta(microseconds=round(float(fraction) * 1_000_000))
        if zone and zone.upper() != "Z":
            digits = zone[1:].replace(":", "")
            offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
            value -= offset if zone[0] == "+" else -offset
    return value


# --- state.db string forms ---------------------------------------------------------------


def to_string(field, value):
    """The state.db string form of a typed value of this field."""
    t = field.type
    if t in ("string", "ref", "enum"):
        return value
    if t == "int":
        return str(int(value))
    if t == "float":
        return "%.18g" % value
    if t == "bool":
        return "true" if value else "false"
    if t == "datetime":
        return format_datetime(value)
    if t == "set":
        return sexpr_dumps(list(value))
    if t == "map":
        return sexpr_dumps([[k, v] for k, v in value.items()])
    raise ValueError(f"field {field.name}: unknown type {t!r}")


def from_string(field, text):
    """The typed value of this field from its state.db string; ValueError if it is not one."""
    try:
        return _from_string(field, text)
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(f"field {field.name} ({field.type}): cannot read {text!r}: {err}") \
            from None


def _from_string(field, text):
    t = field.type
    if not isinstance(text, str):
        raise TypeError("not a string")
    if t in ("string", "ref"):
        return text
    if t == "enum":
        if text not in field.enum_values:
            raise ValueError(f"not one of {', '.join(field.enum_values)}")
        return text
    if t == "int":
        try:
            value = int(text, 10)
        except ValueError:
            value = int(text, 0)     # Int64.of_string also reads 0x, 0o, 0b
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("outside int64")
        return value
    if t == "float":
        return float(text)
    if t == "bool":
        if text not in ("true", "false"):
            raise ValueError("not true or false")
        return text == "true"
    if t == "datetime":
        return parse_datetime(text)
    parsed = sexpr_loads(text)
    if not isinstance(parsed, list):
        raise ValueError("not an S-expression list")
    enums = field.item_type == "enum"
    if t == "set":
        if not all(isinstance(item, str) for item in parsed):
            raise ValueError("a set holds atoms only")
        return tuple(item for item in parsed if not enums or item in field.enum_values)
    result = {}
    for pair in parsed:
        if not (isinstance(pair, list) and len(pair) == 2
                and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise ValueError("a map holds ('key' 'value') pairs only")
        key, value = pair
        if key not in result and (not enums or value in field.enum_values):
            result[key] = value     # the first binding wins, as List.assoc
    return result


# --- values from the bus -----------------------------------------------------------------

def _bad_chars():
    # Not in UTF-8-encoded XML: controls but TAB LF CR, surrogates, non-characters.
    ranges = ["\x00-\x08\x0b\x0c\x0e-\x1f", "\ud800-\udfff", "\ufdd0-\ufdef"]
    ranges += [chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)]
    return re.compile("[" + "".join(ranges) + "]")


_NOT_XML_UTF8 = _bad_chars()


def _type_error(field):
    return XapiError("FIELD_TYPE_ERROR", field.name)


def _invalid(field, value):
    return XapiError("INVALID_VALUE", field.name, repr(value))


def _check_string(field, value):
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(field, value) from None
    if not isinstance(value, str):
        raise _type_error(field)
    if _NOT_XML_UTF8.search(value):
        raise _invalid(field, value)
    return value


def _check_item(field, value, item_type):
    if item_type == "enum":
        if not isinstance(value, str):
            raise _type_error(field)
        if value not in field.enum_values:
            raise _invalid(field, value)
        return value
    return _check_string(field, value)


def check_value(field, value):
    """Validate and normalise a typed value for this field (from the bus or the API).

    Raises XapiError FIELD_TYPE_ERROR [field] for a value of the wrong type, INVALID_VALUE
    [field, repr(value)] for a string XML cannot hold or an enum value outside the enum,
    INVALID_VALUE [field, "empty map key"] for a map with an empty key.
    """
    t = field.type
    if t in ("string", "ref"):
        return _check_string(field, value)
    if t == "enum":
        return _check_item(field, value, "enum")
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(field)
        if not INT64_MIN <= value <= INT64_MAX:
            raise _invalid(field, value)
        return int(value)
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(field)
        return float(value)
    if t == "bool":
        if not isinstance(value, bool):
            raise _type_error(field)
        return value
    if t == "datetime":
        if not isinstance(value, datetime):
            raise _type_error(field)
        return _utc(value)
    if t == "set":
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise _type_error(field)
        items = (_check_item(field, item, field.item_type) for item in value)
        return tuple(dict.fromkeys(items))
    if t == "map":
        if not isinstance(value, Mapping):
            raise _type_error(field)
        result = {}
        for key, item in value.items():
            key = _check_string(field, key)
            if key == "":
                raise XapiError("INVALID_VALUE", field.name, "empty map key")
            result[key] = _check_item(field, item, field.item_type)
        return result
    raise _type_error(field)


# --- the table, built last (it checks each default with check_value) ---------------------

CLASSES: Mapping[str, Class] = _build(schema_classes.CLASS_TABLE)
_BY_LOWER_NAME = {name.lower(): c for name, c in CLASSES.items()}
