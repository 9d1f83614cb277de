"""xapi-db: the pool database engine (master mode): in-memory tables with generations, the
redo log, state.db persistence, events, the message store and the GC."""

import asyncio
import concurrent.futures

import zmq
import zmq.asyncio

from common import protocol
from common.daemon import Daemon
from daemons.db import front
from daemons.db.engine import Engine

FLUSH_CHECK_S = 2.0
GC_PERIOD_S = 30.0


class DbDaemon(Daemon):
    """The pool database. Loads the newest db.conf connection and replays the redo log before
    READY; flushes every 2 s when the generation moved; on a master, a GC pass every 30 s."""

    program = "xapi-db"

    async def setup(self):
        self.executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="db")
        self.pub = zmq.asyncio.Context.instance().socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.paths.db_events_socket.unlink(missing_ok=True)
        self.pub.bind(f"ipc://{self.paths.db_events_socket}")
        self.engine = Engine(self.paths, self.executor, publish=self.publish)
        await self.engine.open()
        front.register(self, self.engine)
        self.register("db.set_mode", self.set_mode, command=True)
        self.register("db.start_gc", self.start_gc, command=True)
        self.register("db.start_events", self.start_events, command=True)
        self.mode = None
        self.gc_enabled = False
        self.events_enabled = False
        self.hints_dropped = 0
        loop = asyncio.get_running_loop()
        self.loops = [loop.create_task(self.flush_loop()), loop.create_task(self.gc_loop())]

    def set_mode(self, mode):
        """Command: ``master`` (this host owns the pool DB). Slave mode is pool work."""
        if mode != "master":
            from common.errors import XapiError
            raise XapiError("NOT_IMPLEMENTED", "db.set_mode", mode, "slave mode is pool work")
        self.mode = mode
        return True

    def start_gc(self):
        """Command (master): a GC pass every 30 s from now on."""
        self.gc_enabled = True
        return True

    def start_events(self):
        """Command (master): publish every change on the PUB socket (xapi registers its event
        hooks at this step); db.events_since answers whether or not."""
        self.events_enabled = True
        return {"endpoint": f"ipc://{self.paths.db_events_socket}", "token": self.engine.token()}

    def publish(self, changes):
        """PUB a hint per change; subscribers catch up with db.events_since."""
        if not self.events_enabled:
            return
        token = self.engine.token()
        for change in changes:
            kind, cls_name, ref = change[0], change[1], change[2]
            op = {"add": "add", "del": "del"}.get(kind, "mod")
            row = self.engine.store.tables[cls_name].rows.get(ref)
            snapshot = self.engine.store.record(cls_name, ref) if row is not None else None
            payload = {"token": token, "op": op, "class": cls_name, "ref": ref,
                       "snapshot": snapshot}
            try:
                self.pub.send_multipart([f"{cls_name}\0".encode(), protocol.pack(payload)],
                                        flags=zmq.NOBLOCK)
            except zmq.Again:      # a hint only: subscribers catch up by token
                self.hints_dropped += 1

    async def flush_loop(self):
        while True:
            await asyncio.sleep(FLUSH_CHECK_S)
            try:
                await self.engine.flush()
            except Exception as exc:
                self.log.error("flush failed: %s", exc)

    async def gc_loop(self):
        while True:
            await asyncio.sleep(GC_PERIOD_S)
            if self.gc_enabled:
                try:
                    await self.engine.gc_pass()
                except Exception:
                    self.log.exception("GC pass failed")

    def stats(self):
        stats = super().stats()
        stats.update(self.engine.stats())
        stats["event_hints_dropped"] = self.hints_dropped
        return stats

    def health(self):
        health = super().health()
        health["mode"] = self.mode
        health["gc"] = self.gc_enabled
        health["events"] = self.events_enabled
        health["generation"] = self.engine.store.generation
        return health

    async def teardown(self):
        for task in self.loops:
            task.cancel()
        await asyncio.gather(*self.loops, return_exceptions=True)
        await self.engine.close()
        self.pub.close(0)
        self.executor.shutdown(wait=True)


main = DbDaemon.main
