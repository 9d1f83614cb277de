"""state.db: reading and writing xapi's XML database file, byte for byte as xapi does.

Schema-agnostic: every cell stays the string that is in the file (sets ``('a' 'b')`` and maps
``(('k' 'v'))`` included); the schema module turns them into typed values.

The format, as xapi writes it (``ocaml/database/db_xml.ml`` ``Db_xml.To`` through Xmlm with no
indentation, ``ocaml/database/xml_spaces.ml`` for the ``%`` escapes)::

    <?xml version="1.0" encoding="UTF-8"?>\\n
    <database><manifest><pair key="schema_major_vsn" value="5"/><pair key="schema_minor_vsn"
    value="909"/><pair key="generation_count" value="42"/></manifest><table name="Bond"/>
    <table name="VM"><row ref="OpaqueRef:.." __ctime="3" __mtime="7" PV__args="" ... _ref=
    "OpaqueRef:.." actions__after_crash="restart" ... uuid=".."/></table>...</database>

all of it after the declaration on one line, and no newline at the end (Xmlm's default
``~nl:false``). A table without rows is an empty element ``<table name="T"/>``.

- Row attributes: ``ref``, ``__ctime``, ``__mtime`` first (xapi's preamble), then the row's
  columns in the order of xapi's ``Row`` map, an OCaml ``Map`` over strings, i.e. sorted by
  byte value (= code point order). ``_ref`` is an ordinary column there, so it lands in sorted
  position: after the columns starting with an upper-case letter (``VBDs``, ``VIFs``), before
  the lower-case ones - not last. Rows are in ``Table`` map order (sorted by ref), tables in
  ``TableSet`` map order (sorted by name). :func:`render` writes tables sorted by name and rows
  and attributes in the order given; :func:`xapi_row` builds a row dict in xapi's order.
- Column values go through ``Xml_spaces.protect``: every space -> ``%.``, TAB -> ``%t``,
  LF -> ``%n``, CR -> ``%r``, ``%`` -> ``%%`` (every space, not only leading/trailing/double
  ones: XML attribute-value normalisation would turn raw TAB/LF/CR into spaces, and the escape is
  applied uniformly). Reading, ``Xml_spaces.unprotect`` also maps ``%_`` to two spaces (the
  CA-268761 backward-compatibility form); a ``%`` followed by anything else is kept as is.
  ``ref``, ``__ctime``, ``__mtime``, the table name and the manifest pairs are NOT ``%``-escaped
  (only columns are), so neither are they here.
- Then Xmlm's attribute escaping: ``<`` ``>`` ``&`` ``"`` become ``&lt;`` ``&gt;`` ``&amp;``
  ``&quot;``; ``'`` is left alone; other characters below U+0020 (never TAB/LF/CR) are
  written as U+FFFD. Non-ASCII is written as UTF-8.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from common.fileutil import atomic_write

__all__ = [
    "RawDatabase", "DbFileError", "parse", "render", "render_gz", "encode_attr", "decode_attr",
    "read_file", "write_file", "read_generation", "generation_path", "xapi_row",
    "decode_values",
]

SCHEMA_MAJOR = "schema_major_vsn"
SCHEMA_MINOR = "schema_minor_vsn"
GENERATION = "generation_count"
_MANIFEST_KEYS = (SCHEMA_MAJOR, SCHEMA_MINOR, GENERATION)

# Row attributes that xapi writes and reads verbatim (its preamble), without the %-escapes.
_PLAIN_ROW_ATTRS = frozenset(("ref", "__ctime", "__mtime"))

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
GZIP_MAGIC = b"\x1f\x8b"
# Feed expat in pieces: one Parse() call is limited to INT_MAX bytes.
_CHUNK = 1 << 24


class DbFileError(Exception):
    """A database file that cannot be read: ``source`` names the file."""

    def __init__(self, source, message):
        super().__init__(source, message)
        self.source = str(source)
        self.message = message

    def __str__(self):
        return f"{self.source}: {self.message}"


@dataclass
class RawDatabase:
    """The file's content as strings: tables -> rows (attribute -> decoded string)."""

    schema_major: int
    schema_minor: int
    generation: int
    tables: dict[str, list[dict[str, str]]]
    manifest_extra: list[tuple[str, str]] = field(default_factory=list)


# -- the %-escapes (Xml_spaces) ----------------------------------------------------------------

def encode_attr(text: str) -> str:
    """``Xml_spaces.protect``: the ``%`` escapes of a column value, before XML escaping."""
    if "%" in text:
        text = text.replace("%", "%%")
    if " " in text:
        text = text.replace(" ", "%.")
    if "\t" in text:
        text = text.replace("\t", "%t")
    if "\n" in text:
        text = text.replace("\n", "%n")
    if "\r" in text:
        text = text.replace("\r", "%r")
    return text


def _unprotect_part(s: str) -> str:
    # No "%%" in s, so every "%" pairs with the character after it and the
    # replacements cannot overlap or create new escapes.
    if "%." in s:
        s = s.replace("%.", " ")
    if "%" not in s:
        return s
    return (s.replace("%t", "\t").replace("%n", "\n").replace("%r", "\r")
            .replace("%_", "  "))


def decode_attr(raw: str) -> str:
    """``Xml_spaces.unprotect``: undo the ``%`` escapes of a column value (after XML entity
    decoding). ``%.`` space, ``%t`` TAB, ``%n`` LF, ``%r`` CR, ``%%`` ``%``, ``%_`` two spaces;
    any other ``%`` stays. Scanned left to right like xapi: ``%%.`` is ``%.``."""
    if "%" not in raw:
        return raw
    if "%%" in raw:
        # str.split takes the leftmost non-overlapping "%%", which is exactly how xapi's
        # left-to-right scan pairs a run of "%": the odd one out starts the next part.
        return "%".join([_unprotect_part(p) for p in raw.split("%%")])
    return _unprotect_part(raw)


def decode_values(values: list) -> list:
    """:func:`decode_attr` of every string in ``values`` (attribute values from expat), in
    a few C-level passes: the values are joined by NUL, which XML cannot carry, so no escape
    spans two values and each one decodes exactly as on its own."""
    joined = "\x00".join(values)
    if "%" not in joined:
        return values
    return decode_attr(joined).split("\x00")


# -- XML escaping (Xmlm's out_data) ------------------------------------------------------------

# Characters XML 1.0 cannot carry. Xmlm writes U+FFFD for the C0 controls; we do the same for
# the rest (lone surrogates, U+FFFE, U+FFFF), which Xmlm would write raw into an unreadable file.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_escape(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if '"' in text:
        text = text.replace('"', "&quot;")
    return text


def _cell(text: str) -> str:
    """A column value as it goes between the quotes: %-escapes, then XML escapes."""
    return _xml_escape(encode_attr(text))


_ASCII_NAME = re.compile(r"[A-Za-z_:][-.0-9A-Za-z_:]*\Z")


def _check_name(name):
    """An attribute name must be an XML name; ASCII ones by a regex, others by asking expat."""
    if isinstance(name, str) and _ASCII_NAME.match(name):
        return
    ok = isinstance(name, str) and bool(name) and not _NOT_XML_CHAR.search(name)
    if ok:
        try:
            expat.ParserCreate().Parse(f'<a {name}="x"/>', True)
        except expat.ExpatError:
            ok = False
    if not ok:
        raise ValueError(f"not usable as an XML attribute name: {name!r}")


# -- parsing -----------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+\Z", re.ASCII)


def _is_int(text):
    return _INT.match(text) is not None


class _Reader:
    """Expat callbacks building the RawDatabase; checks the element structure like xapi's
    ``Db_xml.From`` (database > manifest > pair, database > table > row)."""

    def __init__(self, parser, sink_for=None):
        self.parser = parser
        self.sink_for = sink_for
        self.stack = []
        self.tables = {}
        self.manifest = []
        self.rows = None
        self.raw_rows = False     # rows go to a sink with their column values still escaped
        self.table_name = None

    def fail(self, message):
        p = self.parser
        raise _StructureError(f"line {p.CurrentLineNumber}, column {p.CurrentColumnNumber}: "
                              f"{message}")

    def start(self, name, attrs):
        # attrs: expat's ordered_attributes form, [name, value, name, value, ...]
        stack = self.stack
        if name == "row":
            if not stack or stack[-1] != "table":
                self.fail(self._misplaced(name))
            if not attrs or (attrs[0] != "ref" and "ref" not in attrs[0::2]):
                self.fail(f"row without a ref attribute in table {self.table_name!r}")
            if self.raw_rows:
                self.rows.append(attrs)
                stack.append(name)
                return
            pairs = iter(attrs)
            attrs = dict(zip(pairs, pairs))
            for key, value in attrs.items():
                if "%" in value and key not in _PLAIN_ROW_ATTRS:
                    attrs[key] = decode_attr(value)
            self.rows.append(attrs)
            stack.append(name)
            return
        pairs = iter(attrs)
        attrs = dict(zip(pairs, pairs))
        if name == "pair":
            if not stack or stack[-1] != "manifest":
                self.fail(self._misplaced(name))
            if len(attrs) != 2 or "key" not in attrs or "value" not in attrs:
                self.fail("a manifest pair needs exactly the attributes key and value")
            self.manifest.append((attrs["key"], attrs["value"]))
        elif name == "table":
            if stack != ["database"]:
                self.fail(self._misplaced(name))
            if len(attrs) != 1 or "name" not in attrs:
                self.fail("a table needs exactly the attribute name")
            self.table_name = attrs["name"]
            sink = self.sink_for(self.table_name) if self.sink_for is not None else None
            self.raw_rows = sink is not None
            self.rows = sink if sink is not None else []
            # xapi: TableSet.add, a table given twice keeps the later one.
            self.tables.pop(self.table_name, None)
            self.tables[self.table_name] = self.rows
        elif name == "manifest":
            if stack != ["database"]:
                self.fail(self._misplaced(name))
        elif name == "database":
            if stack:
                self.fail(self._misplaced(name))
        else:
            self.fail(f"unexpected element <{name}>")
        stack.append(name)

    def end(self, name):
        self.stack.pop()

    def _misplaced(self, name):
        where = f"inside <{self.stack[-1]}>" if self.stack else "as the root element"
        return f"unexpected element <{name}> {where}"


class _StructureError(Exception):
    pass


def parse(data: bytes, source: str = "<state.db>", sink_for=None) -> RawDatabase:
    """Parse a state.db (plain or gzip, told by the magic bytes) into strings.

    ``sink_for(table_name)``, if given, may return a list-like object for a table: its
    ``append`` then receives each row's attributes as a flat list ``[name, value, ...]`` in
    file order, the column values still %-escaped (:func:`decode_attr` undoes them), and it
    stands as the table's rows in the result. This lets a loader convert rows while expat
    reads them, without a second pass over a list of decoded dicts. A table given twice asks
    again (xapi keeps the later one)."""
    source = str(source)
    if data[:2] == GZIP_MAGIC:
        try:
            import gzip   # only for .gz files; keeps it off xapi-db's start-up
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise DbFileError(source, f"bad gzip data: {e}") from None
    parser = expat.ParserCreate()
    parser.ordered_attributes = True     # a list per element: cheaper than a dict
    reader = _Reader(parser, sink_for)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.buffer_text = True
    try:
        view = memoryview(data)
        total = len(view)
        if total <= _CHUNK:
            parser.Parse(data, True)
        else:
            for offset in range(0, total, _CHUNK):
                parser.Parse(bytes(view[offset:offset + _CHUNK]), offset + _CHUNK >= total)
    except expat.ExpatError as e:
        raise DbFileError(source, f"XML error: {e}") from None
    except _StructureError as e:
        raise DbFileError(source, str(e)) from None
    manifest = {}
    extra = []
    for key, value in reader.manifest:
        if key in _MANIFEST_KEYS:
            manifest[key] = value  # xapi's List.assoc on the reversed list: the last one wins
        else:
            extra.append((key, value))
    numbers = []
    for key in _MANIFEST_KEYS:
        if key not in manifest:
            raise DbFileError(source, f"manifest has no {key}")
        value = manifest[key]
        if not _is_int(value):
            raise DbFileError(source, f"manifest {key} is not an integer: {value!r}")
        numbers.append(int(value))
    return RawDatabase(numbers[0], numbers[1], numbers[2], reader.tables, extra)


# -- rendering ---------------------------------------------------------------------------------

def xapi_row(ref: str, ctime, mtime, columns: dict[str, str]) -> dict[str, str]:
    """A row dict in the order xapi writes it: ``ref``, ``__ctime``, ``__mtime``, then the
    columns (``_ref`` among them) sorted by name."""
    row = {"ref": ref, "__ctime": str(ctime), "__mtime": str(mtime)}
    for name in sorted(columns):
        row[name] = columns[name]
    return row


def render(db: RawDatabase) -> bytes:
    """The file xapi would write: tables sorted by name, rows and attributes as given."""
    out = [XML_DECLARATION, "<database><manifest>"]
    pairs = [(SCHEMA_MAJOR, str(int(db.schema_major))), (SCHEMA_MINOR, str(int(db.schema_minor))),
             (GENERATION, str(int(db.generation)))]
    pairs.extend(db.manifest_extra)
    for key, value in pairs:
        out.append(f'<pair key="{_xml_escape(key)}" value="{_xml_escape(value)}"/>')
    out.append("</manifest>")
    checked = set()
    cache = {}  # value -> escaped text; cells repeat a lot ("()", "false", "OpaqueRef:NULL")
    append = out.append
    for name in sorted(db.tables):
        rows = db.tables[name]
        if not rows:
            append(f'<table name="{_xml_escape(name)}"/>')
            continue
        append(f'<table name="{_xml_escape(name)}">')
        for row in rows:
            if "ref" not in row:
                raise ValueError(f"a row of table {name!r} has no ref")
            parts = ["<row"]
            for key, value in row.items():
                if key not in checked:
                    _check_name(key)
                    checked.add(key)
                if key in _PLAIN_ROW_ATTRS:
                    text = _xml_escape(value)
                else:
                    text = cache.get(value)
                    if text is None:
                        text = cache[value] = _cell(value)
                parts.append(f' {key}="{text}"')
            parts.append("/>")
            append("".join(parts))
        append("</table>")
    append("</database>")
    document = "".join(out)
    if _NOT_XML_CHAR.search(document):
        document = _NOT_XML_CHAR.sub("\ufffd", document)
    return document.encode("utf-8")


def render_gz(db: RawDatabase) -> bytes:
    """gzip of :func:`render`, deterministic (no name, mtime 0)."""
    import gzip
    return gzip.compress(render(db), compresslevel=6, mtime=0)


# -- files -------------------------------------------------------------------------------------

def generation_path(path) -> Path:
    """The sibling file holding the generation count: ``<path>.generation``."""
    path = Path(path)
    return path.with_name(path.name + ".generation")


def read_file(path) -> RawDatabase:
    """Read and parse ``path``; an unreadable file raises the OSError as it is."""
    return parse(Path(path).read_bytes(), str(path))


def write_file(path, db: RawDatabase, compress: bool = False) -> None:
    """Write the database atomically (temp file, fsync, rename, fsync of the directory), mode
    0600 like xapi; then ``<path>.generation`` the same way. Rendering happens first, so a
    failure leaves the old file untouched."""
    data = render_gz(db) if compress else render(db)
    atomic_write(path, data, mode=0o600)
    atomic_write(generation_path(path), str(int(db.generation)))


def read_generation(path) -> int | None:
    """The count in ``<path>.generation``; None when missing or not an integer."""
    try:
        text = generation_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if _is_int(text) else None
