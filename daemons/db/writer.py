"""The single writer: group commit of validated changes through the redo log.

Requests queue up while a round's fsync is in flight; the next round takes them all. A round
applies each request to the store (so each sees the ones before it), records the primitive
changes, takes them all back, appends the persistent ones to the redo log as one record (one
write, one fsync), and only then applies them for good. So readers never see a write before it
is durable, and a failed fsync leaves the store exactly as it was.

Changes to non-persistent tables (session, task) and touches are not logged, but the generation
they use is: a record may carry ``r``, a reservation of generations, so that after a crash the
generation restarts above every token handed out and an event token never goes backwards.
"""

import asyncio
import logging

from common import schema
from common.errors import XapiError
from daemons.db.operations import Transaction

log = logging.getLogger("xapi-db")

RESERVE_STEP = 10000
STOP_GRACE_S = 10.0


def is_logged(change):
    kind, cls_name = change[0], change[1]
    return kind != "touch" and schema.CLASSES[cls_name].persist


class Writer:
    def __init__(self, store, redo, on_commit):
        self.store = store
        self.redo = redo
        self.on_commit = on_commit        # called with the changes of a round, once applied
        self.reserved = store.generation
        self.rounds = 0
        self.errors = 0
        self.applied_seq = None
        self._queue = []
        self._wake = asyncio.Event()
        self._task = None
        self._stopping = False

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        """Stop taking rounds; callers still waiting get DB_STOPPING (their writes were not
        made durable, so not applied)."""
        if self._task:
            self._stopping = True
            self._wake.set()
            try:   # the round in flight finishes: its writes are acknowledged, not lost
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_S)
            except asyncio.TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        queued, self._queue = self._queue, []
        _fail(queued, XapiError("DB_STOPPING", "xapi-db is stopping; retry"))

    async def submit(self, fn):
        """Run ``fn(txn)`` in the next round; returns its result once durable and visible."""
        return await self.submit_future(fn)

    def submit_future(self, fn):
        """As :meth:`submit`, handing back the future itself (the RPC front answers from its
        done callback, without a task per write)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        self._wake.set()
        return future

    async def _run(self):
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            batch, self._queue = self._queue, []
            if batch:
                try:
                    await self._round(batch)
                except asyncio.CancelledError:
                    _fail(batch, XapiError("DB_STOPPING", "xapi-db is stopping; retry"))
                    raise
                except Exception as exc:   # never leave a caller hanging
                    log.exception("write round failed")
                    _fail(batch, XapiError("INTERNAL_ERROR", str(exc)))

    async def _round(self, batch):
        txn = Transaction(self.store)
        start_generation = self.store.generation
        outcomes = []
        for fn, future in batch:
            savepoint = txn.savepoint()
            try:
                outcomes.append((future, fn(txn), None))
            except XapiError as exc:
                txn.rollback_to(savepoint)
                outcomes.append((future, None, exc))
            except Exception as exc:   # a bug in fn: take back its changes, the round goes on
                log.exception("write function failed")
                txn.rollback_to(savepoint)
                outcomes.append((future, None, XapiError("INTERNAL_ERROR", str(exc))))
        end_generation = self.store.generation
        changes = list(txn.changes)
        generations = list(txn.generations)
        txn.rollback()
        # each logged change with the generation it started at: replay stamps it the same,
        # even when unlogged changes (touches, sessions, tasks) came before it in the round
        logged = [[generation, change] for generation, change in zip(generations, changes)
                  if is_logged(change)]
        record = {"g": start_generation, "c": logged}
        if end_generation > self.reserved:
            record["r"] = end_generation + RESERVE_STEP
        if logged or "r" in record:
            try:
                seq = await self.redo.append(record)
            except Exception as exc:
                self.errors += 1
                log.error("redo log append failed: %s; %d write(s) refused", exc, len(batch))
                for future, _result, _error in outcomes:
                    if not future.done():
                        future.set_exception(XapiError("DB_WRITE_FAILED", str(exc)))
                return
            self.reserved = max(self.reserved, record.get("r", 0))
        else:
            seq = None
        for change in changes:
            self.store.apply(change)
        if seq is not None:
            self.applied_seq = seq      # the store holds every record up to this one
        self.rounds += 1
        if changes:
            self.on_commit(changes)
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


def _fail(batch, error):
    for _fn, future in batch:
        if not future.done():
            future.set_exception(error)


def replay(store, records):
    """Apply redo records on top of a snapshot; returns (records applied, changes skipped).
    A record whose round started below the snapshot's generation is already in it (a crash
    between a flush and the cut of the log): only its reservation counts."""
    snapshot_generation = store.generation
    reserved = store.generation
    applied = skipped = 0
    for record in records:
        if not isinstance(record, dict):
            skipped += 1
            continue
        reserved = max(reserved, int(record.get("r", 0)))
        if int(record.get("g", 0)) < snapshot_generation:
            continue
        store.generation = max(store.generation, int(record.get("g", 0)))
        for entry in record.get("c", []):
            try:
                generation, change = entry
                store.generation = max(store.generation, int(generation))
                store.apply(normalise(change))
            except (KeyError, ValueError, IndexError, TypeError, XapiError) as exc:
                skipped += 1
                log.warning("redo replay: change %r skipped: %s", entry, exc)
        applied += 1
    store.generation = max(store.generation, reserved)
    return applied, skipped


def normalise(change):
    """A change as read back from the redo log (lists for tuples) in the store's typed form."""
    kind, cls_name, ref = change[0], change[1], change[2]
    cls = schema.CLASSES[cls_name]
    if kind == "add":
        values = {name: schema.check_value(cls.fields[name], value)
                  for name, value in change[3].items()}
        return (kind, cls_name, ref, values)
    if kind == "set":
        return (kind, cls_name, ref, change[3], schema.check_value(cls.fields[change[3]], change[4]))
    return (kind, cls_name, ref)
