"""xapi-db as xapi-liveness uses it: the db.* bus methods (daemons/db/front.py) through one
asyncio client, a timeout per call, and the few helpers the events thread needs. A call that
gets no answer raises DbUnreachable, so the caller can wait for xapi-db and resynchronise rather
than die (xapi-db restarts on its own; it keeps every acknowledged write)."""

import uuid as uuid_mod
from datetime import datetime, timezone

from common import schema
from common.errors import RpcTimeout, XapiError

NULL_REF = schema.NULL_REF
CALL_TIMEOUT_S = 3.0


class DbUnreachable(Exception):
    """xapi-db did not answer a call within its timeout (down, restarting or overloaded)."""


def new_ref():
    return f"OpaqueRef:{uuid_mod.uuid4()}"


def where(**eq):
    """A find/read_records_where expression: every field equal to its value (none: true)."""
    expr = ["true"]
    for name, value in eq.items():
        term = ["eq", ["field", name], ["literal", value]]
        expr = term if expr == ["true"] else ["and", expr, term]
    return expr


class LivenessDb:
    """``client``: anything with ``async call(method, *args, timeout_s=)`` (a
    common.rpc.AsyncRpcClient to this host's xapi-db)."""

    def __init__(self, client, timeout_s=CALL_TIMEOUT_S):
        self.client = client
        self.timeout_s = timeout_s
        self.calls = 0

    async def call(self, method, *args):
        self.calls += 1
        try:
            return await self.client.call(method, *args, timeout_s=self.timeout_s)
        except RpcTimeout as exc:
            raise DbUnreachable(str(exc)) from None

    async def ref_by_uuid(self, cls, uuid):
        """The ref of the ``cls`` row with ``uuid``, or None."""
        try:
            return await self.call("db.get_by_uuid", cls, uuid)
        except XapiError as exc:
            if exc.code == "UUID_INVALID":
                return None
            raise

    async def record(self, cls, ref):
        """The record of ``ref``, or None when it is not a row of ``cls``."""
        if not ref or ref == NULL_REF:
            return None
        try:
            return await self.call("db.read_record", cls, ref)
        except XapiError as exc:
            if exc.code == "HANDLE_INVALID":
                return None
            raise

    async def records(self, cls, **eq):
        """{ref: record} of the rows of ``cls`` whose fields equal ``eq``."""
        return await self.call("db.read_records_where", cls, where(**eq))

    async def batch(self, calls):
        """Writes applied atomically (all or none); nothing to send for no calls."""
        return await self.call("db.batch", list(calls)) if calls else []

    def close(self):
        close = getattr(self.client, "close", None)
        if close:
            close()


def utc_of(epoch_s):
    """An epoch time of the simulated hypervisor as the datetime a DB field holds (whole
    seconds, UTC)."""
    return datetime.fromtimestamp(int(epoch_s), timezone.utc)
