"""What a guest's agent reports in xenstore, read from the simulated hypervisor and shaped as the
fields of VM_guest_metrics (REFERENCE.md "Scheduler, RRD, liveness, mail"; the map keys are
xapi's: xapi_guest_agent.ml).

Under ``/local/domain/<domid>/``:
- ``data/updated``: the agent's heartbeat, in the Linux agent's time format (xensim's
  parse_agent_time); its absence means the agent has not reported;
- ``data/os_name|os_uname|os_distro|os_majorver|os_minorver`` -> os_version
  ``name|uname|distro|major|minor``;
- ``attr/PVAddons/Major|Minor|Micro|BuildVersion`` -> PV_drivers_version
  ``major|minor|micro|build`` (``micro`` "-1" when the agent has no such key, as xapi);
- ``attr/vif/<N>/ipv4/<M>``, ``attr/vif/<N>/ipv6/<M>`` -> networks ``<N>/ipv4/<M>``,
  ``<N>/ipv6/<M>``, and ``<N>/ip`` for ``ipv4/0`` (the older key clients still read);
- ``data/meminfo_total|meminfo_free`` (kiB) -> memory ``total|free``.

Every function here reads files (the sim's, under its shared lock): call them off the loop.
"""

from common.platform.xensim import parse_agent_time

OS_VERSION_KEYS = (("data/os_name", "name"), ("data/os_uname", "uname"),
                   ("data/os_distro", "distro"), ("data/os_majorver", "major"),
                   ("data/os_minorver", "minor"))
PV_DRIVERS_KEYS = (("attr/PVAddons/MajorVersion", "major"), ("attr/PVAddons/MinorVersion", "minor"),
                   ("attr/PVAddons/MicroVersion", "micro"), ("attr/PVAddons/BuildVersion", "build"))
MEMORY_KEYS = (("data/meminfo_total", "total"), ("data/meminfo_free", "free"))
HEARTBEAT_KEY = "data/updated"
# the VM_guest_metrics fields an agent's report sets (live and last_updated are the checker's)
REPORT_FIELDS = ("os_version", "PV_drivers_version", "PV_drivers_up_to_date", "networks",
                 "memory")


def domain_path(domid):
    return f"/local/domain/{domid}"


def heartbeat_path(domid):
    return f"{domain_path(domid)}/{HEARTBEAT_KEY}"


def read_heartbeat(sim, domid):
    """(the raw data/updated value or None, its epoch seconds or None when it does not parse)."""
    raw = sim.read(heartbeat_path(domid))
    return raw, (parse_agent_time(raw) if raw is not None else None)


def _index_order(name):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _networks(sim, base):
    networks = {}
    vifs = f"{base}/attr/vif"
    for vif in sorted(sim.ls(vifs), key=_index_order):
        for family in ("ipv4", "ipv6"):
            directory = f"{vifs}/{vif}/{family}"
            for index in sorted(sim.ls(directory), key=_index_order):
                value = sim.read(f"{directory}/{index}")
                if value:
                    networks[f"{vif}/{family}/{index}"] = value
        if f"{vif}/ipv4/0" in networks:
            networks[f"{vif}/ip"] = networks[f"{vif}/ipv4/0"]
    return networks


def read_report(sim, domid):
    """The VM_guest_metrics values (REPORT_FIELDS) the agent of ``domid`` reports now."""
    base = domain_path(domid)

    def to_map(keys):
        found = {}
        for key, name in keys:
            value = sim.read(f"{base}/{key}")
            if value is not None:
                found[name] = value
        return found

    pv_drivers = to_map(PV_DRIVERS_KEYS)
    if pv_drivers and "micro" not in pv_drivers:
        pv_drivers["micro"] = "-1"
    return {
        "os_version": to_map(OS_VERSION_KEYS),
        "PV_drivers_version": pv_drivers,
        # xapi today: "up to date" means PV drivers are detected (major and minor reported)
        "PV_drivers_up_to_date": "major" in pv_drivers and "minor" in pv_drivers,
        "networks": _networks(sim, base),
        "memory": to_map(MEMORY_KEYS),
    }
