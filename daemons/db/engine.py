"""The master database engine: the store, its writer and redo log, persistence, events,
messages and GC, as async methods. The RPC front (front.py) maps bus methods onto it; a slave
front will forward to the master's engine instead."""

import asyncio
import datetime
import gc
import logging
import time

from common import dbconf, protocol
from common.aio import wait_notified
from common.fileutil import atomic_write
from common.errors import XapiError
from daemons.db import events as events_mod
from daemons.db import gc as gc_mod
from daemons.db import persist
from daemons.db.messages import MessageStore
from daemons.db.operations import Operations
from daemons.db.redolog import RedoLog
from daemons.db.store import Store
from daemons.db.writer import RESERVE_STEP, Writer, replay

log = logging.getLogger("xapi-db")

MAX_EVENT_WAIT_S = 300.0


class Engine:
    def __init__(self, paths, executor, publish=None):
        self.paths = paths
        self.executor = executor
        self.publish = publish or (lambda changes: None)
        self.store = Store()
        self.ops = Operations(self.store)
        self.connections = dbconf.read_db_conf(paths)
        self.persistence = persist.Persistence(self.connections)
        self.redo = RedoLog(paths.redo_log, log)
        self.messages = MessageStore(paths.blobs / "messages", logger=log)
        self.writer = None
        self.loaded_from = None
        self.flushed_generation = None
        self.engine_started = False
        self._changed = None
        self._waiters = 0             # events_since calls waiting on _changed
        self.gc_passes = 0
        self.gc_deleted = 0

    # -- start --------------------------------------------------------------------------------
    async def open(self):
        """Load the newest connection, replay the redo log on top, start the writer."""
        loop = asyncio.get_running_loop()
        # The load makes millions of objects that all stay: with the cyclic GC on, its
        # collections would scan them again and again (a third of a large load's time).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            raw, source = await loop.run_in_executor(self.executor, self.persistence.load)
            if raw is not None:
                rows = persist.raw_to_store(raw, self.store, str(source))
                log.info("loaded %d row(s), generation %d, from %s", rows, raw.generation,
                         source)
        finally:
            if gc_was_enabled:
                gc.enable()
        self.loaded_from = str(source) if source else None
        records = await loop.run_in_executor(self.executor, self.redo.open)
        applied, skipped = replay(self.store, records)
        if records:
            log.info("redo log: %d record(s) replayed (%d change(s) skipped), generation %d",
                     applied, skipped, self.store.generation)
        await loop.run_in_executor(self.executor, self.messages.load)
        self.flushed_generation = None if records or raw is None else self.store.generation
        self._changed = asyncio.Condition()
        self.writer = Writer(self.store, self.redo, self._committed)
        self.writer.start()

    async def close(self):
        if self.writer is not None:
            await self.writer.stop()
        try:   # only if the generation moved since the last flush: a quick orderly restart
            await self.flush()
        except XapiError as exc:
            log.error("final flush failed: %s (the redo log keeps every write)", exc)
        self.redo.close()

    def _committed(self, changes):
        self.publish(changes)
        if self._waiters:      # no task per write round when no events_since is waiting
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self):
        async with self._changed:
            self._changed.notify_all()

    # -- the step "Start up database engine" ---------------------------------------------------
    async def start_engine(self):
        """Once per start of the tree (not replayed after a crash of xapi-db): apply a pending
        restore, one GC pass, every host disabled."""
        restored = await self.apply_restore()
        deleted = await self.gc_pass()
        hosts = list(self.store.tables["host"].rows)

        def disable(txn):
            for ref in hosts:
                self.ops.write_field(txn, "host", ref, "enabled", False)
        await self.writer.submit(disable)
        self.engine_started = True
        await self.flush(force=True)
        return {"restored": restored, "gc_deleted": deleted, "hosts_disabled": len(hosts),
                "generation": self.store.generation}

    async def apply_restore(self):
        path = self.paths.restore_db
        if not path.exists():
            return False
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(self.executor, persist.read_file, path)
        await self.writer.stop()
        fresh = Store()
        persist.raw_to_store(raw, fresh, str(path))
        fresh.generation = max(fresh.generation, self.store.generation + 1)
        self.store.__dict__.update(fresh.__dict__)
        await loop.run_in_executor(self.executor, self.redo.truncate, None)
        self.writer = Writer(self.store, self.redo, self._committed)
        self.writer.start()
        await self.flush(force=True)
        path.unlink()
        log.info("restored the database from %s (generation %d)", path, self.store.generation)
        return True

    # -- writes ----------------------------------------------------------------------------------
    async def write(self, fn):
        return await self.writer.submit(fn)

    def write_future(self, fn):
        """As :meth:`write`, as a future (see Writer.submit_future)."""
        return self.writer.submit_future(fn)

    async def batch(self, calls):
        """Several writes atomically: all are applied, or none (the first error is raised)."""
        writers = {"create_row": self.ops.create_row, "delete_row": self.ops.delete_row,
                   "write_field": self.ops.write_field,
                   "process_structured_field": self.ops.process_structured_field}
        checked = []
        for index, call in enumerate(calls):
            if not isinstance(call, (list, tuple)) or not call or call[0] not in writers:
                raise XapiError("INVALID_VALUE", "batch", f"call {index}: {call!r}")
            checked.append((writers[call[0]], list(call[1:])))

        def run(txn):
            return [fn(txn, *args) for fn, args in checked]
        return await self.writer.submit(run)

    async def gc_pass(self):
        doomed = gc_mod.doomed_rows(self.store)

        def delete(txn):
            for cls_name, ref, reason in doomed:
                if ref in self.store.tables[cls_name].rows:
                    log.info("GC: deleting %s %s: %s", cls_name, ref, reason)
                    self.ops.delete_row(txn, cls_name, ref)
        if doomed:
            await self.writer.submit(delete)
        self.gc_passes += 1
        self.gc_deleted += len(doomed)
        return len(doomed)

    def touch_session(self, ref, when=None):
        """session.last_active, coalesced: kept in memory without a generation bump or an
        event, so an API call that only reads costs nothing on disk."""
        row = self.store.tables["session"].rows.get(ref)
        if row is None:
            raise XapiError("HANDLE_INVALID", "session", str(ref))
        row.values["last_active"] = when or datetime.datetime.now(datetime.timezone.utc)
        return True

    # -- events --------------------------------------------------------------------------------
    def token(self):
        return events_mod.make_token(self.store.generation - 1, self.messages.generation)

    async def events_since(self, classes, token, timeout_s):
        wanted, want_messages = events_mod.parse_classes(classes)
        db_since, msg_since = events_mod.parse_token(token)
        timeout_s = max(0.0, min(float(timeout_s), MAX_EVENT_WAIT_S))
        deadline = time.monotonic() + timeout_s
        while True:
            db_generation = self.store.generation - 1
            found = events_mod.collect(self.store, wanted, db_since)
            message_generation = self.messages.generation
            if want_messages:
                message_events, message_generation = self._message_events(msg_since)
                found += message_events
            left = deadline - time.monotonic()
            if found or db_since is None or left <= 0:
                return {"events": found,
                        "valid_ref_counts": events_mod.valid_ref_counts(self.store, wanted),
                        "token": events_mod.make_token(db_generation, message_generation)}
            self._waiters += 1
            try:
                async with self._changed:     # woken by a commit, or the deadline: look again
                    await wait_notified(self._changed, left)
            finally:
                self._waiters -= 1

    def _message_events(self, since):
        """Message events above ``since`` and the message generation they are complete to
        (taken together: a message created meanwhile is in the next call)."""
        events, generation = self.messages.events_since(since or 0)
        now = "%.6f" % time.time()
        return [{"id": str(e["generation"]), "timestamp": now, "class": "message",
                 "operation": e["operation"], "ref": e["ref"], "snapshot": e["snapshot"]}
                for e in events], generation

    async def inject(self, cls_name, ref):
        below = await self.writer.submit(lambda txn: self.ops.touch(txn, cls_name, ref))
        return events_mod.make_token(below, self.messages.generation)

    # -- messages --------------------------------------------------------------------------------
    async def message_create(self, name, priority, cls, obj_uuid, body):
        loop = asyncio.get_running_loop()
        message = await loop.run_in_executor(
            self.executor, self.messages.create, name, priority, cls, obj_uuid, body)
        await self._notify()
        return message.ref

    async def message_destroy(self, ref):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.messages.destroy, ref)
        await self._notify()

    # -- flush -----------------------------------------------------------------------------------
    async def flush(self, force=False):
        """Write the snapshot to the connections if the generation moved; then cut the redo
        log up to what the snapshot holds."""
        if self.flushed_generation == self.store.generation and not force:
            return False
        generation = self.store.generation
        raw = persist.store_to_raw(self.store)       # on the loop: a consistent snapshot
        upto_seq = self.writer.applied_seq           # the records this snapshot holds
        loop = asyncio.get_running_loop()
        written = await loop.run_in_executor(self.executor, self.persistence.write_all, raw,
                                             force)
        if written < len(self.connections):
            return False      # a write-limited connection is not due: the log keeps it all
        if upto_seq is not None:
            await self._keep_reservation(generation)
            await loop.run_in_executor(self.executor, self.redo.truncate, upto_seq)
        self.flushed_generation = generation
        return True

    async def _keep_reservation(self, snapshot_generation):
        """Before the log is cut, what its cut records reserved must still hold: generations
        handed out while the snapshot was written (touches, sessions, tasks are not logged)
        get a reservation record that outlives the cut; if none were handed out, the
        reservation drops to the snapshot's generation in this same loop tick, so the next
        unlogged change reserves again in a record the cut keeps."""
        if self.store.generation > snapshot_generation:
            reserved = max(self.writer.reserved, self.store.generation + RESERVE_STEP)
            await self.redo.append({"g": self.store.generation, "c": [], "r": reserved})
            self.writer.reserved = max(self.writer.reserved, reserved)
        else:
            self.writer.reserved = min(self.writer.reserved, snapshot_generation)

    async def dump(self, path=None):
        """The database in state.db form: written to ``path`` (atomically), or returned."""
        from daemons.db import xmlfile
        raw = persist.store_to_raw(self.store)
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self.executor, xmlfile.render, raw)
        if path:
            await loop.run_in_executor(self.executor, atomic_write, path, data, 0o600)
            return {"generation": raw.generation, "path": path, "bytes": len(data)}
        if len(data) > protocol.MAX_FRAME_BYTES // 2:
            raise XapiError("DB_DUMP_TOO_LARGE", str(len(data)), "use a file")
        return {"generation": raw.generation, "xml": data.decode("utf-8")}

    def stats(self):
        return {
            "rows": self.store.counts(),
            "generation": self.store.generation,
            "message_generation": self.messages.generation,
            "messages": self.messages.stats(),
            "redo_log": self.redo.stats,
            "write_rounds": self.writer.rounds if self.writer else 0,
            "write_errors": self.writer.errors if self.writer else 0,
            "flushes": self.persistence.flushes,
            "flush_ms_last": self.persistence.flush_ms_last,
            "flush_ms_max": round(self.persistence.flush_ms_max, 3),
            "flush_error": self.persistence.last_error,
            "flushed_generation": self.flushed_generation,
            "gc_passes": self.gc_passes,
            "gc_deleted": self.gc_deleted,
            "loaded_from": self.loaded_from,
            "engine_started": self.engine_started,
        }
