"""The database on disk: the db.conf connections, loading the newest, writing all of them, and
the conversion between the store and xapi's state.db form (strings, xapi's column names).

Tables and columns this schema does not know are kept and written back unchanged (a newer
state.db survives a round trip); known columns the file lacks (an older state.db) get the
schema's defaults.
"""

import logging
import os
import time

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


def raw_to_store(raw, store, source):
    """Fill an empty store from a parsed state.db; returns the number of rows loaded."""
    loaded = 0
    for name, rows in raw.tables.items():
        cls = schema.CLASSES.get(name)
        if cls is None:
            store.unknown_tables[name] = rows
            log.info("%s: table %s is not in this schema: kept as it is", source, name)
            continue
        if not cls.persist:
            continue
        readers = [_ColumnReader(f) for f in cls.fields.values() if f.persist and not f.derived]
        plain = [(r.field.column, r.name) for r in readers if r.identity]
        decoded = [(r.field.column, r.name, r.cache, r.is_map, r) for r in readers
                   if not r.identity]
        known = {r.field.column for r in readers} | set(ROW_META)
        template = schema.default_record(cls)
        fresh = [key for key, value in template.items() if isinstance(value, dict)]
        for attrs in rows:
            ref = attrs.get("ref") or attrs.get("_ref")
            if not ref:
                log.warning("%s: a %s row without a ref was skipped", source, name)
                continue
            values = template.copy()
            for key in fresh:
                values[key] = {}
            get = attrs.get
            for column, key in plain:
                text = get(column)
                if text is not None:
                    values[key] = text
            for column, key, cache, is_map, reader in decoded:
                text = get(column)
                if text is None:
                    continue
                value = cache.get(text)          # inlined fast path of reader.read
                if value is None:
                    try:
                        value = reader.read(text)
                    except ValueError as exc:
                        log.warning("%s: %s %s: %s; the default is used", source, name, ref,
                                    exc)
                        continue
                elif is_map:
                    value = dict(value)
                values[key] = value
            unknown = attrs.keys() - known
            extra = {column: attrs[column] for column in attrs if column in unknown} \
                if unknown else {}
            created = _int(attrs.get("__ctime"))
            modified = _int(attrs.get("__mtime"), created)
            store.load_row(name, ref, values, created, modified, extra)
            loaded += 1
    store.generation = max(store.generation, raw.generation)
    store.manifest_extra = list(raw.manifest_extra)
    return loaded


class _ColumnReader:
    """from_string for one column, remembering the values of short texts: most cells repeat
    ("()", "false", "OpaqueRef:NULL", the epoch), which makes a large load several times
    faster. Maps are copied out, since the store's values must not share a dict."""

    CACHE_MAX_ENTRIES = 4096
    CACHE_MAX_TEXT = 64

    __slots__ = ("field", "name", "cache", "identity", "is_map")

    def __init__(self, field):
        self.field = field
        self.name = field.name
        self.cache = {}
        self.identity = field.type in ("string", "ref")
        self.is_map = field.type == "map"

    def read(self, text):
        if self.identity:
            return text
        value = self.cache.get(text)
        if value is None:
            value = schema.from_string(self.field, text)
            if len(text) <= self.CACHE_MAX_TEXT and len(self.cache) < self.CACHE_MAX_ENTRIES:
                self.cache[text] = value
        return dict(value) if self.is_map else value


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
                return xmlfile.read_file(conn.path), conn.path
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
