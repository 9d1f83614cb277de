"""The local actions of the start-up steps "Create networks" and "Bring up physical NICs": the host
internal management network, a PIF (and its network) per physical NIC of this host, their plug,
and the management address on the host and its management PIF.

Like platform_steps.py each action takes the HostContext and the runner, returns a short note and
raises XapiError to fail its step; run again on the same host it writes nothing.

What xapi does, read in xapi-project/xen-api: create_networks.ml (the network's name, description,
MTU, other_config keys and its well-known bridge "xenapi"; an existing one found by the
other_config key is_host_internal_management_network, its bridge put right); xapi_pif.ml
(bridge_naming_convention: ethN -> xenbrN, else br<device>; find_or_create_network: the network
of a bridge, else one named by helpers.ml choose_network_name_for_pif; PIFs introduced unplugged,
VLAN -1); start_of_day_best_effort_bring_up and nm.ml (each PIF plugged through the
interface-reconfigure script with "up"). The NICs are the machine's, read from sysfs
(Paths.sys_class_net) by common/platform/hostfacts.py.
"""

import os
import subprocess

from common import inventory as inventory_mod
from common.errors import XapiError
from common.platform import hostfacts
from daemons.init.dbsync_client import DbClient, now_utc
from daemons.init.dbsync_common import Sync, bridge_name, management_address

HOOK_OPTION = "interface-reconfigure"
HOOK_TIMEOUT_S = 30.0   # per NIC; the script is killed past it and the PIF stays unplugged

# create_networks.ml
INTERNAL_NETWORK_NAME = "Host internal management network"
INTERNAL_NETWORK_DESCRIPTION = ("Network on which guests will be assigned a private link-local IP "
                                "address which can be used to talk XenAPI")
INTERNAL_NETWORK_BRIDGE = "xenapi"
IS_GUEST_INSTALLER_NETWORK = "is_guest_installer_network"            # xapi_globs.ml
IS_HOST_INTERNAL_MANAGEMENT_NETWORK = "is_host_internal_management_network"
INTERNAL_NETWORK_OTHER_CONFIG = {
    IS_GUEST_INSTALLER_NETWORK: "true",        # kept by xapi for backward compatibility
    IS_HOST_INTERNAL_MANAGEMENT_NETWORK: "true",
    "ip_begin": "169.254.0.1",
    "ip_end": "169.254.255.254",
    "netmask": "255.255.0.0",
}
DEFAULT_MTU = 1500
NOT_A_VLAN = -1


def _connect(ctx):
    return DbClient.connect(ctx)


# -- Create networks ----------------------------------------------------------------------------

def create_networks(ctx, runner):
    """xapi create_networks_localhost: the host internal management network (also the guest
    installer network), created once; an existing one keeps what the operator set, except its
    bridge, which must be "xenapi"."""
    db = _connect(ctx)
    try:
        found = sorted(ref for ref, record in db.records("network").items()
                       if (record["other_config"] or {}).get(IS_HOST_INTERNAL_MANAGEMENT_NETWORK)
                       == "true")
        if not found:
            ref = db.create("network", {
                "name_label": INTERNAL_NETWORK_NAME,
                "name_description": INTERNAL_NETWORK_DESCRIPTION, "MTU": DEFAULT_MTU,
                "other_config": dict(INTERNAL_NETWORK_OTHER_CONFIG),
                "bridge": INTERNAL_NETWORK_BRIDGE})
            return f"created {INTERNAL_NETWORK_NAME!r} ({ref}, bridge {INTERNAL_NETWORK_BRIDGE})"
        if len(found) > 1:
            ctx.log.warning("%d networks have other_config %s=true; using %s", len(found),
                            IS_HOST_INTERNAL_MANAGEMENT_NETWORK, found[0])
        changed = db.update("network", found[0], {"bridge": INTERNAL_NETWORK_BRIDGE})
        return (f"{INTERNAL_NETWORK_NAME!r} exists ({found[0]})"
                + (f": bridge set to {INTERNAL_NETWORK_BRIDGE}" if changed else ""))
    finally:
        db.close()


# -- Bring up physical NICs ---------------------------------------------------------------------

def network_name(device):
    """helpers.ml choose_network_name_for_pif."""
    return f"Pool-wide network associated with {device}"


def _is_management(ctx, device):
    """The inventory's MANAGEMENT_INTERFACE names the device (eth0) or, as on a dom0, its
    bridge (xenbr0)."""
    wanted = (ctx.inventory.get(inventory_mod.MANAGEMENT_INTERFACE) or "").strip()
    return bool(wanted) and wanted in (device, bridge_name(device))


def _network_for(db, device):
    """xapi find_or_create_network: the network whose bridge is the device's bridge, created
    (MTU 1500, empty other_config) when there is none."""
    bridge = bridge_name(device)
    found = sorted(db.find("network", bridge=bridge))
    if found:
        return found[0]
    return db.create("network", {"name_label": network_name(device), "name_description": "",
                                 "MTU": DEFAULT_MTU, "bridge": bridge})


def _ip_config(ctx, nic, record, address):
    """PIF IP configuration from the NIC's addresses. The management PIF carries the management
    address (xapi reads host.address from it); a mode the operator set to DHCP is kept."""
    current_mode = record["ip_configuration_mode"] if record else "None"
    if _is_management(ctx, nic.device):
        ip = address
        netmask = nic.netmask if address in nic.ipv4 else ""
    else:
        ip = nic.ipv4[0] if nic.ipv4 else ""
        netmask = (nic.netmask or "") if ip else ""
    mode = "DHCP" if current_mode == "DHCP" else ("Static" if ip else "None")
    return {"ip_configuration_mode": mode, "IP": ip, "netmask": netmask}


def _match_pif(pifs, nic, taken):
    """The existing physical PIF of this host for ``nic``: by device, else by MAC (a renamed
    NIC). None when there is none."""
    for by in ("device", "MAC"):
        want = nic.device if by == "device" else nic.mac
        for ref, record in sorted(pifs.items()):
            if ref not in taken and want and record[by] == want:
                return ref
    return None


def _new_metrics(db, nic):
    return db.create("PIF_metrics", {"carrier": nic.carrier, "speed": nic.speed_mbps or 0,
                                     "last_updated": now_utc()})


def _sync_pifs(ctx, db, host, nics, address):
    """A PIF per scanned NIC (created unplugged, or brought up to date: an existing PIF keeps its
    network, which VIFs may use); management flags and IP configuration on every physical PIF of
    this host. Returns (created, updated) counts."""
    pifs = {ref: r for ref, r in db.records("PIF", host=host).items()
            if r["physical"] and r["VLAN"] == NOT_A_VLAN}
    created = updated = 0
    taken = set()
    for nic in nics:
        ref = _match_pif(pifs, nic, taken)
        record = pifs.get(ref)
        values = {"device": nic.device, "MAC": nic.mac, "MTU": nic.mtu, "physical": True,
                  "VLAN": NOT_A_VLAN, "management": _is_management(ctx, nic.device),
                  **_ip_config(ctx, nic, record, address)}
        if record is None:
            network = _network_for(db, nic.device)
            ref = db.create("PIF", {**values, "host": host, "network": network,
                                    "metrics": _new_metrics(db, nic),
                                    "currently_attached": False})
            ctx.log.info("PIF %s created for %s (%s, bridge %s)", ref, nic.device, nic.mac,
                         bridge_name(nic.device))
            created += 1
        else:
            if not db.is_valid_ref(record["network"]):
                values["network"] = _network_for(db, nic.device)
            if not db.is_valid_ref(record["metrics"]):
                values["metrics"] = _new_metrics(db, nic)
            changed = db.update("PIF", ref, values, record)
            if changed:
                ctx.log.info("PIF %s (%s) updated: %s", ref, nic.device, ", ".join(changed))
                updated += 1
        taken.add(ref)
    for ref, record in sorted(pifs.items()):   # PIFs of NICs not seen now: not management
        if ref not in taken and record["management"] and \
                not _is_management(ctx, record["device"]):
            db.update("PIF", ref, {"management": False}, record)
            updated += 1
    return created, updated


def _hook(ctx):
    """The interface-reconfigure script (under ROOT), None when the option is empty; one that is
    missing or not executable is an error naming the file and the option."""
    configured = (ctx.config[HOOK_OPTION] or "").strip()
    if not configured:
        return None
    path = ctx.paths.under(configured)
    if not path.is_file() or not os.access(path, os.X_OK):
        what = "does not exist" if not path.exists() else "is not an executable file"
        raise XapiError("INTERFACE_RECONFIGURE_NOT_EXECUTABLE", str(path),
                        f"{what}; named by {HOOK_OPTION} ({ctx.config.source(HOOK_OPTION)})")
    return path


def _run_hook(ctx, hook, device):
    """``<hook> --device=<dev> up``, bounded by HOOK_TIMEOUT_S; returns None when it succeeded,
    else why not."""
    try:
        done = subprocess.run([str(hook), f"--device={device}", "up"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=HOOK_TIMEOUT_S, cwd=ctx.paths.root,
                              env={**os.environ, "XAPI_ROOT": str(ctx.paths.root)})
    except subprocess.TimeoutExpired:
        return f"{hook} killed after {HOOK_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"{hook} could not run: {exc.strerror or exc}"
    if done.returncode == 0:
        return None
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip().splitlines()
    return f"{hook} exited with {done.returncode}" + (f": {' | '.join(output[-3:])}"
                                                      if output else "")


def _plug(ctx, db, hook, ref, record):
    """Plug one physical PIF (xapi Xapi_pif.plug, best effort): its NIC must still be there; then
    the hook's ``up``, or without a hook its link. Returns (attached?, note)."""
    device = record["device"]
    nic = hostfacts.nic(device, ctx.paths.sys_class_net)
    if nic is None:
        attached, why = False, f"NIC {device} is gone (since the scan)"
    elif hook is not None:
        failure = _run_hook(ctx, hook, device)
        attached, why = failure is None, failure
    else:
        attached, why = nic.carrier, None if nic.carrier else f"no carrier on {device}"
    if db.update("PIF", ref, {"currently_attached": attached}, record):
        ctx.log.info("PIF %s (%s) currently_attached <- %s", ref, device, attached)
    metrics = db.record("PIF_metrics", record["metrics"]) if nic is not None else None
    if metrics is not None:   # carrier and speed as read now; last_updated only when they moved
        values = {"carrier": nic.carrier, "speed": nic.speed_mbps or 0}
        if any(metrics[name] != value for name, value in values.items()):
            db.update("PIF_metrics", record["metrics"], {**values, "last_updated": now_utc()},
                      metrics)
    if not attached:
        ctx.log.warning("PIF %s (%s) not plugged: %s", record["uuid"], device, why)
    return attached, why


def bring_up_physical_nics(ctx, runner):
    """A PIF per physical NIC of this host (from sysfs), each with the network of its bridge;
    the management PIF flagged; the management address recorded on the host and that PIF; then
    every physical PIF of this host plugged, best effort (xapi start_of_day_best_effort_bring_up):
    a NIC gone since the scan or a failing hook leaves its PIF unplugged, start-up goes on."""
    nics = hostfacts.nics(ctx.paths.sys_class_net)
    address = management_address(ctx)
    db = _connect(ctx)
    try:
        s = Sync(ctx, db)
        host = s.localhost
        created, updated = _sync_pifs(ctx, db, host, nics, address)
        if db.update("host", host, {"address": address}):
            ctx.log.info("host.address <- %s", address)
        pifs = {ref: r for ref, r in db.records("PIF", host=host).items()
                if r["physical"] and r["VLAN"] == NOT_A_VLAN}
        try:
            hook = _hook(ctx)
        except XapiError:
            for ref, record in sorted(pifs.items()):
                db.update("PIF", ref, {"currently_attached": False}, record)
            raise
        states = []
        for ref, record in sorted(pifs.items(), key=lambda item: item[1]["device"]):
            attached, why = _plug(ctx, db, hook, ref, record)
            flags = ["attached" if attached else f"unplugged ({why})"]
            if record["management"]:
                flags.append("management")
            states.append(f"{record['device']} ({bridge_name(record['device'])}, "
                          f"{', '.join(flags)})")
    finally:
        db.close()
    ctx.notes["management_address"] = address
    how = f"plugged with {hook}" if hook else "link checked"
    return (f"{len(nics)} physical NIC(s); PIFs: {created} created, {updated} updated; "
            f"{how}: " + ("; ".join(states) if states else "none")
            + f"; management address {address}")
