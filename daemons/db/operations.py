"""The database operations of REFERENCE.md with their exact errors (as XenAPI error lists).

Reads look at the store directly. Writes go through a ``Transaction``, which applies each
primitive change at once (so later checks in the same round see it) and can take them all back.
Nothing is changed by a call that fails: its checks run before its first change.
"""

import uuid as uuid_mod

from common import schema
from common.errors import XapiError
from daemons.db.filters import compile_filter

NULL_REF = "OpaqueRef:NULL"
_CLASSES = schema.CLASSES
STRUCTURED_OPS = ("add_set", "remove_set", "add_map", "remove_map")


def new_ref():
    return f"OpaqueRef:{uuid_mod.uuid4()}"


class Transaction:
    """Changes applied to the store with a record of how to undo them."""

    def __init__(self, store):
        self.store = store
        self.changes = []
        self.generations = []      # the generation each change started at
        self.undo = []

    def apply(self, change):
        generation = self.store.generation
        self.store.apply(change, self.undo)
        self.changes.append(change)
        self.generations.append(generation)

    def savepoint(self):
        return len(self.undo), len(self.changes)

    def rollback_to(self, savepoint):
        undo_len, changes_len = savepoint
        self.store.rollback(self.undo[undo_len:])
        del self.undo[undo_len:]
        del self.changes[changes_len:]
        del self.generations[changes_len:]

    def rollback(self):
        self.rollback_to((0, 0))


class Operations:
    def __init__(self, store):
        self.store = store

    # -- lookups with XenAPI errors ----------------------------------------------------------
    def cls(self, name):
        if name not in schema.CLASSES:
            raise XapiError("DB_UNKNOWN_FIELD", str(name), "")
        return schema.CLASSES[name]

    def field(self, cls, name):
        field = cls.fields.get(name)
        if field is None:
            raise XapiError("DB_UNKNOWN_FIELD", cls.name, str(name))
        return field

    def row(self, cls, ref):
        row = self.store.tables[cls.name].rows.get(ref) if isinstance(ref, str) else None
        if row is None:
            raise XapiError("HANDLE_INVALID", cls.name, str(ref))
        return row

    # -- reads -------------------------------------------------------------------------------
    def get_table_from_ref(self, ref):
        return self.store.by_ref.get(ref)

    def is_valid_ref(self, ref):
        return ref in self.store.by_ref

    def read_refs(self, cls_name):
        return list(self.store.tables[self.cls(cls_name).name].rows)

    def read_field(self, cls_name, ref, field_name):
        try:    # the common case in one go; anything amiss takes the checked path below
            cls = _CLASSES[cls_name]
            field = cls.fields[field_name]
            row = self.store.tables[cls_name].rows[ref]
        except (KeyError, TypeError):
            cls = self.cls(cls_name)
            field = self.field(cls, field_name)
            row = self.row(cls, ref)
        if field.derived:
            return self.store.derived_value(cls, field, ref)
        return row.values.get(field_name, field.default)

    def read_fields(self, reads):
        """Batched reads: [[class, ref, field], ...] -> values (errors as error lists)."""
        out = []
        for cls_name, ref, field_name in reads:
            try:
                out.append(self.read_field(cls_name, ref, field_name))
            except XapiError as exc:
                out.append({"error": exc.description})
        return out

    def read_record(self, cls_name, ref):
        cls = self.cls(cls_name)
        self.row(cls, ref)
        return self.store.record(cls.name, ref)

    def get_by_uuid(self, cls_name, uuid):
        cls = self.cls(cls_name)
        found = self.store.by_uuid.get(uuid)
        if found is None or found[0] != cls.name:
            raise XapiError("UUID_INVALID", cls.name, str(uuid))
        return found[1]

    def get_by_name_label(self, cls_name, label):
        cls = self.cls(cls_name)
        self.field(cls, "name_label")
        return [ref for ref, row in self.store.tables[cls.name].rows.items()
                if row.values.get("name_label") == label]

    def find_refs_with_filter(self, cls_name, expr):
        cls = self.cls(cls_name)
        match = compile_filter(cls, expr)
        return [ref for ref in self.store.tables[cls.name].rows
                if match(self.store.record(cls.name, ref))]

    def read_records_where(self, cls_name, expr):
        cls = self.cls(cls_name)
        match = compile_filter(cls, expr)
        out = {}
        for ref in self.store.tables[cls.name].rows:
            record = self.store.record(cls.name, ref)
            if match(record):
                out[ref] = record
        return out

    def read_field_where(self, cls_name, where_field, where_value, return_field):
        cls = self.cls(cls_name)
        self.field(cls, where_field)
        self.field(cls, return_field)
        expr = ["eq", ["field", where_field], ["literal", where_value]]
        return [self.read_field(cls.name, ref, return_field)
                for ref in self.find_refs_with_filter(cls.name, expr)]

    # -- writes ---------------------------------------------------------------------------
    def _check_fields(self, cls, values):
        checked = {}
        if not isinstance(values, dict):
            raise XapiError("FIELD_TYPE_ERROR", "record")
        for name, value in values.items():
            field = self.field(cls, name)
            if field.derived:
                raise XapiError("FIELD_TYPE_ERROR", name)
            checked[name] = schema.check_value(field, value)
        return checked

    def create_row(self, txn, cls_name, values, ref=None):
        cls = self.cls(cls_name)
        values = self._check_fields(cls, values)
        record = schema.default_record(cls)
        record.update(values)
        if not record.get("uuid"):
            record["uuid"] = str(uuid_mod.uuid4())
        ref = ref or new_ref()
        if not isinstance(ref, str) or not ref.startswith("OpaqueRef:") or ref == NULL_REF:
            raise XapiError("INVALID_VALUE", "ref", str(ref))
        existing_class = self.store.by_ref.get(ref)
        if existing_class is not None:
            existing = self.store.tables[existing_class].rows[ref]
            if existing_class == cls.name and existing.values == record:
                return ref           # the same row again: nothing to do
            raise XapiError("INTEGRITY_VIOLATION", cls.name, ref)
        owner = self.store.by_uuid.get(record["uuid"])
        if owner is not None:
            raise XapiError("UNIQUENESS_CONSTRAINT_VIOLATION", cls.name, "uuid", record["uuid"])
        txn.apply(("add", cls.name, ref, record))
        return ref

    def delete_row(self, txn, cls_name, ref):
        cls = self.cls(cls_name)
        self.row(cls, ref)
        txn.apply(("del", cls.name, ref))

    def write_field(self, txn, cls_name, ref, field_name, value):
        cls = self.cls(cls_name)
        field = self.field(cls, field_name)
        if field.derived:
            raise XapiError("FIELD_TYPE_ERROR", field_name)
        row = self.row(cls, ref)
        value = schema.check_value(field, value)
        if row.values.get(field_name, field.default) == value:
            return False         # unchanged: no bump, no event
        if field_name == "uuid":
            owner = self.store.by_uuid.get(value)
            if owner is not None and owner != (cls.name, ref):
                raise XapiError("UNIQUENESS_CONSTRAINT_VIOLATION", cls.name, "uuid", value)
        txn.apply(("set", cls.name, ref, field_name, value))
        return True

    def process_structured_field(self, txn, cls_name, ref, field_name, op, key, value=None):
        """add_set / remove_set on a set; add_map / remove_map on a map (adding a key that is
        there with another value: MAP_DUPLICATE_KEY)."""
        cls = self.cls(cls_name)
        field = self.field(cls, field_name)
        row = self.row(cls, ref)
        if op not in STRUCTURED_OPS:
            raise XapiError("INVALID_VALUE", "operation", str(op))
        current = row.values.get(field_name, field.default)
        if op in ("add_set", "remove_set"):
            if field.type != "set" or field.derived:
                raise XapiError("FIELD_TYPE_ERROR", field_name)
            item = schema.check_value(field, [key])[0]
            if op == "add_set":
                new = current if item in current else tuple(current) + (item,)
            else:
                new = tuple(x for x in current if x != item)
        else:
            if field.type != "map":
                raise XapiError("FIELD_TYPE_ERROR", field_name)
            if op == "add_map":
                checked = schema.check_value(field, {key: value})
                (item_key, item_value), = checked.items()
                if item_key in current:
                    if current[item_key] == item_value:
                        return False
                    raise XapiError("MAP_DUPLICATE_KEY", cls.name, field_name, ref, item_key)
                new = dict(current)
                new[item_key] = item_value
            else:
                if not isinstance(key, str):
                    raise XapiError("FIELD_TYPE_ERROR", field_name)
                if key not in current:
                    return False
                new = {k: v for k, v in current.items() if k != key}
        if new == current:
            return False
        txn.apply(("set", cls.name, ref, field_name, schema.check_value(field, new)))
        return True

    def touch(self, txn, cls_name, ref):
        cls = self.cls(cls_name)
        self.row(cls, ref)
        txn.apply(("touch", cls.name, ref))
        return self.store.tables[cls.name].rows[ref].modified - 1
