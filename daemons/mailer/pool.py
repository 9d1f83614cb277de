"""What xapi-mailer reads from xapi-db besides messages: the pool's other_config (the mail
settings), the pool's name (its name_label, else its master's, as mail-alarm names it) and the
name of a message's object.

Values are read afresh for each batch of messages (a change shows in the next batch's e-mails),
but the refs that lead to them are kept: the pool's ref and each object's ref (an object's uuid
names one ref for its life), so a batch costs one call for the settings and one per object's
name, made at once rather than one after another.
"""

import asyncio
import time
from collections import OrderedDict

from common import schema
from common.errors import XapiError
from daemons.mailer import settings as settings_mod

CALL_TIMEOUT_S = 10.0
NAME_CACHE_SIZE = 1024
REF_CACHE_SIZE = 4096
PREFETCH_AT_ONCE = 16


class PoolReader:
    def __init__(self, db, log, fqdn="localhost"):
        self.db = db
        self.log = log
        self.fqdn = fqdn
        self._settings = None
        self._read_at = 0.0
        self._reported = set()
        self._names = OrderedDict()
        self._pool_ref = None
        self._refs = OrderedDict()    # (class name, uuid) -> ref

    @property
    def last_settings(self):
        """The settings last read (None before the first read)."""
        return self._settings

    async def _call(self, method, *args):
        return await self.db.call(method, *args, timeout_s=CALL_TIMEOUT_S, retries=1)

    async def settings(self, max_age_s=0.0):
        """The MailSettings now (a cached copy younger than ``max_age_s`` will do). A bad key
        is logged once per distinct problem, naming the key and its value."""
        if self._settings is not None and time.monotonic() - self._read_at <= max_age_s:
            return self._settings
        record = None
        if self._pool_ref is not None:
            try:
                record = await self._call("db.read_record", "pool", self._pool_ref)
            except XapiError as exc:
                if exc.code != "HANDLE_INVALID":
                    raise
                self._pool_ref = None
        if record is None:
            refs = await self._call("db.read_refs", "pool")
            if refs:
                self._pool_ref = refs[0]
                record = await self._call("db.read_record", "pool", refs[0])
        other_config, pool_name = {}, ""
        if record is not None:
            other_config = record.get("other_config") or {}
            pool_name = record.get("name_label") or ""
            if not pool_name and record.get("master", "OpaqueRef:NULL") != "OpaqueRef:NULL":
                try:
                    pool_name = await self._call("db.read_field", "host", record["master"],
                                                 "name_label")
                except XapiError:
                    pool_name = ""
        parsed = settings_mod.parse(other_config, pool_name=pool_name, fqdn=self.fqdn)
        for key, text in parsed.problems:
            if (key, text) not in self._reported:
                self._reported.add((key, text))
                self.log.error("pool other_config key '%s': %s", key, text)
        self._settings, self._read_at = parsed, time.monotonic()
        return parsed

    def new_batch(self):
        """Names are cached for one batch of messages only: a renamed object shows its new
        name in the next batch's e-mails."""
        self._names.clear()

    async def object_name(self, cls, obj_uuid, pool_name=""):
        """The name_label of the message's object ("" when it has none or is gone)."""
        if cls == "Pool":
            return pool_name
        key = (cls, obj_uuid)
        if key in self._names:
            self._names.move_to_end(key)
            return self._names[key]
        try:
            schema_cls = schema.get_class(cls)
        except KeyError:
            return ""
        name = ""
        if "name_label" in schema_cls.fields:
            name = await self._read_name(schema_cls.name, obj_uuid)
        self._names[key] = name
        if len(self._names) > NAME_CACHE_SIZE:
            self._names.popitem(last=False)
        return name

    async def _read_name(self, cls, obj_uuid):
        """The object's name_label through its kept ref (looked up again if the ref is no
        longer valid); "" when the object is gone."""
        key = (cls, obj_uuid)
        for _ in range(2):
            ref = self._refs.get(key)
            try:
                if ref is None:
                    ref = await self._call("db.get_by_uuid", cls, obj_uuid)
                    self._refs[key] = ref
                    if len(self._refs) > REF_CACHE_SIZE:
                        self._refs.popitem(last=False)
                else:
                    self._refs.move_to_end(key)
                return await self._call("db.read_field", cls, ref, "name_label")
            except XapiError as exc:
                if self._refs.pop(key, None) is None or exc.code != "HANDLE_INVALID":
                    return ""
        return ""

    async def prefetch_names(self, keys):
        """Read the names of the objects ``keys`` ((cls, uuid) pairs) at once, a few calls at
        a time, into this batch's cache (Pool objects need none)."""
        todo = [k for k in dict.fromkeys(keys) if k[0] != "Pool" and k not in self._names]
        gate = asyncio.Semaphore(PREFETCH_AT_ONCE)

        async def one(cls, obj_uuid):
            async with gate:
                await self.object_name(cls, obj_uuid)
        await asyncio.gather(*(one(*k) for k in todo))
