"""The local actions of the start-up steps that touch the host platform: the control domain, its
xenstore keys, the required processes and dom0's memory target (DESIGN.md section 8).

They run in xapi-init against the real host (common/platform/hostfacts.py) and the simulated
hypervisor in var/lib/xensim (common/platform/xensim.py). Like the functions of actions.py each
takes the HostContext and the runner, returns a short note for the step's status line and raises
XapiError to fail its step. Every one is idempotent: run again on the same host it changes
nothing (no xenstore write, so no watch fires), which is what a resumed or repeated start-up needs.

xapi (xen-api ocaml/xapi/xapi.ml, the release with ``domain0_setup``) does the same against Xen:
``check_control_domain`` compares domain 0's handle with the inventory's CONTROL_DOMAIN_UUID,
``domain0_setup`` ("Setting up domain 0 xenstore keys") writes the keys of ``xenstore_keys``
below, ``startup_check`` looks for xenstored, xenconsoled and blktapctrl with ps.
"""

from common import inventory as inventory_mod
from common import localdb
from common.errors import ConfigError, XapiError
from common.platform import hostfacts
from common.platform.xensim import DOM0_NAME, XenSim

DOM0 = "/local/domain/0"
MEMORY_TARGET = f"{DOM0}/memory/target"
# The key the XenSource PV drivers look for (xapi_globs.ml xe_key / xe_val); xapi writes it
# readable by every domain.
XE_KEY = "/mh/XenSource-TM_XenEnterprise-TM"
XE_VAL = "XenSource(TM) and XenEnterprise(TM) are registered trademarks of XenSource Inc."
MEMORY_OPTION = "dom0-memory-target-mib"
PROCESSES_OPTION = "required-processes"


def _sim(ctx):
    return XenSim(ctx.paths.xensim)


def _dom0(sim):
    """Domain 0 of the simulated hypervisor; a clear error when there is none yet."""
    for domain in sim.domains():   # SIM_STATE_CORRUPT <file> <reason> on a corrupt file
        if domain["domid"] == 0:
            return domain
    raise XapiError("CONTROL_DOMAIN_MISSING", str(sim.domains_file),
                    'no domain 0: the step "Check control domain" creates it')


def _write_keys(sim, keys):
    """Write the keys whose value differs; returns how many were written. A write of the same
    value would still fire watches, so an unchanged key is not written at all."""
    written = 0
    for path, value in keys.items():
        if sim.read(path) != value:
            sim.write(path, value)
            written += 1
    return written


def check_control_domain(ctx, runner):
    """On first boot create domain 0 with the inventory's CONTROL_DOMAIN_UUID (memory: the
    host's, vCPUs: its logical CPUs); after that, its uuid must be the inventory's.

    xapi resets domain 0's handle to the inventory's uuid on a mismatch; here a mismatch means
    the inventory or var/lib/xensim belongs to another installation, so start-up stops and says
    which files disagree rather than renaming a domain under the feet of the other one."""
    sim = _sim(ctx)
    wanted = ctx.inventory[inventory_mod.CONTROL_DOMAIN_UUID]
    dom0 = next((d for d in sim.domains() if d["domid"] == 0), None)
    created = dom0 is None
    if created:
        total_bytes, _ = hostfacts.memory()
        vcpus = len(hostfacts.cpus())
        dom0 = sim.init(wanted, total_bytes // 1024, vcpus)   # keeps a domain 0 made meanwhile
    if dom0["uuid"] != wanted:
        raise XapiError(
            "CONTROL_DOMAIN_UUID_MISMATCH",
            f"the inventory {ctx.paths.inventory} has CONTROL_DOMAIN_UUID {wanted} but domain 0 "
            f"in {sim.domains_file} has uuid {dom0['uuid']}",
            "one of them belongs to another installation: restore the inventory's "
            "CONTROL_DOMAIN_UUID, or remove var/lib/xensim to start a new hypervisor")
    what = "created domain 0" if created else "domain 0"
    return (f"{what} {dom0['uuid']} ({dom0['memory_kib'] // 1024} MiB, {dom0['vcpus']} vCPU(s))"
            + ("" if created else ": matches the inventory"))


def xenstore_keys(dom0):
    """The keys xapi's domain0_setup writes for domain 0 (its initial memory target aside)."""
    uuid, name = dom0["uuid"], dom0["name"] or DOM0_NAME
    return {
        f"{DOM0}/name": name,
        f"{DOM0}/domid": "0",
        f"{DOM0}/vm": f"/vm/{uuid}",
        f"{DOM0}/control/feature-balloon": "1",
        f"/vm/{uuid}/uuid": uuid,
        f"/vm/{uuid}/name": name,
        XE_KEY: XE_VAL,
    }


def setup_xenstore_keys(ctx, runner):
    """Domain 0's keys in xenstore, as xapi's domain0_setup: name, domid, vm, the balloon
    feature, its /vm/<uuid> entry, the PV drivers' key; and an initial memory target (dom0's
    memory) when there is none, which "Set memory target for control domain" then sets."""
    sim = _sim(ctx)
    dom0 = _dom0(sim)
    keys = xenstore_keys(dom0)
    if sim.read(MEMORY_TARGET) is None:
        keys[MEMORY_TARGET] = str(dom0["memory_kib"])
    written = _write_keys(sim, keys)
    return f"{written} of {len(keys)} key(s) written" if written else \
        f"{len(keys)} key(s) already set"


def run_startup_check(ctx, runner):
    """Every process named by the option required-processes must be running (psutil)."""
    names = ctx.config[PROCESSES_OPTION]
    if not names:
        return f"{PROCESSES_OPTION} is empty: nothing to check"
    missing = hostfacts.missing_processes(names)
    if missing:
        raise XapiError("REQUIRED_PROCESSES_NOT_RUNNING", ", ".join(missing),
                        f"named by {PROCESSES_OPTION} ({ctx.config.source(PROCESSES_OPTION)}): "
                        "start them, or remove them from the option")
    return "running: " + ", ".join(names)


def set_dom0_memory_target(ctx, runner):
    """/local/domain/0/memory/target (KiB): the option dom0-memory-target-mib when set (> 0),
    else domain 0's memory."""
    sim = _sim(ctx)
    dom0 = _dom0(sim)
    mib = ctx.config[MEMORY_OPTION]
    if mib < 0:
        raise ConfigError(f"expected 0 (domain 0's memory) or a positive number of MiB, got {mib}",
                          path=ctx.config.source(MEMORY_OPTION), key=MEMORY_OPTION)
    if mib > 0:
        target_kib, source = mib * 1024, f"from {MEMORY_OPTION}"
        if target_kib > dom0["memory_kib"]:
            raise XapiError("MEMORY_CONSTRAINT_VIOLATION",
                            f"{MEMORY_OPTION} = {mib} ({ctx.config.source(MEMORY_OPTION)}) is "
                            f"more than domain 0's {dom0['memory_kib'] // 1024} MiB")
    else:
        target_kib, source = dom0["memory_kib"], "domain 0's memory"
    written = _write_keys(sim, {MEMORY_TARGET: str(target_kib)})
    return (f"{MEMORY_TARGET} = {target_kib} KiB ({target_kib / 1024:g} MiB, {source})"
            + ("" if written else ", unchanged"))


def enable_host(ctx, runner):
    """REFERENCE "Hosts re-enable themselves": at the end of start-up, once its PBDs are
    plugged, the host sets its own enabled=true, unless local.db host_disabled_until_reboot."""
    if ctx.local_db.get_bool(localdb.HOST_DISABLED_UNTIL_REBOOT, False):
        return "host_disabled_until_reboot is set: the host stays disabled"
    host_uuid = ctx.inventory[inventory_mod.INSTALLATION_UUID]
    with ctx.rpc("xapi-db") as db:
        host = db.call("db.get_by_uuid", "host", host_uuid)
        changed = db.call("db.write_field", "host", host, "enabled", True)
    return "host enabled" if changed else "host already enabled"


def check_license_pooling(ctx, runner):
    """xapi's "Checking that current license is ok for pooling configuration": a licence that
    restricts pooling on a host that is a slave, or a master with other hosts in its pool,
    raises LICENSE_DOES_NOT_SUPPORT_POOLING (priority 1, class Host) for this host."""
    lic = ctx.license
    if not lic.restrict_pooling:
        return f"{lic.edition} edition: pooling allowed"
    host_uuid = ctx.inventory[inventory_mod.INSTALLATION_UUID]
    with ctx.rpc("xapi-db") as db:
        hosts = db.call("db.read_refs", "host")
        if not ctx.role.is_slave and len(hosts) <= 1:
            return f"{lic.edition} edition restricts pooling; this host is alone: no alert"
        ref = db.call("message.create", "LICENSE_DOES_NOT_SUPPORT_POOLING", 1, "Host",
                      host_uuid, "")
    return (f"{lic.edition} edition restricts pooling and the pool has {len(hosts)} host(s): "
            f"alert LICENSE_DOES_NOT_SUPPORT_POOLING ({ref})")
