"""Guest liveness (the seed's "Start guest liveness monitoring thread", xapi's
Xapi_guest_agent.guest_metrics_liveness_thread), run inside xapi-liveness.

Every ``interval_s`` (guest_liveness_interval; 0 in xapi.conf means the timeout) and whenever the
hypervisor changes (the daemon's one watch, simwatch.SimChanges, shared with the events thread),
each Running guest domain of this host is checked:

- its agent's last heartbeat (``data/updated``, agent.py) older than ``timeout_s``
  (guest_liveness_timeout), or gone while the guest runs: the agent is silent, else live;
- the guest's VM (made by the events thread; a domain without one yet is left for the next
  check) gets a VM_guest_metrics row, linked from VM.guest_metrics in the same db.batch, when its
  agent first reports (agent.py's fields, ``live``, ``last_updated`` = the heartbeat);
- VM_guest_metrics.live is written only when it changes, with a message: GUEST_AGENT_SILENT
  (priority 3, warning) when the agent goes silent, GUEST_AGENT_RESUMED (priority 5, info) when it
  comes back; class VM, obj_uuid the VM's uuid. xapi itself raises no message for this: the names
  are ours. The report's other fields are rewritten when the agent's keys change; nothing is
  written when nothing changed.

The database is the truth: a restarted daemon compares with ``live`` as stored, so a transition is
announced once. The message goes before the write (at least once): a crash between the two repeats
it at most once; a write that fails is retried at the next check without a second message. xapi-db
not answering: logged once per outage, retried with a capped backoff.
"""

import asyncio
import logging
import time
import uuid as uuid_mod
from datetime import datetime, timezone

from common.errors import XapiError
from common.protocol import same
from common.platform.xensim import RUNNING
from daemons.liveness import agent
from daemons.liveness.retrying import Retrying
from daemons.liveness.dbclient import DbUnreachable, new_ref

SILENT, RESUMED = "GUEST_AGENT_SILENT", "GUEST_AGENT_RESUMED"
SILENT_PRIORITY, RESUMED_PRIORITY = 3, 5
RETRY_MIN_S = 0.25
RETRY_MAX_S = 5.0


def _utc(epoch_s):
    """With its fraction: liveness compares heartbeats to the second and below."""
    return datetime.fromtimestamp(epoch_s, timezone.utc)


def _stamp(epoch_s):
    return _utc(epoch_s).strftime("%Y-%m-%dT%H:%M:%SZ")


class GuestLiveness(Retrying):
    """The liveness of the guest agents of ``sim`` (a XenSim) into ``db`` (a dbclient.LivenessDb),
    woken by ``changes`` (a simwatch.SimChanges) and every ``interval_s``; ``clock()`` gives epoch
    seconds (the sim's clock)."""

    LABEL = "guest liveness"
    OUTAGE_PLAN = ""
    ERROR_PLAN = "retrying"
    RECOVERED = "checking again"

    def __init__(self, sim, changes, db, timeout_s, interval_s, clock=time.time, log=None):
        if not timeout_s > 0 or not interval_s > 0:
            raise ValueError(f"timeout_s {timeout_s!r} and interval_s {interval_s!r} must be > 0")
        self.sim = sim
        self.changes = changes
        self.db = db
        self.timeout_s = float(timeout_s)
        self.interval_s = float(interval_s)
        self.clock = clock
        self.log = log or logging.getLogger("xapi-liveness")
        self.state = "starting"
        self.seen = None             # the sim generation whose agent keys are in self.reports
        self.reports = {}            # domain uuid -> agent.read_report() at generation self.seen
        self.announced = {}          # VM uuid -> the live value last announced by a message
        self.bad_heartbeats = {}     # domain uuid -> the unparseable data/updated value logged
        self.guests = {"live": 0, "silent": 0, "unreported": 0}
        self.counts = {"checks": 0, "metrics_created": 0, "metrics_updated": 0,
                       "went_silent": 0, "resumed": 0, "messages": 0, "outages": 0,
                       "errors": 0}
        self.last_error = None
        self._outage_since = None

    def status(self):
        """For sys.health / sys.stats."""
        return {"state": self.state, "timeout_s": self.timeout_s, "interval_s": self.interval_s,
                "generation": self.seen, "guests": dict(self.guests),
                "last_error": self.last_error, **self.counts}

    # -- the loop ---------------------------------------------------------------------------
    async def run(self):
        """Check, then again at every tick of the interval and at every change of the
        hypervisor, until cancelled; never ends on an error."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.interval_s
        retry_s = RETRY_MIN_S
        while True:
            watched = self.changes.generation   # a change after this wakes the next wait
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except DbUnreachable as exc:
                self._outage(exc)
            except Exception as exc:     # noqa: BLE001 - logged; the next check retries
                self._failed(exc)
            else:
                retry_s = RETRY_MIN_S
                self._recovered()
                now = loop.time()
                while next_tick <= now:  # a fixed cadence: a late check does not shift it
                    next_tick += self.interval_s
                self.state = "watching"
                await self.changes.wait_beyond(watched, next_tick - now)
                continue
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, RETRY_MAX_S)

    # -- one check --------------------------------------------------------------------------
    def _read_guests(self, seen, reports):
        """Off the loop: (generation, [(domain, raw heartbeat, heartbeat, report)]) for each
        Running guest domain. The agents' keys are read again only when the hypervisor changed
        since ``seen`` (heartbeats are read every time: they move without a change)."""
        generation = self.sim.generation         # before the reads: a later change is re-read
        guests = []
        for domain in self.sim.domains():
            if domain["domid"] == 0 or domain["power_state"] != RUNNING:
                continue
            raw, heartbeat = agent.read_heartbeat(self.sim, domain["domid"])
            report = reports.get(domain["uuid"]) if generation == seen else None
            if report is None and raw is not None:
                report = agent.read_report(self.sim, domain["domid"])
            guests.append((domain, raw, heartbeat, report))
        return generation, guests

    async def check(self):
        """One pass over the Running guests; returns {domain uuid: what was done} for the
        guests written ("created", "silent", "resumed", "updated")."""
        now = self.clock()
        loop = asyncio.get_running_loop()
        generation, guests = await loop.run_in_executor(None, self._read_guests, self.seen,
                                                        self.reports)
        self.reports = {d["uuid"]: report for d, _, _, report in guests if report is not None}
        self.seen = generation
        done, tally = {}, {"live": 0, "silent": 0, "unreported": 0}
        for domain, raw, heartbeat, report in sorted(guests, key=lambda g: g[0]["uuid"]):
            try:
                what, live = await self.check_guest(domain, raw, heartbeat, report, now)
            except XapiError as exc:     # this guest only (e.g. its VM went meanwhile)
                self.counts["errors"] += 1
                self.log.error("guest liveness: domain %d '%s' (%s): %s", domain["domid"],
                               domain["name"], domain["uuid"], exc)
                continue
            tally["unreported" if live is None else "live" if live else "silent"] += 1
            if what:
                done[domain["uuid"]] = what
        self.guests = tally
        self.counts["checks"] += 1
        return done

    def _heartbeat_usable(self, domain, raw, heartbeat):
        if raw is None or heartbeat is not None:
            self.bad_heartbeats.pop(domain["uuid"], None)
            return True
        if self.bad_heartbeats.get(domain["uuid"]) != raw:
            self.log.warning("guest liveness: domain %d '%s' (%s): %s is %r, not the guest "
                             "agent's time format (e.g. 'Mon Jan  2 15:04:05 2006'): its "
                             "liveness is left as it is", domain["domid"], domain["name"],
                             domain["uuid"], agent.heartbeat_path(domain["domid"]), raw)
            self.bad_heartbeats[domain["uuid"]] = raw
        return False

    async def check_guest(self, domain, raw, heartbeat, report, now):
        """(what was written or None, live: True/False, None when the agent never reported)."""
        if not self._heartbeat_usable(domain, raw, heartbeat):
            return None, None
        vm = await self.db.ref_by_uuid("VM", domain["uuid"])
        record = await self.db.record("VM", vm) if vm else None
        if record is None or record["is_control_domain"]:
            return None, None            # the events thread makes the VM: next check
        metrics = await self.db.record("VM_guest_metrics", record["guest_metrics"])
        if heartbeat is None:
            if metrics is None:
                return None, None        # no agent has reported yet
            live = False                 # it reported once, and its heartbeat is gone
        else:
            live = now - heartbeat <= self.timeout_s
        if metrics is None:
            await self._create(vm, record, report, heartbeat, live, now)
            return "created", live
        wanted = {name: report[name] for name in agent.REPORT_FIELDS} if report else {}
        wanted["live"] = live
        writes = [["write_field", "VM_guest_metrics", record["guest_metrics"], name, value]
                  for name, value in wanted.items() if not same(metrics.get(name), value)]
        if not writes:
            return None, live
        if heartbeat is not None:
            writes.append(["write_field", "VM_guest_metrics", record["guest_metrics"],
                           "last_updated", _utc(heartbeat)])
        changed = metrics.get("live") != live
        if changed:
            await self._announce(record, live, heartbeat, now)
        await self.db.batch(writes)
        if changed:
            self.counts["resumed" if live else "went_silent"] += 1
            self.log.info("guest liveness: VM %s '%s': guest agent %s (VM_guest_metrics %s "
                          "live=%s)", record["uuid"], record["name_label"],
                          "back" if live else "silent", record["guest_metrics"], live)
            return ("resumed" if live else "silent"), live
        self.counts["metrics_updated"] += 1
        self.log.info("guest liveness: VM %s '%s': guest agent report changed (%s)",
                      record["uuid"], record["name_label"],
                      ", ".join(w[3] for w in writes if w[3] != "last_updated"))
        return "updated", live

    async def _create(self, vm, record, report, heartbeat, live, now):
        ref = new_ref()
        values = {name: report[name] for name in agent.REPORT_FIELDS} if report else {}
        values.update(uuid=str(uuid_mod.uuid4()), live=live)
        if heartbeat is not None:
            values["last_updated"] = _utc(heartbeat)
        if not live:
            await self._announce(record, live, heartbeat, now)
        await self.db.batch([["create_row", "VM_guest_metrics", values, ref],
                             ["write_field", "VM", vm, "guest_metrics", ref]])
        self.counts["metrics_created"] += 1
        if not live:
            self.counts["went_silent"] += 1
        os_name = values.get("os_version", {}).get("name", "?")
        self.log.info("guest liveness: VM %s '%s': first report of its guest agent (%s, PV "
                      "drivers %s, %d address(es)): VM_guest_metrics %s, live=%s",
                      record["uuid"], record["name_label"], os_name,
                      ".".join(values.get("PV_drivers_version", {}).get(k, "?")
                               for k in ("major", "minor", "micro")),
                      len(values.get("networks", {})), ref, live)

    async def _announce(self, record, live, heartbeat, now):
        """The message of a transition to ``live``, unless this process already sent it (its
        write failed and is being retried)."""
        uuid = record["uuid"]
        if self.announced.get(uuid) == live:
            return
        name_label = record["name_label"]
        if live:
            name, priority = RESUMED, RESUMED_PRIORITY
            body = (f"The guest agent of VM '{name_label}' ({uuid}) reports again: data/updated "
                    f"at {_stamp(heartbeat)}.")
        else:
            name, priority = SILENT, SILENT_PRIORITY
            last = ("it has no data/updated key any more" if heartbeat is None else
                    f"its last data/updated is {_stamp(heartbeat)}, {now - heartbeat:.0f} s ago")
            body = (f"The guest agent of VM '{name_label}' ({uuid}) has stopped reporting: "
                    f"{last}, more than guest_liveness_timeout ({self.timeout_s:g} s). The "
                    f"guest may have hung or its agent stopped.")
        await self.db.call("message.create", name, priority, "VM", uuid, body)
        self.announced[uuid] = live
        self.counts["messages"] += 1
