"""xapi-liveness: the hypervisor events thread (built) and guest liveness (the xapi-liveness
issue, which shares this daemon's hypervisor watch)."""

import asyncio
import contextvars

from common import inventory as inventory_mod
from common.daemon import Daemon, current_task
from common.errors import XapiError
from common.platform.xensim import XenSim
from common.rpc import AsyncRpcClient
from daemons.liveness.dbclient import LivenessDb
from daemons.liveness.events import DomainEvents
from daemons.liveness.simwatch import SimChanges


class LivenessDaemon(Daemon):
    """The hypervisor events thread: domain changes mirrored into xapi-db (started by the
    command liveness.start_events, replayed after a restart). Guest liveness comes with the
    xapi-liveness issue."""

    program = "xapi-liveness"

    async def setup(self):
        self.sim = XenSim(self.paths.xensim)
        self.sim_changes = None      # one hypervisor watch for every consumer
        self.events = None
        self.events_task = None
        self.db = None
        self.register("liveness.start_events", self.start_events, command=True)

    def _host_uuid(self):
        path = self.paths.inventory
        try:
            uuid = inventory_mod.read_inventory(path).get(inventory_mod.INSTALLATION_UUID)
        except FileNotFoundError:
            raise XapiError("INVENTORY_MISSING", str(path)) from None
        if not uuid:
            raise XapiError("INVENTORY_KEY_MISSING", str(path), inventory_mod.INSTALLATION_UUID)
        return uuid

    def _watch(self):
        if self.sim_changes is None:
            self.sim_changes = SimChanges(self.sim, self.log)
            self.sim_changes.start()
        return self.sim_changes

    def start_events(self):
        """Command: start the events thread (a resync, then domain changes into xapi-db).
        Idempotent: a second call while it runs changes nothing."""
        if self.events_task is not None and not self.events_task.done():
            return {"started": False, "state": self.events.state}
        host_uuid = self._host_uuid()
        self.db = LivenessDb(AsyncRpcClient(self.paths.rpc_endpoint("xapi-db")))
        self.events = DomainEvents(self.sim, self._watch(), self.db, host_uuid, self.log)
        context = contextvars.copy_context()
        context.run(current_task.set, "events")     # its log lines say [events]
        self.events_task = asyncio.get_running_loop().create_task(self.events.run(),
                                                                  context=context)
        self.log.info("events: thread started for host %s, hypervisor %s", host_uuid,
                      self.sim.directory)
        return {"started": True, "host_uuid": host_uuid, "watch": self.sim_changes.mode}

    def health(self):
        health = super().health()
        health["events"] = self.events.status() if self.events else None
        return health

    def stats(self):
        stats = super().stats()
        if self.events:
            stats["events"] = self.events.status()
            stats["events"]["db_calls"] = self.db.calls
        if self.sim_changes:
            stats["hypervisor_watch"] = {"mode": self.sim_changes.mode,
                                         "generation": self.sim_changes.generation,
                                         "wakeups": self.sim_changes.wakeups}
        return stats

    async def teardown(self):
        if self.events_task is not None:
            self.events_task.cancel()
            await asyncio.gather(self.events_task, return_exceptions=True)
        if self.sim_changes is not None:
            await self.sim_changes.close()
        if self.db is not None:
            self.db.close()


main = LivenessDaemon.main
