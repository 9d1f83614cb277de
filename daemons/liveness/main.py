"""xapi-liveness: the hypervisor events thread and guest liveness, sharing one hypervisor watch
(simwatch.SimChanges) and one client of xapi-db."""

import asyncio
import contextvars

from common import inventory as inventory_mod
from common.daemon import Daemon, current_task
from common.errors import ConfigError, XapiError
from common.platform.xensim import XenSim
from common.rpc import AsyncRpcClient
from daemons.liveness.dbclient import LivenessDb
from daemons.liveness.events import DomainEvents
from daemons.liveness.guests import GuestLiveness
from daemons.liveness.simwatch import SimChanges


class LivenessDaemon(Daemon):
    """The hypervisor events thread: domain changes mirrored into xapi-db (the command
    liveness.start_events), and guest liveness: VM_guest_metrics from the guest agents
    (liveness.start_guest_liveness); both commands are replayed after a restart."""

    program = "xapi-liveness"

    async def setup(self):
        self.sim = XenSim(self.paths.xensim)
        self.sim_changes = None      # one hypervisor watch for every consumer
        self.events = None
        self.events_task = None
        self.db = None
        self.guests = None
        self.guests_task = None
        self.guests_db = None
        self._db_client = None       # one client of xapi-db for both
        self.register("liveness.start_events", self.start_events, command=True)
        self.register("liveness.start_guest_liveness", self.start_guest_liveness, command=True)

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

    def _client(self):
        if self._db_client is None:
            self._db_client = AsyncRpcClient(self.paths.rpc_endpoint("xapi-db"))
        return self._db_client

    def _start_task(self, name, coroutine):
        context = contextvars.copy_context()
        context.run(current_task.set, name)         # its log lines say [name]
        return asyncio.get_running_loop().create_task(coroutine, context=context)

    def start_events(self):
        """Command: start the events thread (a resync, then domain changes into xapi-db).
        Idempotent: a second call while it runs changes nothing."""
        if self.events_task is not None and not self.events_task.done():
            return {"started": False, "state": self.events.state}
        host_uuid = self._host_uuid()
        self.db = LivenessDb(self._client())
        self.events = DomainEvents(self.sim, self._watch(), self.db, host_uuid, self.log)
        self.events_task = self._start_task("events", self.events.run())
        self.log.info("events: thread started for host %s, hypervisor %s", host_uuid,
                      self.sim.directory)
        return {"started": True, "host_uuid": host_uuid, "watch": self.sim_changes.mode}

    def _liveness_options(self):
        """(timeout, interval) in seconds from xapi.conf; a value that cannot work is a
        ConfigError naming where it was set and the key."""
        timeout_key, interval_key = "guest_liveness_timeout", "guest_liveness_interval"
        timeout, interval = self.config[timeout_key], self.config[interval_key]
        if timeout <= 0:
            raise ConfigError(f"must be more than 0 seconds, got {timeout:g}",
                              path=self.config.source(timeout_key), key=timeout_key)
        if interval < 0:
            raise ConfigError(f"must be 0 (the timeout) or more, got {interval:g}",
                              path=self.config.source(interval_key), key=interval_key)
        return timeout, interval or timeout

    def start_guest_liveness(self):
        """Command: start guest liveness (each Running guest's agent heartbeat against
        guest_liveness_timeout, every guest_liveness_interval and at every hypervisor change).
        Idempotent: a second call while it runs changes nothing."""
        if self.guests_task is not None and not self.guests_task.done():
            return {"started": False, "state": self.guests.state}
        timeout, interval = self._liveness_options()
        self.guests_db = LivenessDb(self._client())
        self.guests = GuestLiveness(self.sim, self._watch(), self.guests_db, timeout, interval,
                                    log=self.log)
        self.guests_task = self._start_task("guests", self.guests.run())
        self.log.info("guest liveness: started (timeout %g s, a check every %g s and at each "
                      "change of hypervisor %s)", timeout, interval, self.sim.directory)
        return {"started": True, "timeout_s": timeout, "interval_s": interval,
                "watch": self.sim_changes.mode}

    def health(self):
        health = super().health()
        health["events"] = self.events.status() if self.events else None
        health["guests"] = self.guests.status() if self.guests else None
        return health

    def stats(self):
        stats = super().stats()
        if self.events:
            stats["events"] = self.events.status()
            stats["events"]["db_calls"] = self.db.calls
        if self.guests:
            stats["guests"] = self.guests.status()
            stats["guests"]["db_calls"] = self.guests_db.calls
        if self.sim_changes:
            stats["hypervisor_watch"] = {"mode": self.sim_changes.mode,
                                         "generation": self.sim_changes.generation,
                                         "wakeups": self.sim_changes.wakeups}
        return stats

    async def teardown(self):
        tasks = [t for t in (self.events_task, self.guests_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.sim_changes is not None:
            await self.sim_changes.close()
        if self._db_client is not None:
            self._db_client.close()


main = LivenessDaemon.main
