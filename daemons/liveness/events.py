"""The events thread (the seed's "Start events thread", xapi's Events.listen_xal): domain changes
of the hypervisor mirrored into xapi-db. It runs inside xapi-liveness (DESIGN.md section 1).

What it keeps in step, for every guest domain of this host's simulated hypervisor (domain 0 is
dbsync's control domain record and is left alone):

- VM.power_state, VM.domid (-1 without a live domain) and VM.resident_on (this host while the
  domain is Running or Paused, NULL once it is not);
- its VM_metrics: memory_actual, VCPUs_number, and start_time while it runs;
- a domain without a VM record gets one (uuid and name_label from the domain, memory and vCPUs
  from it, not a template), as soon as it appears;
- a domain that stops or is destroyed: its VM becomes Halted, domid -1, not resident, its VBDs
  and VIFs detached, its VM_guest_metrics deleted (xapi's force_state_reset: guest liveness
  makes new ones when the agent of the next boot reports); the record stays.

On (re)start, and after any failure, a full resync first: every domain against its VM and every
VM resident here against the domains (one whose domain went while nobody watched is Halted).
Then it follows the hypervisor's generation (simwatch.SimChanges) and mirrors only the domains
that changed. A VM that is resident on another host is never taken from it for a domain that is
not live here. Writes for one domain go in one db.batch, and only for values that differ, so a
quiet resync writes nothing. xapi-db not answering (a restart): logged once per outage, retried
with a capped backoff, then a full resync.
"""

import asyncio
import logging

from common.errors import XapiError
from common.protocol import same
from common.platform.xensim import PAUSED, RUNNING
from daemons.liveness.retrying import Retrying
from daemons.liveness.dbclient import utc_of, NULL_REF, DbUnreachable, new_ref

LIVE = (RUNNING, PAUSED)
HALTED = "Halted"
RETRY_MIN_S = 0.25
RETRY_MAX_S = 2.0
IDLE_WAIT_S = 60.0      # a wait for the next change is re-armed this often (no work without one)


def domain_key(domain):
    """What of a domain the mirror follows: a change of any of these is written."""
    return (domain["power_state"], domain["domid"], domain["memory_kib"], domain["vcpus"],
            domain["running_since"])


def metrics_values(domain):
    values = {"memory_actual": domain["memory_kib"] * 1024, "VCPUs_number": domain["vcpus"]}
    if domain["power_state"] in LIVE and domain["running_since"] is not None:
        values["start_time"] = utc_of(domain["running_since"])
    return values


def new_vm_values(domain, host, metrics):
    """The VM record of a domain that has none."""
    live = domain["power_state"] in LIVE
    memory = domain["memory_kib"] * 1024
    return {
        "uuid": domain["uuid"], "name_label": domain["name"], "name_description": "",
        "is_a_template": False, "user_version": 1,
        "power_state": domain["power_state"], "domid": domain["domid"] if live else -1,
        "resident_on": host if live else NULL_REF,
        "memory_static_min": memory, "memory_dynamic_min": memory,
        "memory_dynamic_max": memory, "memory_static_max": memory, "memory_target": memory,
        "VCPUs_max": domain["vcpus"], "VCPUs_at_startup": domain["vcpus"],
        "metrics": metrics,
    }


def _writes(cls, ref, current, wanted):
    return [["write_field", cls, ref, name, value] for name, value in wanted.items()
            if not same(current.get(name), value)]


class DomainEvents(Retrying):
    """The mirror of ``sim`` (a XenSim) into ``db`` (a dbclient.LivenessDb) for the host whose
    uuid is ``host_uuid``, woken by ``changes`` (a simwatch.SimChanges)."""

    LABEL = "events"
    OUTAGE_PLAN = ", then resynchronising"
    ERROR_PLAN = "retrying with a full resync"
    RECOVERED = "resynchronised"

    def __init__(self, sim, changes, db, host_uuid, log=None):
        self.sim = sim
        self.changes = changes
        self.db = db
        self.host_uuid = host_uuid
        self.log = log or logging.getLogger("xapi-liveness")
        self.host = None             # this host's ref, looked up at each resync
        self.mirrored = {}           # domain uuid -> domain_key last written
        self.seen = None             # the sim generation last mirrored
        self.state = "starting"
        self.counts = {"resyncs": 0, "changes": 0, "vms_created": 0, "vms_halted": 0,
                       "outages": 0, "errors": 0}
        self.last_error = None
        self._outage_since = None

    def status(self):
        """For sys.health / sys.stats."""
        return {"state": self.state, "host": self.host, "generation": self.seen,
                "domains": len(self.mirrored), "last_error": self.last_error, **self.counts}

    # -- the loop ---------------------------------------------------------------------------
    async def run(self):
        """Resync, then follow the hypervisor until cancelled; never ends on an error."""
        need_resync, retry_s = True, RETRY_MIN_S
        while True:
            generation = self.changes.generation
            if generation == self.seen and not need_resync:
                self.state = "following"
                await self.changes.wait_beyond(self.seen, IDLE_WAIT_S)
                continue
            try:
                domains = await self._read_domains()
                if need_resync:
                    self.state = "resyncing"
                    await self.resync(domains)
                else:
                    await self.follow(domains)
            except asyncio.CancelledError:
                raise
            except DbUnreachable as exc:
                self._outage(exc)
            except Exception as exc:     # noqa: BLE001 - logged; a resync follows
                self._failed(exc)
            else:
                self.seen, need_resync, retry_s = generation, False, RETRY_MIN_S
                self._recovered()
                continue
            need_resync = True
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, RETRY_MAX_S)

    async def _read_domains(self):
        """The guest domains (not domain 0), read off the loop (the sim's files, under its
        shared lock)."""
        domains = await asyncio.get_running_loop().run_in_executor(None, self.sim.domains)
        return {d["uuid"]: d for d in domains if d["domid"] != 0}

    def _recovered(self):
        super()._recovered()
        self.state = "following"

    # -- resync and follow -----------------------------------------------------------------
    async def _host_ref(self):
        ref = await self.db.ref_by_uuid("host", self.host_uuid)
        if ref is None:
            raise XapiError("EVENTS_NO_LOCALHOST", self.host_uuid,
                            "no host record with the inventory's INSTALLATION_UUID (dbsync "
                            "creates it)")
        self.host = ref
        return ref

    async def resync(self, domains):
        """Every guest domain against its VM, and every VM resident here against the domains."""
        host = await self._host_ref()
        done = {"created": 0, "updated": 0, "halted": 0}
        for uuid in sorted(domains):
            what = await self.mirror(domains[uuid])
            if what:
                done[what] += 1
        live = {uuid for uuid, d in domains.items() if d["power_state"] in LIVE}
        for ref, record in sorted((await self.db.records("VM", resident_on=host)).items()):
            if record["is_control_domain"] or record["uuid"] in live:
                continue
            self.log.info("events: VM %s is resident here but has no live domain: Halted",
                          record["uuid"])
            if await self._halt(ref, record):
                done["halted"] += 1
        self.mirrored = {uuid: domain_key(d) for uuid, d in domains.items()}
        self.counts["resyncs"] += 1
        self.log.info("events: resync: %d guest domain(s) (%d live); VMs: %d created, "
                      "%d updated, %d set Halted", len(domains), len(live), done["created"],
                      done["updated"], done["halted"])
        return done

    async def follow(self, domains):
        """Mirror the domains that changed since the last pass, and the ones that went."""
        for uuid in sorted(domains):
            key = domain_key(domains[uuid])
            if self.mirrored.get(uuid) != key:
                await self.mirror(domains[uuid])
                self.mirrored[uuid] = key
        for uuid in sorted(set(self.mirrored) - set(domains)):
            await self.vanished(uuid)
            del self.mirrored[uuid]

    # -- one domain ------------------------------------------------------------------------
    async def mirror(self, domain):
        """Bring the VM of ``domain`` in step with it; "created", "updated" or None."""
        host = self.host
        live = domain["power_state"] in LIVE
        vm = await self.db.ref_by_uuid("VM", domain["uuid"])
        record = await self.db.record("VM", vm) if vm else None
        if record is None:
            return await self._create(domain, host)
        if record["is_control_domain"]:
            return None
        if not live and record["resident_on"] not in (host, NULL_REF):
            return None     # another host's VM: a domain not live here says nothing of it
        writes = []
        if live:
            writes += _writes("VM", vm, record, {"power_state": domain["power_state"],
                                                 "domid": domain["domid"], "resident_on": host})
        elif record["power_state"] in LIVE:
            writes += await self._halt_writes(vm, record)
        writes += await self._metrics_writes(vm, record, domain)
        if not writes:
            return None
        await self.db.batch(writes)
        self.counts["changes"] += 1
        self.log.info("events: domain %d '%s' (%s) %s: VM %s updated (%s)", domain["domid"],
                      domain["name"], domain["uuid"], domain["power_state"], vm,
                      ", ".join(sorted({w[3] for w in writes if w[0] == "write_field"})))
        return "updated"

    async def vanished(self, uuid):
        """The domain ``uuid`` was destroyed: its VM (if it ran here) becomes Halted."""
        vm = await self.db.ref_by_uuid("VM", uuid)
        record = await self.db.record("VM", vm) if vm else None
        if record is None or record["is_control_domain"]:
            return False
        if record["resident_on"] not in (self.host, NULL_REF):
            return False
        self.log.info("events: domain %s destroyed: VM %s Halted", uuid, vm)
        return await self._halt(vm, record)

    async def _create(self, domain, host):
        metrics, vm = new_ref(), new_ref()
        await self.db.batch([
            ["create_row", "VM_metrics", metrics_values(domain), metrics],
            ["create_row", "VM", new_vm_values(domain, host, metrics), vm]])
        self.counts["vms_created"] += 1
        self.counts["changes"] += 1
        self.log.info("events: domain %d '%s' (%s) %s has no VM record: created VM %s",
                      domain["domid"], domain["name"], domain["uuid"], domain["power_state"], vm)
        return "created"

    async def _halt(self, vm, record):
        writes = await self._halt_writes(vm, record)
        if writes:
            await self.db.batch(writes)
            self.counts["vms_halted"] += 1
            self.counts["changes"] += 1
        return bool(writes)

    async def _halt_writes(self, vm, record):
        """Halted, domid -1, resident nowhere, its VBDs and VIFs detached, no guest metrics
        (xapi's force_state_reset with set_db_shutdown)."""
        writes = _writes("VM", vm, record, {"power_state": HALTED, "domid": -1,
                                            "resident_on": NULL_REF,
                                            "scheduled_to_be_resident_on": NULL_REF,
                                            "guest_metrics": NULL_REF})
        guest_metrics = record.get("guest_metrics") or NULL_REF
        if guest_metrics != NULL_REF and await self.db.record("VM_guest_metrics", guest_metrics):
            writes.append(["delete_row", "VM_guest_metrics", guest_metrics])
        for cls, field in (("VBD", "VBDs"), ("VIF", "VIFs")):
            for ref in record.get(field) or []:
                device = await self.db.record(cls, ref)
                if device is not None and device.get("currently_attached"):
                    writes.append(["write_field", cls, ref, "currently_attached", False])
        return writes

    async def _metrics_writes(self, vm, record, domain):
        wanted = metrics_values(domain)
        metrics = record.get("metrics")
        current = await self.db.record("VM_metrics", metrics)
        if current is None:
            metrics = new_ref()
            return [["create_row", "VM_metrics", wanted, metrics],
                    ["write_field", "VM", vm, "metrics", metrics]]
        return _writes("VM_metrics", metrics, current, wanted)
