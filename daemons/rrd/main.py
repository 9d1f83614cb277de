"""xapi-rrd: the metrics monitor. Host and VM metrics every 5 s into round-robin databases, the
DB usage from xapi-db, host_metrics.memory_* kept in the DB, archives on disk.

RPC (besides sys.*):
- ``rrd.load_host_rrd(uuid)``: dbsync's "load the host RRD": its archive into memory (once);
  returns a note (loaded, no archive, or corrupt and set aside).
- ``rrd.start_monitor()`` / ``rrd.start_dbcalls_monitor()``: commands of the start-up steps
  "Start monitoring thread" and "Start database calls monitoring thread" (replayed after a
  restart): the 5 s loop, and DB usage sampling in it.
- ``rrd.flush()``: write the archives changed since their last save; ``rrd.backup()``: write
  every archive. Both return {"files", "bytes"}.
- ``rrd.updates(params)``: rrd_updates as text (xport XML, or JSON when params json is true);
  params as the HTTP query gives them: start, interval, cf, host, vm_uuid, json.
- ``rrd.host_rrd()`` / ``rrd.vm_rrd(uuid)``: the full RRD as rrdtool dump XML.
Archives are also written at SIGTERM, and loaded at start.
"""

import asyncio
import time

from common import inventory as inventory_mod
from common.daemon import Daemon
from common.errors import XapiError
from common.platform import hostfacts, xensim
from common.rpc import AsyncRpcClient
from daemons.rrd import archive
from daemons.rrd.monitor import HostSampler, db_values, next_deadline, vm_values
from daemons.rrd.store import HOST, VM, RrdStore

MIN_MAX_KEY = "create_min_max_in_new_VM_RRDs"
DB_TIMEOUT_S = 4.0    # a DB call must not hold up the 5 s cycle


class RrdDaemon(Daemon):
    """The metrics monitor (xcp-rrdd and xapi's monitor threads)."""

    program = "xapi-rrd"

    async def setup(self):
        self.clock = time.time
        self.host_uuid = self._read_host_uuid()
        self.store = RrdStore(self.paths)
        self.sampler = HostSampler(self.paths.sys_class_net, self.clock)
        self.sim = xensim.XenSim(self.paths.xensim)
        self.db = AsyncRpcClient(self.paths.rpc_endpoint("xapi-db"), timeout_s=DB_TIMEOUT_S)
        self.monitor_task = None
        self.dbcalls = False
        self.cycles = 0
        self.cycle_errors = 0
        self.last_cycle_error = None
        self.cycle_cpu_s_last = 0.0
        self.late_cycles = 0
        self.memory_written = None          # (total, free) last written to host_metrics
        self.host_metrics_ref = None
        self.vm_min_max = False
        if self.host_uuid:
            self.store.load(self.host_uuid, HOST)
        self.store.load_all(self.host_uuid)
        reg = self.register
        reg("rrd.load_host_rrd", self.load_host_rrd)
        reg("rrd.start_monitor", self.start_monitor, command=True)
        reg("rrd.start_dbcalls_monitor", self.start_dbcalls_monitor, command=True)
        reg("rrd.flush", self.flush)
        reg("rrd.backup", self.backup)
        reg("rrd.updates", self.updates)
        reg("rrd.host_rrd", self.host_rrd)
        reg("rrd.vm_rrd", self.vm_rrd)

    def _read_host_uuid(self):
        try:
            inv = inventory_mod.read_inventory(self.paths.inventory)
        except FileNotFoundError:
            self.log.warning("no inventory at %s: the host RRD waits for rrd.load_host_rrd",
                             self.paths.inventory)
            return None
        return inv.get(inventory_mod.INSTALLATION_UUID)

    # -- RPC ------------------------------------------------------------------------------
    def load_host_rrd(self, uuid):
        archive.check_uuid(uuid)
        if self.host_uuid and uuid != self.host_uuid:
            raise XapiError("INVALID_VALUE", "uuid", uuid,
                            f"this host is {self.host_uuid} (inventory)")
        self.host_uuid = uuid
        return self.store.load(uuid, HOST)

    def start_monitor(self):
        if self.monitor_task is None or self.monitor_task.done():
            self.monitor_task = asyncio.get_running_loop().create_task(self._monitor_loop())
            self.log.info("monitoring loop started (every 5 s)")
        return True

    def start_dbcalls_monitor(self):
        self.dbcalls = True
        return True

    async def flush(self):
        files, size = await self._save(only_dirty=True)
        return {"files": files, "bytes": size}

    async def backup(self):
        files, size = await self._save(only_dirty=False)
        return {"files": files, "bytes": size}

    async def _save(self, only_dirty):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.store.save, only_dirty)

    def updates(self, params):
        if not self.host_uuid:
            raise XapiError("RRD_NOT_FOUND", HOST, "unknown host uuid")
        return self.store.rrd_updates(self.host_uuid, params)

    def host_rrd(self):
        return self.store.dump(self.host_uuid, HOST)

    def vm_rrd(self, uuid):
        return self.store.dump(archive.check_uuid(uuid), VM)

    def stats(self):
        stats = super().stats()
        stats.update({
            "rrds": len(self.store.entries), "cycles": self.cycles,
            "cycle_errors": self.cycle_errors, "last_cycle_error": self.last_cycle_error,
            "late_cycles": self.late_cycles, "cycle_cpu_s_last": self.cycle_cpu_s_last,
            "saves": self.store.saves, "save_errors": self.store.save_errors,
            "last_save_error": self.store.last_save_error,
            "monitoring": self.monitor_task is not None and not self.monitor_task.done(),
            "dbcalls": self.dbcalls})
        return stats

    # -- the loop -------------------------------------------------------------------------
    async def _monitor_loop(self):
        deadline = next_deadline(self.clock())
        while True:
            await asyncio.sleep(max(0.0, deadline - self.clock()))
            try:
                await self.cycle(int(deadline))
            except Exception as exc:   # noqa: BLE001 - one bad cycle must not end the loop
                self.cycle_errors += 1
                self.last_cycle_error = f"{type(exc).__name__}: {exc}"
                self.log.exception("monitoring cycle at %s failed", deadline)
            now = self.clock()
            following = next_deadline(now)
            if following > deadline + 5:
                self.late_cycles += 1
                self.log.warning("monitoring cycle at %s ended at %.1f: %d cycle(s) skipped",
                                 deadline, now, int((following - deadline) // 5) - 1)
            deadline = following

    async def cycle(self, t):
        """One monitoring cycle at ``t``: sample, update every RRD, keep host_metrics."""
        loop = asyncio.get_running_loop()
        cpu0 = time.process_time()
        host_values, vms = await loop.run_in_executor(None, self._sample)
        if self.dbcalls:
            try:
                host_values.update(db_values(await self.db.call("sys.stats")))
            except XapiError as exc:
                self.log.info("DB usage not sampled: %s", exc)
        if self.host_uuid:
            self.store.update(self.host_uuid, HOST, t, host_values)
        if vms:
            await self._refresh_vm_min_max()
        for uuid, values in vms.items():
            if uuid != self.host_uuid:
                self.store.update(uuid, VM, t, values, self.vm_min_max)
        await self._write_host_memory(host_values)
        self.cycles += 1
        self.cycle_cpu_s_last = round(time.process_time() - cpu0, 6)

    def _sample(self):
        host_values = self.sampler.sample()
        try:
            vms = vm_values(self.sim)
        except XapiError as exc:
            self.log.warning("simulated hypervisor not read: %s", exc)
            vms = {}
        return host_values, vms

    async def _refresh_vm_min_max(self):
        """The pool's other_config create_min_max_in_new_VM_RRDs, read when VMs are sampled."""
        try:
            pools = await self.db.call("db.read_records_where", "pool", ["true"])
        except XapiError:
            return
        for record in pools.values():
            value = (record.get("other_config") or {}).get(MIN_MAX_KEY, "false")
            self.vm_min_max = str(value).lower() == "true"

    async def _write_host_memory(self, values):
        """host_metrics.memory_total / memory_free (bytes), written when the total changed or
        the free memory moved by more than hostfacts.MEMORY_FREE_SLACK of the total (it moves
        at every sample: written each time, it would keep the database busy on an idle host)."""
        if not self.host_uuid or "memory_total_kib" not in values:
            return
        memory = (int(values["memory_total_kib"]) * 1024, int(values["memory_free_kib"]) * 1024)
        written = self.memory_written
        if written is not None and written[0] == memory[0] and \
                abs(written[1] - memory[1]) <= hostfacts.MEMORY_FREE_SLACK * memory[0]:
            return
        try:
            if self.host_metrics_ref is None:
                host = await self.db.call("db.get_by_uuid", "host", self.host_uuid)
                self.host_metrics_ref = await self.db.call("db.read_field", "host", host,
                                                           "metrics")
            await self.db.call("db.batch", [
                ["write_field", "host_metrics", self.host_metrics_ref, "memory_total",
                 memory[0]],
                ["write_field", "host_metrics", self.host_metrics_ref, "memory_free",
                 memory[1]]])
            self.memory_written = memory
        except XapiError as exc:
            self.host_metrics_ref = None
            self.log.info("host_metrics memory not written: %s", exc)

    # -- stop -----------------------------------------------------------------------------
    async def teardown(self):
        if self.monitor_task is not None:
            self.monitor_task.cancel()
            await asyncio.gather(self.monitor_task, return_exceptions=True)
        files, size = self.store.save(only_dirty=True)
        self.log.info("archives saved at stop: %d file(s), %d bytes", files, size)
        self.db.close()


main = RrdDaemon.main
