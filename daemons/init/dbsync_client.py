"""xapi-db as dbsync uses it: DbClient and its helpers (new refs, timestamps, comparing values
as they come back from the bus, field filters)."""

import uuid as uuid_mod
from datetime import datetime, timezone

from common import schema
from common.protocol import same  # noqa: F401 - dbsync's steps import it from here
from common.errors import XapiError

NULL_REF = schema.NULL_REF


def new_ref():
    return f"OpaqueRef:{uuid_mod.uuid4()}"


def now_utc():
    return datetime.now(timezone.utc).replace(microsecond=0)


def _eq(field, value):
    return ["eq", ["field", field], ["literal", value]]


def _where(**eq):
    expr = ["true"]
    for field, value in eq.items():
        term = _eq(field, value)
        expr = term if expr == ["true"] else ["and", expr, term]
    return expr


class DbClient:
    """xapi-db as dbsync needs it: the bus methods through ``caller.call(method, *args)``
    (a common.rpc.RpcClient, or anything with that method) plus a few helpers."""

    def __init__(self, caller):
        self.caller = caller

    @classmethod
    def connect(cls, ctx):
        """This host's xapi-db, as every step reaches it (HostContext.rpc)."""
        return cls(ctx.rpc("xapi-db"))

    def close(self):
        close = getattr(self.caller, "close", None)
        if close:
            close()

    def call(self, method, *args):
        return self.caller.call(method, *args)

    # -- reads ------------------------------------------------------------------------------
    def get_by_uuid_or_none(self, cls, uuid):
        try:
            return self.call("db.get_by_uuid", cls, uuid)
        except XapiError as exc:
            if exc.code == "UUID_INVALID":
                return None
            raise

    def record(self, cls, ref):
        """The record, or None when ``ref`` is not a row of ``cls``."""
        if not ref or ref == NULL_REF:
            return None
        try:
            return self.call("db.read_record", cls, ref)
        except XapiError as exc:
            if exc.code == "HANDLE_INVALID":
                return None
            raise

    def is_valid_ref(self, ref):
        return bool(ref) and ref != NULL_REF and self.call("db.is_valid_ref", ref)

    def find(self, cls, **eq):
        """The refs of ``cls`` whose fields equal ``eq`` (all of them; none given: every row)."""
        return self.call("db.find_refs_with_filter", cls, _where(**eq))

    def records(self, cls, **eq):
        """{ref: record} of the rows of ``cls`` whose fields equal ``eq``."""
        return self.call("db.read_records_where", cls, _where(**eq))

    # -- writes -----------------------------------------------------------------------------
    def create(self, cls, values, ref=None):
        """A new row (ref chosen here, so a retried call is a no-op); returns its ref."""
        return self.call("db.create_row", cls, values, ref or new_ref())

    def delete(self, cls, ref):
        self.call("db.delete_row", cls, ref)

    def batch(self, calls):
        return self.call("db.batch", list(calls)) if calls else []

    def update(self, cls, ref, values, current=None):
        """Write the fields of ``values`` that differ from the row (in one atomic batch);
        returns the names written."""
        if current is None:
            current = self.call("db.read_record", cls, ref)
        changed = [name for name, value in values.items()
                   if not same(current.get(name), value)]
        self.batch([["write_field", cls, ref, name, values[name]] for name in changed])
        return changed

    def ensure_row(self, cls, key_fields, values):
        """The row of ``cls`` whose fields equal ``key_fields``: created with ``key_fields`` and
        ``values`` if there is none, else its differing ``values`` written. Returns
        (ref, "created" | "updated" | "unchanged")."""
        found = self.records(cls, **key_fields)
        if not found:
            return self.create(cls, {**key_fields, **values}), "created"
        ref = sorted(found)[0]
        changed = self.update(cls, ref, values, found[ref])
        return ref, ("updated" if changed else "unchanged")
