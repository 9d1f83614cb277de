"""Loading state.db into the store (persist.read_file + raw_to_store): the fast path that
converts rows while expat reads them must give exactly what a plain reading gives - the
decoded strings of xmlfile.parse, each column through schema.from_string, the schema's default
for a missing or unreadable cell, unknown columns kept - whatever the attribute order, the
escapes, the repeats (cached cells) or the odd rows."""

import datetime
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from common import schema
from daemons.db import persist, xmlfile
from daemons.db.store import Store

VM = schema.CLASSES["VM"]
COLUMNS = {f.column: f for f in VM.fields.values() if f.persist and not f.derived}


def expected_rows(raw_rows):
    """The store rows a plain reading gives, one row at a time (the later of a ref twice)."""
    out = {}
    for attrs in raw_rows:
        ref = attrs.get("ref") or attrs.get("_ref")
        if not ref:
            continue
        values = schema.default_record(VM)
        extra = {}
        for column, text in attrs.items():
            field = COLUMNS.get(column)
            if field is not None:
                try:
                    values[field.name] = schema.from_string(field, text)
                except ValueError:
                    continue     # the default stays, as the engine's load does (with a warning)
            elif column not in persist.ROW_META:
                extra[column] = text
        created = persist._int(attrs.get("__ctime"))
        out[ref] = (values, created, persist._int(attrs.get("__mtime"), created), extra)
    return out


def load(tmp_path, tables):
    path = tmp_path / "state.db"
    xmlfile.write_file(path, xmlfile.RawDatabase(5, 909, 77, tables))
    store = Store()
    persist.raw_to_store(persist.read_file(path), store, str(path))
    return store, xmlfile.read_file(path)


def stored(store, name="VM"):
    return {ref: (row.values, row.created, row.modified, row.extra)
            for ref, row in store.tables[name].rows.items()}


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=12)
# Cells as they come: the schema's own string forms (repeated, so the caches hit), odd but
# readable forms, and junk that must give the default.
CELLS = {
    "int": st.sampled_from(["0", "-1", "42", "0x10", " 7", "9" * 30, "x", ""]),
    "float": st.sampled_from(["1", "1.25", "-0", "1e400", "x"]),
    "bool": st.sampled_from(["true", "false", "True", ""]),
    "datetime": st.sampled_from(["19700101T00:00:00Z", "2024-01-02T03:04:05+01:00", "never"]),
    "enum": st.sampled_from(["Halted", "Running", "destroy", "restart", "nope", ""]),
}


@st.composite
def cell_for(draw, field):
    if field.type in CELLS and draw(st.booleans()):
        return draw(CELLS[field.type])
    if field.type == "map":
        pairs = draw(st.lists(st.tuples(texts, texts), max_size=3))
        if draw(st.integers(0, 4)) == 0:
            return draw(st.sampled_from(["(('a' 'b') ('a' 'c'))", "(('a'  'b'))", "x", "('a')",
                                         "(('a\\'' 'b\"'))", '(("a" "b"))', "( )"]))
        return schema.sexpr_dumps([[k, v] for k, v in pairs])
    if field.type == "set":
        if draw(st.integers(0, 4)) == 0:
            return draw(st.sampled_from(["('a''b')", "(('a'))", "('a' ", "( 'a' )"]))
        return schema.sexpr_dumps(draw(st.lists(texts, max_size=3)))
    return draw(st.one_of(texts, st.sampled_from(["", "OpaqueRef:NULL", "a b", "50%", "%_%."])))


@st.composite
def vm_rows(draw):
    rows = []
    fields = sorted(COLUMNS.values(), key=lambda f: f.column)
    for i in range(draw(st.integers(1, 6))):
        ref = draw(st.sampled_from([f"OpaqueRef:{i}", "OpaqueRef:dup", ""]))
        row = {"ref": ref, "__ctime": draw(st.sampled_from([str(i), "x", "12"])),
               "__mtime": draw(st.sampled_from([str(i + 1), "", "99"]))}
        chosen = draw(st.lists(st.sampled_from(fields), unique=True, max_size=12))
        for field in chosen:
            row[field.column] = draw(cell_for(field))
        if draw(st.booleans()):
            row["_ref"] = draw(st.sampled_from([ref, "OpaqueRef:alt", "Opaque%Ref"]))
        if draw(st.booleans()):
            row["future__column"] = draw(texts)
        # the attribute order varies from row to row (more than one layout per table)
        if draw(st.booleans()):
            keys = list(row)
            keys = keys[:3] + sorted(keys[3:], reverse=True)
            row = {key: row[key] for key in keys}
        rows.append(row)
    return rows


@settings(max_examples=150, deadline=None)
@given(first=vm_rows(), second=vm_rows())
def test_fast_load_gives_what_a_plain_reading_gives(tmp_path_factory, first, second):
    tmp_path = tmp_path_factory.mktemp("load")
    logging.disable(logging.WARNING)
    try:
        store, raw = load(tmp_path, {"VM": first + second})
        assert stored(store) == expected_rows(raw.tables["VM"])
        # and the plain-string path of raw_to_store agrees
        plain = Store()
        persist.raw_to_store(raw, plain, "plain")
        assert stored(plain) == stored(store)
    finally:
        logging.disable(logging.NOTSET)


def test_repeated_cells_do_not_share_maps_and_escapes_are_undone(tmp_path):
    rows = []
    for i in range(3):
        rows.append(xmlfile.xapi_row(f"OpaqueRef:{i}", i, i, {
            "_ref": f"OpaqueRef:{i}", "name__label": "same name 100%",
            "other_config": "(('k' 'v w'))", "tags": "('a b' 'c')", "VCPUs__max": "4",
            "snapshot_time": "20240102T03:04:05Z"}))
    store, _ = load(tmp_path, {"VM": rows})
    got = [store.tables["VM"].rows[f"OpaqueRef:{i}"].values for i in range(3)]
    assert all(v["name_label"] == "same name 100%" for v in got)
    assert all(v["other_config"] == {"k": "v w"} for v in got)
    assert all(v["tags"] == ("a b", "c") and v["VCPUs_max"] == 4 for v in got)
    assert all(v["snapshot_time"] == datetime.datetime(2024, 1, 2, 3, 4, 5,
                                                       tzinfo=datetime.timezone.utc) for v in got)
    maps = [id(v[key]) for v in got for key in ("other_config", "platform", "current_operations")]
    assert len(set(maps)) == len(maps)
    got[0]["other_config"]["x"] = "y"
    assert got[1]["other_config"] == {"k": "v w"}


def test_a_table_given_twice_keeps_the_later_one(tmp_path):
    data = ('<?xml version="1.0" encoding="UTF-8"?>\n<database><manifest>'
            '<pair key="schema_major_vsn" value="5"/><pair key="schema_minor_vsn" value="909"/>'
            '<pair key="generation_count" value="9"/></manifest>'
            '<table name="VM"><row ref="OpaqueRef:a" __ctime="1" __mtime="1" uuid="u-a"/></table>'
            '<table name="VM"><row ref="OpaqueRef:b" __ctime="2" __mtime="3" uuid="u-b"/></table>'
            '</database>').encode()
    path = tmp_path / "state.db"
    path.write_bytes(data)
    store = Store()
    assert persist.raw_to_store(persist.read_file(path), store, str(path)) == 1
    assert list(store.tables["VM"].rows) == ["OpaqueRef:b"]
    assert store.by_uuid == {"u-b": ("VM", "OpaqueRef:b")}


def test_derived_sets_are_built_at_load(tmp_path):
    host, vms = "OpaqueRef:h", [f"OpaqueRef:v{i}" for i in range(3)]
    store, _ = load(tmp_path, {
        "host": [xmlfile.xapi_row(host, 1, 1, {"_ref": host, "uuid": "h"})],
        "VM": [xmlfile.xapi_row(ref, 2, 2, {"_ref": ref, "uuid": ref, "resident_on": host})
               for ref in vms] + [xmlfile.xapi_row("OpaqueRef:x", 2, 2, {
                   "resident_on": "OpaqueRef:NULL"})]})
    assert store.record("host", host)["resident_VMs"] == tuple(vms)
    assert store.tables["host"].rows[host].modified == 1      # loading stamps nothing


maps = st.dictionaries(texts, texts, max_size=4)


@given(st.one_of(maps.map(lambda m: schema.sexpr_dumps([[k, v] for k, v in m.items()])),
                 st.text(alphabet="()' \\\"ab", max_size=20)))
def test_fast_map_reader_agrees_with_the_schema(text):
    fast = persist._fast_map(text)
    if fast is not None:
        assert fast == schema.from_string(VM.fields["other_config"], text)
        assert list(fast) == list(schema.from_string(VM.fields["other_config"], text))


@given(st.one_of(st.lists(texts, max_size=4).map(schema.sexpr_dumps),
                 st.text(alphabet="()' \\\"ab", max_size=20)))
def test_fast_set_reader_agrees_with_the_schema(text):
    fast = persist._fast_set(text)
    if fast is not None:
        assert fast == schema.from_string(VM.fields["tags"], text)


def test_fast_readers_take_the_usual_forms():
    assert persist._fast_map("(('k' 'v') ('a b' ''))") == {"k": "v", "a b": ""}
    assert persist._fast_map("()") == {}
    assert persist._fast_set("('a' 'b c')") == ("a", "b c")
    assert persist._fast_map("(('k' 'v') ('k' 'w'))") is None      # first wins: the slow path
    assert persist._fast_map("(('k\\'' 'v'))") is None               # escapes: the slow path


@given(st.lists(st.text(alphabet="%._tnr_ab", max_size=8), max_size=6))
def test_decode_values_is_decode_attr_of_each(values):
    assert xmlfile.decode_values(list(values)) == [xmlfile.decode_attr(v) for v in values]
