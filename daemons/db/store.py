"""The in-memory tables: rows with created/modified stamps, the global generation, per-table
deletion queues, the uuid and ref indexes, and the derived one-to-many sets.

Everything here is synchronous and applies primitive changes only; validation and errors live
in operations.py. A change is one of

    ("add", class, ref, values)      values: the full record, API names, typed
    ("del", class, ref)
    ("set", class, ref, field, value)
    ("touch", class, ref)            event.inject: stamps the row, the generation moves by 2

Each change stamps what it touches with the current generation, then adds 1. ``Undo`` records
how to take a change back, so a writer can apply a round of changes to validate them, undo them,
and apply them for good once they are durable.
"""

from collections import deque

from common import schema

DELETION_QUEUE_CAP = 512
DELETION_QUEUE_KEEP = 256


class Row:
    __slots__ = ("ref", "values", "created", "modified", "extra")

    def __init__(self, ref, values, created, modified, extra=None):
        self.ref = ref
        self.values = values          # API name -> typed value (derived sets excluded)
        self.created = created
        self.modified = modified
        self.extra = extra or {}      # state.db columns this schema does not know, kept as read


class Table:
    __slots__ = ("cls", "rows", "deleted")

    def __init__(self, cls):
        self.cls = cls
        self.rows = {}
        # (generation of the deletion, created stamp, ref, last snapshot)
        self.deleted = deque()


class Store:
    def __init__(self):
        self.generation = 0
        self.tables = {name: Table(cls) for name, cls in schema.CLASSES.items()}
        self.by_ref = {}              # ref -> class name
        self.by_uuid = {}             # uuid -> (class name, ref)
        # derived sets: (other class, other field) -> {target ref: set of refs}
        self.links = {(other, field): {} for other, field in _link_keys()}
        self.links_by_class = {}
        for key, index in self.links.items():
            self.links_by_class.setdefault(key[0], []).append((key, index))
        self.unknown_tables = {}      # table name -> raw rows (state.db tables we do not know)

    # -- reading -------------------------------------------------------------------------
    def table(self, name):
        return self.tables[name]

    def row(self, cls_name, ref):
        return self.tables[cls_name].rows.get(ref)

    def derived_value(self, cls, field, ref):
        other_class, other_field = field.derived
        return tuple(sorted(self.links[(other_class, other_field)].get(ref, ())))

    def record(self, cls_name, ref):
        """The full record with derived sets, API names."""
        table = self.tables[cls_name]
        row = table.rows[ref]
        record = dict(row.values)
        for name, field in table.cls.fields.items():
            if field.derived:
                record[name] = self.derived_value(table.cls, field, ref)
        return record

    # -- primitive changes ----------------------------------------------------------------
    def apply(self, change, undo=None):
        kind = change[0]
        if kind == "add":
            self._add(change[1], change[2], dict(change[3]), undo)
        elif kind == "del":
            self._delete(change[1], change[2], undo)
        elif kind == "set":
            self._set(change[1], change[2], change[3], change[4], undo)
        elif kind == "touch":
            self._touch(change[1], change[2], undo)
        else:
            raise ValueError(f"unknown change {kind!r}")

    def _bump(self, undo):
        stamp = self.generation
        self.generation += 1
        if undo is not None:
            undo.append(("gen", stamp))
        return stamp

    def _add(self, cls_name, ref, values, undo, extra=None, stamps=None):
        table = self.tables[cls_name]
        stamp = self._bump(undo) if stamps is None else None
        created, modified = stamps if stamps else (stamp, stamp)
        table.rows[ref] = Row(ref, values, created, modified, extra)
        self.by_ref[ref] = cls_name
        uuid = values.get("uuid")
        if uuid:
            self.by_uuid[uuid] = (cls_name, ref)
        if undo is not None:
            undo.append(("unadd", cls_name, ref))
        for (other_class, other_field), index in self._links_from(cls_name):
            target = values.get(other_field)
            self._link(index, other_class, target, ref, True, undo, stamp)

    def _delete(self, cls_name, ref, undo):
        table = self.tables[cls_name]
        row = table.rows.pop(ref)
        snapshot = self.record_of_row(table, row)
        stamp = self._bump(undo)
        del self.by_ref[ref]
        uuid = row.values.get("uuid")
        if uuid and self.by_uuid.get(uuid) == (cls_name, ref):
            del self.by_uuid[uuid]
        table.deleted.append((stamp, row.created, ref, snapshot))
        trimmed = []
        if len(table.deleted) > DELETION_QUEUE_CAP:
            while len(table.deleted) > DELETION_QUEUE_KEEP:
                trimmed.append(table.deleted.popleft())
        if undo is not None:
            undo.append(("undel", cls_name, row, trimmed))
        for (other_class, other_field), index in self._links_from(cls_name):
            self._link(index, other_class, row.values.get(other_field), ref, False, undo, stamp)

    def _set(self, cls_name, ref, field_name, value, undo):
        table = self.tables[cls_name]
        row = table.rows[ref]
        old = row.values.get(field_name)
        stamp = self._bump(undo)
        if undo is not None:
            undo.append(("unset", cls_name, ref, field_name, old, row.modified))
        row.values[field_name] = value
        row.modified = stamp
        if field_name == "uuid":
            if old and self.by_uuid.get(old) == (cls_name, ref):
                del self.by_uuid[old]
            if value:
                self.by_uuid[value] = (cls_name, ref)
        index = self.links.get((cls_name, field_name))
        if index is not None:
            self._link(index, _target_class(cls_name, field_name), old, ref, False, undo, stamp)
            self._link(index, _target_class(cls_name, field_name), value, ref, True, undo, stamp)

    def _touch(self, cls_name, ref, undo):
        """event.inject: the row is stamped one above the current generation, which then moves
        on by 2, so a token just below the stamp sees it."""
        row = self.tables[cls_name].rows[ref]
        self._bump(undo)
        stamp = self._bump(undo)
        if undo is not None:
            undo.append(("unstamp", row, row.modified))
        row.modified = stamp

    def _links_from(self, cls_name):
        return self.links_by_class.get(cls_name, ())

    def _link(self, index, _other, target, ref, present, undo, stamp):
        """Keep the derived set of ``target`` in step, and stamp the target row modified (its
        set changed), as xapi does for one-to-many relations."""
        if not target or target == "OpaqueRef:NULL":
            return
        members = index.setdefault(target, set())
        if present:
            if ref in members:
                return
            members.add(ref)
        else:
            if ref not in members:
                return
            members.discard(ref)
        if undo is not None:
            undo.append(("unlink", index, target, ref, present))
        target_class = self.by_ref.get(target)
        if target_class is not None:
            target_row = self.tables[target_class].rows.get(target)
            if target_row is not None and stamp is not None:
                if undo is not None:
                    undo.append(("unstamp", target_row, target_row.modified))
                target_row.modified = stamp

    def record_of_row(self, table, row):
        record = dict(row.values)
        for name, field in table.cls.fields.items():
            if field.derived:
                record[name] = self.derived_value(table.cls, field, row.ref)
        return record

    def rollback(self, undo):
        """Take back the changes recorded in ``undo``, newest first."""
        for entry in reversed(undo):
            kind = entry[0]
            if kind == "gen":
                self.generation = entry[1]
            elif kind == "unadd":
                _, cls_name, ref = entry
                row = self.tables[cls_name].rows.pop(ref)
                self.by_ref.pop(ref, None)
                uuid = row.values.get("uuid")
                if uuid and self.by_uuid.get(uuid) == (cls_name, ref):
                    del self.by_uuid[uuid]
            elif kind == "undel":
                _, cls_name, row, trimmed = entry
                table = self.tables[cls_name]
                table.deleted.pop()
                for item in reversed(trimmed):
                    table.deleted.appendleft(item)
                table.rows[row.ref] = row
                self.by_ref[row.ref] = cls_name
                if row.values.get("uuid"):
                    self.by_uuid[row.values["uuid"]] = (cls_name, row.ref)
            elif kind == "unset":
                _, cls_name, ref, field_name, old, modified = entry
                row = self.tables[cls_name].rows[ref]
                new = row.values.get(field_name)
                if field_name == "uuid":
                    if new and self.by_uuid.get(new) == (cls_name, ref):
                        del self.by_uuid[new]
                    if old:
                        self.by_uuid[old] = (cls_name, ref)
                if old is None:
                    row.values.pop(field_name, None)
                else:
                    row.values[field_name] = old
                row.modified = modified
            elif kind == "unlink":
                _, index, target, ref, present = entry
                members = index.setdefault(target, set())
                if present:
                    members.discard(ref)
                else:
                    members.add(ref)
            elif kind == "unstamp":
                _, row, modified = entry
                row.modified = modified

    # -- loading ----------------------------------------------------------------------------
    def load_row(self, cls_name, ref, values, created, modified, extra=None):
        """A row read from state.db, with its stamps; no generation bump."""
        self._add(cls_name, ref, values, None, extra=extra, stamps=(created, modified))

    def load_rows(self, cls_name, rows):
        """Many rows read from state.db, each ``(ref, values, created, modified, extra)``, as
        :meth:`load_row` would add them one by one (a ref given twice: the later row), with
        the derived sets filled in one pass at the end. Returns the number of rows given."""
        table_rows = self.tables[cls_name].rows
        by_ref, by_uuid = self.by_ref, self.by_uuid
        added = {}
        for ref, values, created, modified, extra in rows:
            row = added[ref] = table_rows[ref] = Row(ref, values, created, modified, extra)
            by_ref[ref] = cls_name
            uuid = values.get("uuid")
            if uuid:
                by_uuid[uuid] = (cls_name, ref)
        for (_other_class, other_field), index in self._links_from(cls_name):
            for ref, row in added.items():
                target = row.values.get(other_field)
                if target and target != "OpaqueRef:NULL":
                    members = index.get(target)
                    if members is None:
                        members = index[target] = set()
                    members.add(ref)
        return len(rows)

    def counts(self):
        return {name: len(table.rows) for name, table in self.tables.items()}


def _link_keys():
    keys = []
    for cls, field in schema.derived_sets():
        keys.append(field.derived)
    return keys


def _target_class(cls_name, field_name):
    return schema.CLASSES[cls_name].fields[field_name].ref_class
