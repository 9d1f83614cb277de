"""The database on disk: the db.conf connections, loading the newest, writing all of them, and
the conversion between the store and xapi's state.db form (strings, xapi's column names).

Tables and columns this schema does not know are kept and written back unchanged (a newer
state.db survives a round trip); known columns the file lacks (an older state.db) get the
schema's defaults.
"""

import logging
import os
import re
import time
from itertools import chain, compress
from operator import is_, itemgetter
from pathlib import Path

from common import schema
from common.errors import XapiError
from daemons.db import xmlfile

log = logging.getLogger("xapi-db")

ROW_META = ("ref", "__ctime", "__mtime", "_ref")
WRITE_LIMIT_INTERVAL_S = 300.0


def store_to_raw(store):
    tables = {}
    for name, table in store.tables.items():
        cls = table.cls
        rows = []
        if cls.persist:
            columns = [f for f in cls.fields.values() if f.persist and not f.derived]
            for ref in sorted(table.rows):
                row = table.rows[ref]
                cells = dict(row.extra)
                for field in columns:
                    cells[field.column] = schema.to_string(
                        field, row.values.get(field.name, field.default))
                cells["_ref"] = ref
                rows.append(xmlfile.xapi_row(ref, row.created, row.modified, cells))
        tables[name] = rows
    for name, rows in store.unknown_tables.items():
        tables[name] = rows
    return xmlfile.RawDatabase(
        schema_major=schema.SCHEMA_MAJOR_VSN, schema_minor=schema.SCHEMA_MINOR_VSN,
        generation=store.generation, tables=tables,
        manifest_extra=list(getattr(store, "manifest_extra", [])))


def read_file(path):
    """Parse ``path`` with the rows of the schema's persistent tables converted to typed
    values while expat reads them (see :func:`raw_to_store`); OSError and
    xmlfile.DbFileError as :func:`xmlfile.read_file`."""
    source = str(path)
    return xmlfile.parse(Path(path).read_bytes(), source, sink_for=_sinks(source))


def _sinks(source):
    readers = {}        # class name -> its column readers, shared if a table comes twice

    def sink_for(name):
        cls = schema.CLASSES.get(name)
        if cls is None or not cls.persist:
            return None
        if name not in readers:
            readers[name] = _column_readers(cls, escaped=True)
        return _TableLoader(cls, readers[name], source, escaped=True)
    return sink_for


def raw_to_store(raw, store, source):
    """Fill an empty store from a parsed state.db; returns the number of rows loaded. Tables
    read by :func:`read_file` come converted; plain string rows are converted here."""
    loaded = 0
    for name, rows in raw.tables.items():
        cls = schema.CLASSES.get(name)
        if cls is None:
            store.unknown_tables[name] = rows
            log.info("%s: table %s is not in this schema: kept as it is", source, name)
            continue
        if not cls.persist:
            continue
        if not isinstance(rows, _TableLoader):
            readers = _column_readers(cls, escaped=False)
            loader = _TableLoader(cls, readers, source, escaped=False)
            for attrs in rows:
                loader.append(list(chain.from_iterable(attrs.items())))
            rows = loader
        loaded += store.load_rows(name, rows)
    store.generation = max(store.generation, raw.generation)
    store.manifest_extra = list(raw.manifest_extra)
    return loaded


_MISS = object()
_decode = xmlfile.decode_attr


class _TableLoader(list):
    """The rows of one known table as ``(ref, values, created, modified, extra)``, converted
    as they are appended (each as the flat ``[name, value, ...]`` list the parser gives).
    A file's rows almost all share one attribute order (xapi writes every row of a table
    with the same columns, sorted), so matching attributes to fields is done once per order
    (:class:`_Layout`) and each row is then mostly C-level passes."""

    def __init__(self, cls, readers, source, escaped):
        super().__init__()
        self.cls = cls
        self.readers = readers
        self.source = source
        self.escaped = escaped
        self.template = schema.default_record(cls)
        self.layouts = {}
        self.last = None

    def append(self, attrs):
        layout = self.last
        if layout is None or attrs[0::2] != layout.names:
            names = tuple(attrs[0::2])
            layout = self.layouts.get(names)
            if layout is None:
                layout = self.layouts[names] = _Layout(self, names)
            self.last = layout
        row = layout.convert(attrs)
        if row is not None:
            list.append(self, row)


def _getter(positions):
    """A function giving the items at ``positions`` of a sequence, always as a tuple."""
    if not positions:
        return lambda seq: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda seq: (seq[only],)
    return itemgetter(*positions)


class _Layout:
    """How the rows with one attribute order become store rows: the values of known columns
    looked up all at once in their columns' caches (keyed by the text as it is in the file,
    so a hit costs no %-decoding either), and only the misses (uuids, names, long or rare
    values) read one by one."""

    def __init__(self, table, names):
        self.table = table
        self.template = table.template
        self.names = list(names)
        # positions in the flat [name, value, ...] list: the value of attribute i is at 2i+1
        position = {name: 2 * i + 1 for i, name in enumerate(names)}
        self.ref_at = position.get("ref")
        self.alt_ref_at = position.get("_ref")
        self.ctime_at = position.get("__ctime")
        self.mtime_at = position.get("__mtime")
        by_column = {r.field.column: r for r in table.readers}
        known, extra = [], []
        for name, at in position.items():
            reader = by_column.get(name)
            if reader is not None:
                known.append((at, reader))
            elif name not in ROW_META:
                extra.append((at, name))
        self.readers = [reader for _, reader in known]
        self.keys = [reader.name for reader in self.readers]
        self.cells_get = _getter([at for at, _ in known])
        self.caches = [reader.cache for reader in self.readers]
        self.misses = [_MISS] * len(known)
        self.positions = range(len(known))
        self.extra_names = [name for _, name in extra]
        self.extra_get = _getter([at for at, _ in extra])
        self.escaped = table.escaped
        # every map (from the file through the shared caches, or the template's own) is
        # copied into each row: the store's values never share a dict
        self.map_keys = [key for key, value in self.template.items() if isinstance(value, dict)]
        self.map_get = _getter(self.map_keys)

    def convert(self, attrs):
        ref = attrs[self.ref_at] if self.ref_at is not None else None
        if not ref and self.alt_ref_at is not None:
            ref = attrs[self.alt_ref_at]
            if self.escaped:
                ref = xmlfile.decode_attr(ref)
        if not ref:
            log.warning("%s: a %s row without a ref was skipped", self.table.source,
                        self.table.cls.name)
            return None
        values = self.template.copy()
        cells = self.cells_get(attrs)
        found = list(map(dict.get, self.caches, cells, self.misses))
        values.update(zip(self.keys, found))
        if _MISS in found:
            self._read_misses(values, ref, found, cells)
        values.update(zip(self.map_keys, map(dict, self.map_get(values))))
        extra = {}
        if self.extra_names:
            texts = self.extra_get(attrs)
            if self.escaped:
                texts = xmlfile.decode_values(list(texts))
            extra = dict(zip(self.extra_names, texts))
        try:
            created = int(attrs[self.ctime_at])
            modified = int(attrs[self.mtime_at])
        except (TypeError, ValueError):      # a stamp missing (position None) or not a number
            created = _int(attrs[self.ctime_at]) if self.ctime_at is not None else 0
            modified = (_int(attrs[self.mtime_at], created) if self.mtime_at is not None
                        else created)
        return ref, values, created, modified, extra

    def _read_misses(self, values, ref, found, cells):
        readers = self.readers
        # the positions of the misses, found in C
        for i in compress(self.positions, map(is_, found, self.misses)):
            reader = readers[i]
            try:
                values[reader.name] = reader.fill(cells[i])
            except ValueError as exc:
                log.warning("%s: %s %s: %s; the default is used", self.table.source,
                            self.table.cls.name, ref, exc)
                values[reader.name] = self.template[reader.name]


def _column_readers(cls, escaped):
    return [_ColumnReader(f, escaped) for f in cls.fields.values()
            if f.persist and not f.derived]


class _ColumnReader:
    """One column's cells to typed values, remembering the values of short cells: most
    repeat ("()", "false", "OpaqueRef:NULL", the epoch), which makes a large load several
    times faster. The cache is keyed by the cell as given: still %-escaped when ``escaped``.
    Cached maps are shared: the loader copies every map into its row."""

    CACHE_MAX_ENTRIES = 4096
    CACHE_MAX_TEXT = 64

    __slots__ = ("field", "name", "cache", "room", "identity", "fast", "escaped")

    def __init__(self, field, escaped):
        self.field = field
        self.name = field.name
        self.cache = {}
        self.room = True
        self.escaped = escaped
        self.identity = field.type in ("string", "ref")
        self.fast = None
        if field.item_type != "enum":      # sets and maps of enums drop unknown values
            self.fast = {"map": _fast_map, "set": _fast_set}.get(field.type)

    def fill(self, cell):
        """The typed value of a ``cell`` not in the cache (kept there if short and there is
        room); ValueError as schema.from_string."""
        text = _decode(cell) if self.escaped and "%" in cell else cell
        if self.identity:
            value = text
        else:
            value = self.fast(text) if self.fast is not None else None
            if value is None:
                value = schema.from_string(self.field, text)
        if self.room and len(cell) <= self.CACHE_MAX_TEXT:
            cache = self.cache
            cache[cell] = value
            self.room = len(cache) < self.CACHE_MAX_ENTRIES
        return value


# The S-expressions xapi writes for sets and maps of plain atoms (no backslash escapes), read
# by two regexes; anything else (escapes, double quotes, odd spacing, a key given twice) goes
# through schema.from_string, which gives the same value for these.
_SIMPLE_MAP = re.compile(r"\((?:\('[^'\\]*' '[^'\\]*'\)(?: (?=\())?)*\)\Z")
_MAP_PAIR = re.compile(r"\('([^'\\]*)' '([^'\\]*)'\)")
_SIMPLE_SET = re.compile(r"\((?:'[^'\\]*'(?: (?='))?)*\)\Z")
_SET_ATOM = re.compile(r"'([^'\\]*)'")


def _fast_map(text):
    if _SIMPLE_MAP.match(text) is None:
        return None
    pairs = _MAP_PAIR.findall(text)
    value = dict(pairs)
    return value if len(value) == len(pairs) else None


def _fast_set(text):
    if _SIMPLE_SET.match(text) is None:
        return None
    return tuple(_SET_ATOM.findall(text))


def _int(text, default=0):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


class Persistence:
    """The db.conf connections of one host."""

    def __init__(self, connections):
        self.connections = connections
        self.last_write = {}          # path -> time of the last write
        self.flushes = 0
        self.flush_ms_last = None
        self.flush_ms_max = 0.0
        self.last_error = None
        self.unusable = set()         # files that exist but could not be read

    def load(self):
        """The newest usable connection: (RawDatabase, path) or (None, None) when there is
        no database yet. A corrupt file is logged and the next newest tried; none usable raises
        DB_LOAD_FAILED naming the file and the parse error."""
        candidates = []
        for conn in self.connections:
            if conn.path.exists():
                generation = xmlfile.read_generation(conn.path)
                candidates.append((generation if generation is not None else -1, conn))
        if not candidates:
            return None, None
        candidates.sort(key=lambda item: item[0], reverse=True)
        errors = []
        for _generation, conn in candidates:
            try:
                return read_file(conn.path), conn.path
            except (xmlfile.DbFileError, OSError) as exc:
                log.error("database %s is unusable: %s; trying the next newest", conn.path, exc)
                self.unusable.add(conn.path)
                errors.append(str(exc))
        raise XapiError("DB_LOAD_FAILED", "; ".join(errors))

    def write_all(self, raw, force=True):
        """Write the snapshot to every connection (write limits apply unless ``force``).
        A file that is there but could not be read is moved aside first, never overwritten."""
        started = time.monotonic()
        written = 0
        for conn in self.connections:
            if not force and not self._due(conn):
                continue
            try:
                self._set_aside_if_unreadable(conn.path)
                xmlfile.write_file(conn.path, raw, compress=conn.compress)
                self.last_write[conn.path] = time.monotonic()
                written += 1
            except OSError as exc:
                self.last_error = f"{conn.path}: {exc}"
                log.error("flush to %s failed: %s (the old file is intact; the redo log keeps "
                          "every acknowledged write)", conn.path, exc)
                raise XapiError("DB_FLUSH_FAILED", str(conn.path), str(exc)) from None
        took_ms = (time.monotonic() - started) * 1000
        self.flushes += 1
        self.flush_ms_last = round(took_ms, 3)
        self.flush_ms_max = max(self.flush_ms_max, took_ms)
        self.last_error = None
        return written

    def _due(self, conn):
        """``write_limit`` connections (flash or remote storage) are written at most once per
        WRITE_LIMIT_INTERVAL_S; ``no_limit`` ones whenever the generation moved."""
        if conn.mode != "write_limit":
            return True
        last = self.last_write.get(conn.path)
        return last is None or time.monotonic() - last >= WRITE_LIMIT_INTERVAL_S

    def _set_aside_if_unreadable(self, path):
        """A file that failed to load is kept for the operator, never overwritten."""
        if path not in self.unusable or not path.exists():
            return
        aside = path.with_name(f"{path.name}.corrupt.{int(time.time())}")
        os.rename(path, aside)
        self.unusable.discard(path)
        log.warning("%s could not be read at start: kept as %s", path, aside)
