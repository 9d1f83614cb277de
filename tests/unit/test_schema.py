"""The data model as data: the class table, the state.db string forms, bus-value checks."""

import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import schema
from common.errors import XapiError
from common.schema import (CLASSES, NULL_REF, OWNER_RULES, TYPES, Class, Field, check_value,
                           default_record, derived_sets, from_string, get_class, sexpr_dumps,
                           sexpr_loads, to_string)

UTC = timezone.utc
LISTED = ("pool", "host", "host_metrics", "host_cpu", "host_crashdump", "VM", "VM_metrics",
          "VM_guest_metrics", "VBD", "VDI", "SR", "PBD", "SM", "PIF", "PIF_metrics", "network",
          "Bond", "VLAN", "console", "pool_patch", "task", "session", "user", "VIF")
ALL_FIELDS = [(c, f) for c in CLASSES.values() for f in c.fields.values()]


def fld(type_, **kw):
    """A stand-alone field for codec tests."""
    return Field(name=kw.pop("name", "x"), column=kw.pop("column", "x"), type=type_,
                 default=kw.pop("default", None), ro=False, **kw)


def error_of(excinfo):
    return excinfo.value.description


# --- the table -----------------------------------------------------------------------------

def test_schema_version():
    assert (schema.SCHEMA_MAJOR_VSN, schema.SCHEMA_MINOR_VSN) == (5, 909)


@pytest.mark.parametrize("name", LISTED)
def test_every_listed_class_exists_with_a_read_only_uuid(name):
    cls = CLASSES[name]
    assert cls.name == name
    uuid = cls.field("uuid")
    assert (uuid.type, uuid.column, uuid.ro, uuid.persist) == ("string", "uuid", True, True)
    assert list(cls.fields)[0] == "uuid"


def test_message_is_not_a_table():
    assert "message" not in CLASSES
    with pytest.raises(KeyError):
        get_class("message")


def test_types_and_item_types_are_known():
    for cls, f in ALL_FIELDS:
        assert f.type in TYPES, (cls.name, f.name)
        assert f.item_type in schema.ITEM_TYPES, (cls.name, f.name)
        if f.type == "enum" or f.item_type == "enum":
            assert f.enum_values, (cls.name, f.name)
            assert len(set(f.enum_values)) == len(f.enum_values)


def test_every_ref_names_an_existing_class():
    refs = [(c, f) for c, f in ALL_FIELDS
            if f.type == "ref" or (f.type == "set" and f.item_type == "ref")]
    assert refs
    for cls, f in refs:
        assert f.ref_class in CLASSES, (cls.name, f.name, f.ref_class)
        assert f.default == (NULL_REF if f.type == "ref" else ())
    for cls, f in ALL_FIELDS:
        if f.ref_class is not None:
            assert f.type == "ref" or f.item_type == "ref", (cls.name, f.name)


def test_derived_sets_point_at_a_ref_to_their_class():
    sets = derived_sets()
    names = {(c.name, f.name) for c, f in sets}
    assert {("VM", "VBDs"), ("VM", "VIFs"), ("host", "PIFs"), ("host", "resident_VMs"),
            ("host", "host_CPUs"), ("host", "PBDs"), ("SR", "PBDs"), ("SR", "VDIs"),
            ("network", "PIFs"), ("network", "VIFs"), ("VDI", "VBDs"), ("Bond", "slaves"),
            ("VM", "consoles"), ("task", "subtasks"), ("session", "tasks")} <= names
    for cls, f in sets:
        other_class, other_field = f.derived
        other = CLASSES[other_class].field(other_field)
        assert other.type == "ref" and other.ref_class == cls.name, (cls.name, f.name)
        assert not other.derived
        assert (f.type, f.item_type, f.ref_class) == ("set", "ref", other_class)
        assert f.ro and not f.persist and f.default == ()
    assert CLASSES["VM"].field("VBDs").derived == ("VBD", "VM")


def test_columns_are_unique_and_map_back_to_api_names():
    for cls in CLASSES.values():
        columns = [f.column for f in cls.fields.values()]
        assert len(columns) == len(set(columns)), cls.name
        for name, f in cls.fields.items():
            assert f.name == name
            assert cls.field(name) is f
            assert cls.by_column(f.column) is f
            assert f.column.replace("__", "_") == f.name


@pytest.mark.parametrize("cls, name, column", [
    ("VM", "name_label", "name__label"), ("VM", "name_description", "name__description"),
    ("VM", "memory_static_max", "memory__static_max"), ("VM", "VCPUs_max", "VCPUs__max"),
    ("VM", "actions_after_crash", "actions__after_crash"), ("VM", "PV_kernel", "PV__kernel"),
    ("VM", "HVM_boot_policy", "HVM__boot_policy"), ("VM", "other_config", "other_config"),
    ("VM", "is_a_template", "is_a_template"), ("host", "API_version_major",
                                               "API_version__major"),
    ("host_metrics", "memory_total", "memory__total"), ("PIF_metrics", "io_read_kbs",
                                                        "io__read_kbs"),
    ("VBD", "qos_algorithm_type", "qos__algorithm_type"),
    ("pool", "name_label", "name_label"),      # a plain field in xapi's pool, no namespace
])
def test_known_column_names(cls, name, column):
    assert CLASSES[cls].field(name).column == column
    assert CLASSES[cls].by_column(column).name == name


def test_lookup_errors_name_class_and_field():
    with pytest.raises(KeyError, match="VM.*no_such"):
        CLASSES["VM"].field("no_such")
    with pytest.raises(KeyError, match="VM.*name_label"):
        CLASSES["VM"].by_column("name_label")


def test_get_class_exact_and_case_insensitive():
    assert get_class("VM") is CLASSES["VM"]
    assert get_class("vm") is CLASSES["VM"]
    assert get_class("vm_guest_metrics") is CLASSES["VM_guest_metrics"]
    assert get_class("pif") is CLASSES["PIF"] and get_class("Sr") is CLASSES["SR"]
    assert get_class("host") is CLASSES["host"] and get_class("HOST") is CLASSES["host"]
    with pytest.raises(KeyError, match="nope"):
        get_class("nope")


def test_session_and_task_are_not_persisted():
    assert not CLASSES["session"].persist and not CLASSES["task"].persist
    assert all(c.persist for name, c in CLASSES.items() if name not in ("session", "task"))


def test_operations_fields_as_in_xapi():
    vm = CLASSES["VM"]
    allowed, current = vm.field("allowed_operations"), vm.field("current_operations")
    assert (allowed.type, allowed.item_type, allowed.persist, allowed.ro) == ("set", "enum",
                                                                              False, True)
    assert (current.type, current.item_type, current.persist) == ("map", "enum", False)
    assert "start" in allowed.enum_values and "clean_shutdown" in current.enum_values


def test_required_refs_are_the_gc_rules():
    assert {(c.name, f.name) for c, f in schema.required_refs()} == {
        ("VBD", "VM"), ("PBD", "host"), ("PBD", "SR"), ("PIF", "host"), ("VIF", "VM"),
        ("VDI", "SR")}
    for _, f in schema.required_refs():
        assert f.type == "ref"


def test_owner_rules_point_at_metrics_refs():
    assert set(OWNER_RULES) == {("VM_metrics", "VM", "metrics"),
                                ("VM_guest_metrics", "VM", "guest_metrics"),
                                ("host_metrics", "host", "metrics"),
                                ("PIF_metrics", "PIF", "metrics")}
    for metrics, owner, owner_field in OWNER_RULES:
        f = CLASSES[owner].field(owner_field)
        assert f.type == "ref" and f.ref_class == metrics


def test_read_only_and_defaults_follow_xapi():
    vm, host, pif = CLASSES["VM"], CLASSES["host"], CLASSES["PIF"]
    assert not vm.field("name_label").ro and vm.field("power_state").ro
    assert vm.field("power_state").default == "Halted"
    assert vm.field("resident_on").default == NULL_REF
    assert host.field("enabled").ro and not host.field("hostname").ro
    assert pif.field("currently_attached").default is True
    assert CLASSES["network"].field("MTU").default == 1500
    assert CLASSES["VDI"].field("on_boot").default == "persist"
    assert CLASSES["host_metrics"].field("last_updated").default == schema.EPOCH
    assert CLASSES["host_cpu"].field("utilisation").persist is False
    assert dict(host.field("license_server").default) == {"address": "localhost",
                                                          "port": "27000"}


def test_fields_and_classes_are_immutable_and_hashable():
    f = CLASSES["VM"].field("other_config")
    hash(f), hash(CLASSES["VM"])
    with pytest.raises(TypeError):
        f.default["k"] = "v"
    with pytest.raises(TypeError):
        CLASSES["VM"].fields["x"] = f


def test_default_record_has_no_derived_fields():
    for cls in CLASSES.values():
        record = default_record(cls)
        assert set(record) == {f.name for f in cls.fields.values() if not f.derived}
        persisted = default_record(cls, persisted_only=True)
        assert set(persisted) == {f.name for f in cls.fields.values()
                                  if not f.derived and f.persist}
    vm = default_record("VM")
    assert "VBDs" not in vm and "allowed_operations" in vm
    assert "allowed_operations" not in default_record("VM", persisted_only=True)
    vm["other_config"]["k"] = "v"      # a fresh dict each time
    assert default_record("VM")["other_config"] == {}


@pytest.mark.parametrize("cls, f", ALL_FIELDS, ids=[f"{c.name}.{f.name}" for c, f in ALL_FIELDS])
def test_every_default_is_valid_and_round_trips(cls, f):
    value = check_value(f, f.default)
    assert from_string(f, to_string(f, value)) == value


# --- S-expressions and string forms --------------------------------------------------------

@pytest.mark.parametrize("obj, text", [
    (["a", "b"], "('a' 'b')"),
    ([["k", "v"]], "(('k' 'v'))"),
    ([["k", "v"], ["k2", "v2"]], "(('k' 'v') ('k2' 'v2'))"),
    ([], "()"),
    ([[]], "(())"),
    (["it's", "a\\b"], r"('it\'s' 'a\\b')"),
    (['say "hi"'], r"('say \"hi\"')"),
    (["a b", ""], "('a b' '')"),
    ("atom", "'atom'"),
])
def test_sexpr_exact_forms(obj, text):
    assert sexpr_dumps(obj) == text
    assert sexpr_loads(text) == obj


def test_sexpr_reads_what_xapi_reads():
    assert sexpr_loads(' ( "a"\t\'b\'\r\n( \'k\' "v" ) ) ') == ["a", "b", ["k", "v"]]
    assert sexpr_loads(r"('\q\\\'')") == ["q\\'"]       # a backslash makes the next literal
    assert sexpr_loads("('line\nbreak')") == ["line\nbreak"]


@pytest.mark.parametrize("text", ["", "(", ")", "('a'", "('a')(", "('a' b)", "'a", "('a' 'b'))",
                                  "'a' 'b'", "(x)"])
def test_sexpr_rejects_malformed_text(text):
    with pytest.raises(ValueError):
        sexpr_loads(text)


def test_sexpr_dumps_rejects_other_types():
    with pytest.raises(TypeError):
        sexpr_dumps([1])


nested = st.recursive(st.text(), lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=200)
@given(nested)
def test_sexpr_round_trip(obj):
    assert sexpr_loads(sexpr_dumps(obj)) == obj


SET = fld("set", default=())
MAP = fld("map", default={})
ENUM_SET = fld("set", default=(), item_type="enum", enum_values=("a", "b"))
ENUM_MAP = fld("map", default={}, item_type="enum", enum_values=("a", "b"))


@pytest.mark.parametrize("f, value, text", [
    (fld("int"), 123, "123"), (fld("int"), -1, "-1"),
    (fld("int"), 2 ** 63 - 1, "9223372036854775807"),
    (fld("float"), 1.0, "1"), (fld("float"), 0.5, "0.5"),
    (fld("float"), 0.1, "0.100000000000000006"),
    (fld("bool"), True, "true"), (fld("bool"), False, "false"),
    (fld("datetime"), schema.EPOCH, "19700101T00:00:00Z"),
    (fld("datetime"), datetime(2024, 2, 29, 23, 5, 9, tzinfo=UTC), "20240229T23:05:09Z"),
    (fld("string"), "a b", "a b"), (fld("ref"), NULL_REF, "OpaqueRef:NULL"),
    (fld("enum", enum_values=("x", "y")), "y", "y"),
    (SET, ("a", "b"), "('a' 'b')"), (SET, (), "()"),
    (SET, ("it's", "c:\\dir"), r"('it\'s' 'c:\\dir')"),
    (MAP, {"k": "v"}, "(('k' 'v'))"), (MAP, {}, "()"),
    (MAP, {"k": "v", "k2": "v 2"}, "(('k' 'v') ('k2' 'v 2'))"),
])
def test_known_string_forms(f, value, text):
    assert to_string(f, value) == text
    assert from_string(f, text) == value


def test_datetime_forms():
    f = fld("datetime")
    naive = datetime(2020, 1, 2, 3, 4, 5, 678)
    assert to_string(f, naive) == "20200102T03:04:05Z"       # naive = UTC, whole seconds
    plus_two = datetime(2020, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert to_string(f, plus_two) == "20200102T03:04:05Z"
    expected = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    for text in ("20200102T03:04:05Z", "2020-01-02T03:04:05Z", "20200102T03:04:05",
                 "2020-01-02T05:04:05+02:00", "2020-01-02T01:04:05-0200"):
        value = from_string(f, text)
        assert value == expected and value.tzinfo is UTC, text
    assert from_string(f, "2020-01-02T03:04:05.5Z") == expected + timedelta(milliseconds=500)


def test_float_and_int_forms_read_like_ocaml():
    assert from_string(fld("int"), "0x10") == 16
    assert math.isnan(from_string(fld("float"), "nan"))
    assert from_string(fld("float"), "inf") == math.inf
    assert to_string(fld("float"), math.inf) == "inf"


def test_unknown_enum_values_are_dropped_from_sets_and_maps():
    assert from_string(ENUM_SET, "('a' 'zz' 'b')") == ("a", "b")
    assert from_string(ENUM_MAP, "(('t1' 'a') ('t2' 'zz'))") == {"t1": "a"}


def test_first_map_binding_wins():
    assert from_string(MAP, "(('k' '1') ('k' '2'))") == {"k": "1"}


@pytest.mark.parametrize("f, text", [
    (fld("int", name="domid"), "12x"), (fld("int", name="domid"), "9223372036854775808"),
    (fld("float", name="progress"), "fast"), (fld("bool", name="enabled"), "True"),
    (fld("bool", name="enabled"), "1"), (fld("datetime", name="created"), "yesterday"),
    (fld("datetime", name="created"), "20201301T00:00:00Z"),
    (fld("enum", name="power_state", enum_values=("Halted",)), "Flying"),
    (fld("set", name="tags"), "('a' ('b'))"), (fld("set", name="tags"), "'a'"),
    (fld("set", name="tags"), "('a'"), (fld("map", name="other_config"), "('k' 'v')"),
    (fld("map", name="other_config"), "(('k'))"),
])
def test_bad_text_raises_value_error_naming_field_and_text(f, text):
    with pytest.raises(ValueError) as excinfo:
        from_string(f, text)
    assert f.name in str(excinfo.value) and repr(text) in str(excinfo.value)


ints = st.integers(schema.INT64_MIN, schema.INT64_MAX)
floats = st.floats(allow_nan=False)
datetimes = st.datetimes(timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))
tricky_text = st.text(st.characters(blacklist_categories=("Cs",))) | st.sampled_from(
    ["'", "\\", "\\'", "'\\", "a b", " ", '"', "()", "('x')", "ünïcödé ☃", "\n\t"])


@given(ints)
def test_int_round_trip(value):
    assert from_string(fld("int"), to_string(fld("int"), value)) == value


@given(floats)
def test_float_round_trip(value):
    assert from_string(fld("float"), to_string(fld("float"), value)) == value


@given(datetimes)
def test_datetime_round_trip(value):
    assert from_string(fld("datetime"), to_string(fld("datetime"), value)) == value


@given(tricky_text)
def test_string_round_trip(value):
    assert from_string(fld("string"), to_string(fld("string"), value)) == value


@settings(max_examples=200)
@given(st.lists(tricky_text).map(tuple))
def test_set_round_trip(value):
    assert from_string(SET, to_string(SET, value)) == value


@settings(max_examples=200)
@given(st.dictionaries(tricky_text.filter(bool), tricky_text))
def test_map_round_trip(value):
    assert from_string(MAP, to_string(MAP, value)) == value


# --- check_value ---------------------------------------------------------------------------

def test_check_value_normalises():
    assert check_value(fld("float"), 3) == 3.0 and type(check_value(fld("float"), 3)) is float
    assert check_value(fld("int"), 7) == 7
    assert check_value(SET, ["b", "a", "b", "c", "a"]) == ("b", "a", "c")
    assert check_value(SET, ("x",)) == ("x",)
    assert set(check_value(SET, {"x", "y"})) == {"x", "y"}
    assert check_value(MAP, {"k": "v"}) == {"k": "v"}
    naive = datetime(2021, 5, 6, 7, 8, 9)
    assert check_value(fld("datetime"), naive) == naive.replace(tzinfo=UTC)
    assert check_value(fld("datetime"), naive).tzinfo is UTC
    east = datetime(2021, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    assert check_value(fld("datetime"), east) == naive.replace(tzinfo=UTC)
    assert check_value(fld("datetime"), east).tzinfo is UTC
    assert check_value(fld("string"), "tab\tnewline\nok ☃") == "tab\tnewline\nok ☃"
    assert check_value(fld("string"), "ü".encode()) == "ü"
    assert check_value(ENUM_SET, ["a", "a"]) == ("a",)
    assert check_value(CLASSES["VM"].field("power_state"), "Running") == "Running"


@pytest.mark.parametrize("f, value", [
    (fld("int", name="domid"), True), (fld("int", name="domid"), 1.0),
    (fld("int", name="domid"), "1"), (fld("float", name="progress"), False),
    (fld("float", name="progress"), "0.5"), (fld("bool", name="enabled"), 1),
    (fld("bool", name="enabled"), "true"), (fld("string", name="name_label"), 5),
    (fld("string", name="name_label"), None), (fld("ref", name="host"), None),
    (fld("datetime", name="created"), "19700101T00:00:00Z"),
    (fld("datetime", name="created"), 0),
    (fld("set", name="tags"), "ab"), (fld("set", name="tags"), {"a": "b"}),
    (fld("set", name="tags"), [1]), (fld("map", name="other_config"), [("k", "v")]),
    (fld("map", name="other_config"), {"k": 1}), (fld("map", name="other_config"), {1: "v"}),
    (fld("enum", name="mode", enum_values=("RO", "RW")), 1),
])
def test_check_value_wrong_type(f, value):
    with pytest.raises(XapiError) as excinfo:
        check_value(f, value)
    assert error_of(excinfo) == ["FIELD_TYPE_ERROR", f.name]


@pytest.mark.parametrize("f, value", [
    (fld("enum", name="mode", enum_values=("RO", "RW")), "rw"),
    (fld("set", name="allowed_operations", item_type="enum", enum_values=("start",)),
     ["start", "fly"]),
    (fld("map", name="current_operations", item_type="enum", enum_values=("start",)),
     {"OpaqueRef:t": "fly"}),
    (fld("string", name="name_label"), "bad\ud800surrogate"),
    (fld("string", name="name_label"), "nul\x00"),
    (fld("string", name="name_label"), "bell\x07"),
    (fld("string", name="name_label"), "non-character\ufffe"),
    (fld("string", name="name_label"), b"\xff\xfe not UTF-8"),
    (fld("set", name="tags"), ["ok", "bad\udc80"]),
    (fld("map", name="other_config"), {"k": "nul\x00"}),
    (fld("ref", name="host"), "OpaqueRef:\x00"),
    (fld("int", name="memory_static_max"), 2 ** 63),
])
def test_check_value_invalid_value(f, value):
    with pytest.raises(XapiError) as excinfo:
        check_value(f, value)
    code, field_name, *rest = error_of(excinfo)
    assert (code, field_name) == ("INVALID_VALUE", f.name)
    assert len(rest) == 1


def test_check_value_invalid_value_echoes_the_value():
    with pytest.raises(XapiError) as excinfo:
        check_value(CLASSES["VBD"].field("mode"), "rw")
    assert error_of(excinfo) == ["INVALID_VALUE", "mode", "'rw'"]


def test_check_value_empty_map_key():
    with pytest.raises(XapiError) as excinfo:
        check_value(CLASSES["VM"].field("other_config"), {"": "v"})
    assert error_of(excinfo) == ["INVALID_VALUE", "other_config", "empty map key"]


def test_class_accepts_a_list_of_fields():
    a = fld("string", name="uuid", column="uuid")
    b = fld("string", name="name_label", column="name__label")
    cls = Class("thing", [a, b])
    assert list(cls.fields) == ["uuid", "name_label"] and cls.by_column("name__label") is b
