"""What the monitoring loop measures, with xcp-rrdd's data source names (REFERENCE.md), and the
5 s schedule.

Host: ``cpu<N>`` (busy share of each logical CPU), ``cpu_avg``, ``loadavg``,
``memory_total_kib``, ``memory_free_kib``, ``pif_<dev>_rx`` / ``_tx`` (bytes/s of each physical
NIC), and the DB usage from xapi-db's sys.stats: ``xapi_db_rows``, ``xapi_db_writes`` (generation
steps/s), ``xapi_db_calls`` (calls/s). VM (each running domain of the simulated hypervisor):
``cpu<N>`` per vCPU, ``memory`` (bytes), ``memory_internal_free`` (kiB, from the guest agent).

CPU times and byte counts are counters: they go in as DERIVE (min 0, so a counter that went back
is unknown for that step, not a negative rate); the rest are GAUGE.
"""

import math
import os
import re

import psutil

from common.platform import hostfacts, xensim
from daemons.rrd.engine import DERIVE, GAUGE, RRDTOOL_DS_NAME_MAX, DataSource, RrdError, STEP_S

_CPU = re.compile(r"^cpu\d+$")
_PIF = re.compile(r"^pif_.+_(rx|tx)$")
NIC_RESCAN_S = 60.0   # NICs come and go rarely: the list is read again once a minute


def host_source(name):
    """The definition of a host data source, by name."""
    if _CPU.match(name) or name == "cpu_avg":
        return DataSource(name, DERIVE, min=0.0, max=1.0)
    if _PIF.match(name) or name in ("xapi_db_writes", "xapi_db_calls"):
        return DataSource(name, DERIVE, min=0.0)
    if name in ("loadavg", "memory_total_kib", "memory_free_kib", "xapi_db_rows"):
        return DataSource(name, GAUGE, min=0.0)
    raise RrdError(f"no host data source {name!r}")


def vm_source(name):
    """The definition of a VM data source, by name."""
    if _CPU.match(name):
        return DataSource(name, DERIVE, min=0.0, max=1.0)
    if name in ("memory", "memory_internal_free"):
        return DataSource(name, GAUGE, min=0.0)
    raise RrdError(f"no VM data source {name!r}")


def next_deadline(now, step=STEP_S):
    """The next multiple of ``step`` after ``now``: deadlines are absolute, so the loop never
    drifts, and a cycle that overran skips to the next one instead of bursting."""
    return (math.floor(now / step) + 1) * step


class HostSampler:
    """Reads the host's counters (psutil, /proc, sysfs); blocking, run in an executor."""

    def __init__(self, sys_class_net, clock):
        self.sys_class_net = sys_class_net
        self.clock = clock
        self._nics, self._nics_at = [], None
        self.skipped_nics = set()

    def _nic_names(self):
        now = self.clock()
        if self._nics_at is None or now - self._nics_at >= NIC_RESCAN_S:
            self._nics = [n.device for n in hostfacts.nics(self.sys_class_net)]
            self._nics_at = now
        return self._nics

    def sample(self):
        values = {}
        times = psutil.cpu_times(percpu=True)
        busy = [t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
                + getattr(t, "steal", 0.0) for t in times]
        for n, b in enumerate(busy):
            values[f"cpu{n}"] = b
        if busy:
            values["cpu_avg"] = sum(busy) / len(busy)
        values["loadavg"] = os.getloadavg()[0]
        total, free = hostfacts.memory()
        values["memory_total_kib"] = total // 1024
        values["memory_free_kib"] = free // 1024
        counters = psutil.net_io_counters(pernic=True)
        for dev in self._nic_names():
            c = counters.get(dev)
            if c is None:
                continue
            rx, tx = f"pif_{dev}_rx", f"pif_{dev}_tx"
            if len(rx) > RRDTOOL_DS_NAME_MAX:   # the host RRD stays restorable by rrdtool
                self.skipped_nics.add(dev)
                continue
            values[rx], values[tx] = float(c.bytes_recv), float(c.bytes_sent)
        return values


def db_values(stats):
    """The DB usage data sources from xapi-db's sys.stats."""
    rows = stats.get("rows") or {}
    calls = stats.get("calls") or {}
    return {"xapi_db_rows": float(sum(rows.values())),
            "xapi_db_writes": float(stats.get("generation", 0)),
            "xapi_db_calls": float(sum(calls.values()))}


def vm_values(sim, now=None):
    """{uuid: {name: value}} for every running domain of the simulated hypervisor."""
    out = {}
    for d in sim.domains():
        if d["power_state"] != xensim.RUNNING:
            continue
        vcpus = max(1, d["vcpus"])
        per_vcpu = d["cpu_time_s"] / vcpus
        values = {f"cpu{n}": per_vcpu for n in range(vcpus)}
        values["memory"] = float(d["memory_kib"] * 1024)
        guest = d.get("guest") or {}
        if guest.get("agent") and not d.get("agent_silenced"):
            free = guest.get("meminfo_free_kib")
            values["memory_internal_free"] = float(d["memory_kib"] // 2 if free is None
                                                   else free)
        out[d["uuid"]] = values
    return out
