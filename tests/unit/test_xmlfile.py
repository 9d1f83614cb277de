"""state.db XML: xapi's exact layout, the % escapes, gzip, errors, atomic writes."""

import gzip
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemons.db import xmlfile
from daemons.db.xmlfile import (DbFileError, RawDatabase, decode_attr, encode_attr, parse,
                                read_file, read_generation, render, render_gz, write_file,
                                xapi_row)


def one_line(text):
    """xapi's file: the declaration, a newline, then everything on one line, no final newline.
    (Written here over several source lines for reading; the line breaks are not in the file.)"""
    first, rest = text.split("\n", 1)
    return (first + "\n" + "".join(rest.split("\n"))).encode("utf-8")


# What xapi writes (Db_xml.To through Xmlm): every space of a column value is %., TAB %t, LF %n,
# CR %r, % is %%; then &lt; &gt; &amp; &quot; (not '); ref/__ctime/__mtime come first and are not
# %-escaped; the columns follow sorted by byte value, so _ref sits between the upper-case and
# the lower-case column names; tables sorted by name, a table without rows is <table name=".."/>.
XAPI_TEXT = r'''<?xml version="1.0" encoding="UTF-8"?>
<database><manifest>
<pair key="schema_major_vsn" value="5"/>
<pair key="schema_minor_vsn" value="909"/>
<pair key="generation_count" value="4711"/>
</manifest>
<table name="Bond"/>
<table name="VM">
<row ref="OpaqueRef:0a1b" __ctime="12" __mtime="4700"
 PV__args=""
 VBDs="('OpaqueRef:v1'%.'OpaqueRef:v2')"
 _ref="OpaqueRef:0a1b"
 blocked_operations="()"
 future_column="from%.a%.newer%.xapi"
 name__description="line%.one%nline%.two%ttabbed%rend"
 name__label="%.%.two%.leading,%.100%%%.&quot;quoted&quot;%.'single'%.&lt;&amp;&gt;%.café%.日本"
 other_config="(('k'%.'v'))"
 platform="(('acpi'%.'1')%.('vga'%.'std'))"
 tags="('it\'s'%.'b')"
 uuid="7f3c0e1e-9c1a-4f4e-8a55-0d8c2c4b9e01"/>
<row ref="OpaqueRef:0c2d" __ctime="13" __mtime="13"
 PV__args="--%.quiet%.%%d"
 VBDs="()"
 _ref="OpaqueRef:0c2d"
 blocked_operations="(('start'%.'no,%.really'))"
 future_column=""
 name__description=""
 name__label="trailing%.%."
 other_config="()"
 platform="()"
 tags="()"
 uuid="a0b1c2d3-0000-4000-8000-000000000002"/>
</table>
<table name="host">
<row ref="OpaqueRef:h1" __ctime="1" __mtime="2"
 PBDs="('OpaqueRef:p1')"
 _ref="OpaqueRef:h1"
 hostname="xs1"
 uuid="h-1"/>
</table>
<table name="session"/>
<table name="task"/>
<table name="zz_future">
<row ref="OpaqueRef:z" __ctime="0" __mtime="0" Zeta="Z" _ref="OpaqueRef:z" alpha="%%%%"/>
</table>
</database>'''

# Attribute lines above start with a space (the separator before each attribute).
XAPI_FILE = one_line(XAPI_TEXT)

EXPECTED_TABLES = {
    "Bond": [],
    "VM": [
        {
            "ref": "OpaqueRef:0a1b", "__ctime": "12", "__mtime": "4700",
            "PV__args": "",
            "VBDs": "('OpaqueRef:v1' 'OpaqueRef:v2')",
            "_ref": "OpaqueRef:0a1b",
            "blocked_operations": "()",
            "future_column": "from a newer xapi",
            "name__description": "line one\nline two\ttabbed\rend",
            "name__label": "  two leading, 100% \"quoted\" 'single' <&> café 日本",
            "other_config": "(('k' 'v'))",
            "platform": "(('acpi' '1') ('vga' 'std'))",
            "tags": "('it\\'s' 'b')",
            "uuid": "7f3c0e1e-9c1a-4f4e-8a55-0d8c2c4b9e01",
        },
        {
            "ref": "OpaqueRef:0c2d", "__ctime": "13", "__mtime": "13",
            "PV__args": "-- quiet %d",
            "VBDs": "()",
            "_ref": "OpaqueRef:0c2d",
            "blocked_operations": "(('start' 'no, really'))",
            "future_column": "",
            "name__description": "",
            "name__label": "trailing  ",
            "other_config": "()",
            "platform": "()",
            "tags": "()",
            "uuid": "a0b1c2d3-0000-4000-8000-000000000002",
        },
    ],
    "host": [{"ref": "OpaqueRef:h1", "__ctime": "1", "__mtime": "2",
              "PBDs": "('OpaqueRef:p1')", "_ref": "OpaqueRef:h1", "hostname": "xs1",
              "uuid": "h-1"}],
    "session": [],
    "task": [],
    "zz_future": [{"ref": "OpaqueRef:z", "__ctime": "0", "__mtime": "0", "Zeta": "Z",
                   "_ref": "OpaqueRef:z", "alpha": "%%"}],
}


def rows_as_lists(tables):
    """Tables with each row as its (key, value) list, so order is compared too."""
    return {name: [list(row.items()) for row in rows] for name, rows in tables.items()}


def test_the_layout_is_one_line_after_the_declaration():
    assert XAPI_FILE.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<database><manifest>')
    assert XAPI_FILE.count(b"\n") == 1 and XAPI_FILE.endswith(b"</table></database>")


def test_parse_gives_exactly_the_strings_in_file_order():
    db = parse(XAPI_FILE)
    assert (db.schema_major, db.schema_minor, db.generation) == (5, 909, 4711)
    assert db.manifest_extra == []
    assert list(db.tables) == ["Bond", "VM", "host", "session", "task", "zz_future"]
    assert rows_as_lists(db.tables) == rows_as_lists(EXPECTED_TABLES)


def test_render_gives_back_the_identical_bytes():
    assert render(parse(XAPI_FILE)) == XAPI_FILE


def test_render_from_scratch_with_xapi_row_matches_xapi():
    tables = {}
    for name, rows in reversed(list(EXPECTED_TABLES.items())):  # render sorts tables itself
        tables[name] = [
            xapi_row(row["ref"], int(row["__ctime"]), int(row["__mtime"]),
                     {k: v for k, v in reversed(list(row.items()))
                      if k not in ("ref", "__ctime", "__mtime")})
            for row in rows]
    assert render(RawDatabase(5, 909, 4711, tables)) == XAPI_FILE


def test_xapi_row_puts_ref_where_xapis_sorted_row_map_does():
    row = xapi_row("R", 1, 2, {"uuid": "u", "_ref": "R", "VBDs": "()", "affinity": "a",
                               "PV__args": ""})
    assert list(row) == ["ref", "__ctime", "__mtime", "PV__args", "VBDs", "_ref", "affinity",
                         "uuid"]


# -- the % escapes ------------------------------------------------------------------------------

def xapi_unprotect(s):
    """A literal port of xapi's Xml_spaces.unprotect (map2_unlikely over byte pairs)."""
    out, i, n = [], 0, len(s)
    while i < n:
        c, d = s[i], s[i + 1] if i + 1 < n else None
        if c == "%" and d in ("_", ".", "t", "n", "r", "%"):
            out.append({"_": "  ", ".": " ", "t": "\t", "n": "\n", "r": "\r", "%": "%"}[d])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_encode_escapes_every_space_and_the_whitespace_xml_would_normalise():
    assert encode_attr("a b  c") == "a%.b%.%.c"
    assert encode_attr(" x ") == "%.x%."
    assert encode_attr("\t\n\r%") == "%t%n%r%%"
    assert encode_attr("100% <&>\"'") == "100%%%.<&>\"'"  # entities are the XML layer's job
    assert encode_attr("") == "" and encode_attr("plain") == "plain"


def test_decode_examples():
    assert decode_attr("a%.b%.%.c") == "a b  c"
    assert decode_attr("%_") == "  "
    assert decode_attr("x%_y") == "x  y"
    assert decode_attr("%%.") == "%."
    assert decode_attr("%%%.") == "% "
    assert decode_attr("%q%") == "%q%"  # an unknown escape and a final % stay
    assert decode_attr("%t%n%r%%") == "\t\n\r%"


@given(st.text(alphabet="%._tnrqx \t"))
def test_decode_is_xapis_unprotect(s):
    assert decode_attr(s) == xapi_unprotect(s)


@given(st.text())
def test_decode_undoes_encode(s):
    assert decode_attr(encode_attr(s)) == s


def test_percent_underscore_reads_as_two_spaces():
    data = XAPI_FILE.replace(b"name__label=\"trailing%.%.\"", b"name__label=\"trailing%_\"")
    assert data != XAPI_FILE
    db = parse(data)
    assert db.tables["VM"][1]["name__label"] == "trailing  "
    assert render(db) == XAPI_FILE  # written back the modern way


def test_raw_whitespace_in_an_attribute_is_normalised_by_xml_which_is_why_xapi_escapes_it():
    data = one_line('''<?xml version="1.0" encoding="UTF-8"?>
<database><manifest><pair key="schema_major_vsn" value="5"/><pair key="schema_minor_vsn"
 value="909"/><pair key="generation_count" value="1"/></manifest><table name="t">
<row ref="r" a="x\ty\rz" b="x&#9;y%." c="&#37;."/></table></database>''')
    row = parse(data).tables["t"][0]
    assert row["a"] == "x y z"   # a literal TAB or CR became a space
    assert row["b"] == "x\ty "   # a character reference survives; entities first, then %
    assert row["c"] == " "


def test_ref_ctime_mtime_and_manifest_are_not_percent_escaped():
    db = RawDatabase(5, 909, 3, {"t": [{"ref": "Opaque Ref:%x", "__ctime": "1", "__mtime": "2",
                                        "col": "Opaque Ref:%x"}]}, [("note", "a b%")])
    data = render(db)
    assert b'<pair key="note" value="a b%"/>' in data
    assert b'<row ref="Opaque Ref:%x" __ctime="1" __mtime="2" col="Opaque%.Ref:%%x"/>' in data
    assert parse(data) == db


def test_control_characters_are_written_as_replacement_like_xmlm():
    db = RawDatabase(5, 909, 1, {"t": [{"ref": "r", "c": "a\x01b\x1f\ufffe"}]})
    assert parse(render(db)).tables["t"][0]["c"] == "a\ufffdb\ufffd\ufffd"


def test_manifest_extra_pairs_are_kept_after_the_three():
    data = XAPI_FILE.replace(b'value="4711"/>', b'value="4711"/><pair key="x&amp;y" value="1 2"/>')
    db = parse(data)
    assert db.manifest_extra == [("x&y", "1 2")]
    assert render(db) == data


# -- round trip ---------------------------------------------------------------------------------

# Everything XML 1.0 can carry (TAB, LF, CR included: they are %-escaped).
_XML_CHARS = st.characters(
    exclude_categories=("Cs",),
    exclude_characters=[chr(c) for c in range(0x20) if c not in (9, 10, 13)] + ["\ufffe",
                                                                                "\uffff"])
_TEXT = st.text(_XML_CHARS, max_size=30)
_PLAIN = st.text(st.characters(exclude_categories=("Cs",),
                               exclude_characters=[chr(c) for c in range(0x20)]
                               + ["\ufffe", "\uffff"]), max_size=20)
_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,12}", fullmatch=True)
_COLUMNS = _NAME.filter(lambda n: n not in ("ref", "__ctime", "__mtime"))


@st.composite
def raw_databases(draw):
    tables = {}
    for name in draw(st.lists(_NAME, max_size=5, unique=True)):
        columns = draw(st.lists(_COLUMNS, max_size=6, unique=True))
        rows = []
        for _ in range(draw(st.integers(0, 4))):
            row = {"ref": draw(_PLAIN), "__ctime": str(draw(st.integers(0, 2**63 - 1))),
                   "__mtime": str(draw(st.integers(0, 2**63 - 1)))}
            for column in draw(st.permutations(columns)):
                row[column] = draw(_TEXT)
            rows.append(row)
        tables[name] = rows
    extra = draw(st.lists(st.tuples(_NAME.filter(lambda k: k not in xmlfile._MANIFEST_KEYS),
                                    _PLAIN), max_size=3))
    return RawDatabase(draw(st.integers(-2**31, 2**31)), draw(st.integers(0, 10**6)),
                       draw(st.integers(-1, 2**63 - 1)), tables, extra)


@settings(max_examples=200, deadline=None)
@given(raw_databases())
def test_round_trip(db):
    data = render(db)
    back = parse(data)
    assert back == db
    assert list(back.tables) == sorted(db.tables)
    assert rows_as_lists(back.tables) == rows_as_lists(db.tables)
    assert render(back) == data
    assert parse(render_gz(db)) == db


# -- gzip ---------------------------------------------------------------------------------------

def test_gzip_round_trip_auto_detected_and_deterministic():
    db = parse(XAPI_FILE)
    gz = render_gz(db)
    assert gz[:2] == b"\x1f\x8b" and gz[4:8] == b"\0\0\0\0"  # mtime 0
    assert gz == render_gz(db)
    assert gzip.decompress(gz) == XAPI_FILE
    assert parse(gz) == db
    assert parse(gzip.compress(XAPI_FILE)) == db  # anyone's gzip


# -- errors -------------------------------------------------------------------------------------

def error_of(data, source="/var/lib/xcp/state.db"):
    with pytest.raises(DbFileError) as info:
        parse(data, source)
    assert info.value.source == source
    assert str(info.value).startswith(source + ": ")
    return str(info.value)


def test_corrupt_xml_names_the_file_line_and_column():
    message = error_of(XAPI_FILE.replace(b'<table name="host">', b'<table name="host>'))
    assert "line 2, column" in message
    assert "line 1, column 0" in error_of(b"")
    assert "line 2" in error_of(XAPI_FILE[:-20])  # truncated
    assert "line 1" in error_of(b"\x00\x01garbage")


def test_truncated_or_bad_gzip():
    gz = render_gz(parse(XAPI_FILE))
    assert "gzip" in error_of(gz[:len(gz) // 2])
    assert "gzip" in error_of(b"\x1f\x8b" + b"not gzip at all")


@pytest.mark.parametrize("key", ["schema_major_vsn", "schema_minor_vsn", "generation_count"])
def test_missing_manifest_pair_is_named(key):
    start = XAPI_FILE.index(f'<pair key="{key}"'.encode())
    end = XAPI_FILE.index(b"/>", start) + 2
    assert f"manifest has no {key}" in error_of(XAPI_FILE[:start] + XAPI_FILE[end:])


def test_missing_manifest_and_non_integer_values():
    start, end = XAPI_FILE.index(b"<manifest>"), XAPI_FILE.index(b"</manifest>") + 11
    assert "manifest has no schema_major_vsn" in error_of(XAPI_FILE[:start] + XAPI_FILE[end:])
    message = error_of(XAPI_FILE.replace(b'value="4711"', b'value="47x"'))
    assert "generation_count" in message and "'47x'" in message


def test_unexpected_structure_names_the_place():
    assert "unexpected element <foo>" in error_of(
        XAPI_FILE.replace(b'<table name="Bond"/>', b'<foo/>'))
    assert "<row> inside <database>" in error_of(
        XAPI_FILE.replace(b'<table name="Bond"/>', b'<row ref="x"/>'))
    assert "row without a ref" in error_of(XAPI_FILE.replace(b'<row ref="OpaqueRef:z"', b"<row"))
    assert "root" in error_of(b'<table name="x"/>')


def test_read_file_names_the_path(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"<database>")
    with pytest.raises(DbFileError, match=f"^{path}: XML error"):
        read_file(path)
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "missing.db")


# -- files --------------------------------------------------------------------------------------

def test_write_file_atomic_with_generation(tmp_path):
    path = tmp_path / "xcp" / "state.db"
    db = parse(XAPI_FILE)
    write_file(path, db)
    assert path.read_bytes() == XAPI_FILE
    assert (tmp_path / "xcp" / "state.db.generation").read_text() == "4711"
    assert read_generation(path) == 4711
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == ["state.db", "state.db.generation"]
    assert read_file(path) == db

    db.generation = 4712
    write_file(path, db, compress=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert read_file(path) == db and read_generation(path) == 4712
    assert sorted(os.listdir(path.parent)) == ["state.db", "state.db.generation"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "state.db"
    write_file(path, parse(XAPI_FILE))
    bad = parse(XAPI_FILE)
    bad.generation = 9999
    bad.tables["VM"][0]["name__label"] = object()  # render raises on it
    with pytest.raises((TypeError, AttributeError)):
        write_file(path, bad)
    with pytest.raises((TypeError, AttributeError)):
        write_file(path, bad, compress=True)
    assert path.read_bytes() == XAPI_FILE
    assert read_generation(path) == 4711
    assert sorted(os.listdir(tmp_path)) == ["state.db", "state.db.generation"]


def test_render_rejects_bad_names_and_rows_without_ref():
    for name in ("bad name", "", "1x", "a=b", 'q"', "x\x01"):
        with pytest.raises(ValueError):
            render(RawDatabase(5, 909, 1, {"t": [{"ref": "r", name: "x"}]}))
    db = RawDatabase(5, 909, 1, {"t": [{"ref": "r", "café_ünï": "x"}]})  # non-ASCII names
    assert parse(render(db)) == db
    with pytest.raises(ValueError):
        render(RawDatabase(5, 909, 1, {"t": [{"col": "x"}]}))


def test_read_generation(tmp_path):
    path = tmp_path / "state.db"
    assert read_generation(path) is None
    gen = tmp_path / "state.db.generation"
    gen.write_text("garbage")
    assert read_generation(path) is None
    gen.write_text("")
    assert read_generation(path) is None
    gen.write_bytes(b"\xff\xfe")
    assert read_generation(path) is None
    gen.write_text("12\n")
    assert read_generation(path) == 12


def test_big_files_are_fed_to_expat_in_pieces(monkeypatch):
    monkeypatch.setattr(xmlfile, "_CHUNK", 7)  # pieces that split UTF-8 sequences too
    assert render(parse(XAPI_FILE)) == XAPI_FILE
    assert "line 2" in error_of(XAPI_FILE[:-3])
