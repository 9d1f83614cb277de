"""What the dbsync sub-steps share: Sync (the context, xapi-db and this host for one run),
the management address, and the small helpers both the per-host and the master sub-steps use."""

import logging

import psutil

from common import inventory as inventory_mod
from common.errors import XapiError
from common.platform import hostfacts
from common.platform.xensim import XenSim
from daemons.init.dbsync_client import NULL_REF, new_ref, now_utc

log = logging.getLogger("xapi-init")

CONSOLE_URI = "/console"                       # constants.ml console_uri


def _count(n, what, plural=None):
    return f"{n} {what if n == 1 else plural or what + 's'}"


def _changes(changed):
    return "updated " + ", ".join(changed) if changed else "unchanged"


class Sync:
    """What the sub-steps share for one run: the context, xapi-db, this host."""

    def __init__(self, ctx, db, agent_start_time=None):
        self.ctx = ctx
        self.db = db
        self.inventory = ctx.inventory
        self.host_uuid = ctx.inventory[inventory_mod.INSTALLATION_UUID]
        self.dom0_uuid = ctx.inventory[inventory_mod.CONTROL_DOMAIN_UUID]
        self.is_master = ctx.role.is_master
        self.agent_start_time = (agent_start_time if agent_start_time is not None
                                 else psutil.Process().create_time())
        self._hostname = None
        self._address = None

    @property
    def log(self):
        return self.ctx.log or log

    @property
    def localhost(self):
        ref = self.db.get_by_uuid_or_none("host", self.host_uuid)
        if ref is None:
            raise XapiError("DBSYNC_NO_LOCALHOST", self.host_uuid,
                            "no host record for this host (create_localhost skipped?)")
        return ref

    @property
    def hostname(self):
        if self._hostname is None:
            self._hostname = hostfacts.hostname()
        return self._hostname

    @property
    def address(self):
        if self._address is None:
            self._address = management_address(self.ctx)
        return self._address

    def under(self, dom0_path):
        return self.ctx.paths.under(dom0_path)

    def sim(self):
        return XenSim(self.ctx.paths.xensim)

    def ensure_host_metrics(self, host_ref, live=None):
        """The host's host_metrics row (created and linked if host.metrics does not name one);
        returns (metrics ref, created?)."""
        metrics = self.db.call("db.read_field", "host", host_ref, "metrics")
        if self.db.is_valid_ref(metrics) and \
                self.db.call("db.get_table_from_ref", metrics) == "host_metrics":
            return metrics, False
        metrics = new_ref()
        self.db.batch([
            ["create_row", "host_metrics", {"live": bool(live), "last_updated": now_utc()},
             metrics],
            ["write_field", "host", host_ref, "metrics", metrics]])
        return metrics, True


def management_address(ctx):
    """The option management-address if set, else the IPv4 address of the inventory's
    MANAGEMENT_INTERFACE, else 127.0.0.1 (xapi's Helpers.get_management_ip_addr reads the
    management interface's address)."""
    configured = (ctx.config["management-address"] or "").strip()
    if configured:
        return configured
    interface = (ctx.inventory.get(inventory_mod.MANAGEMENT_INTERFACE) or "").strip()
    for name in interface_candidates(interface):
        nic = hostfacts.nic(name, ctx.paths.sys_class_net)
        if nic is not None and nic.ipv4:
            return nic.ipv4[0]
    return "127.0.0.1"


def bridge_name(device):
    """xapi's bridge_naming_convention: eth<N> -> xenbr<N>, any other device -> br<device>."""
    if device.startswith("eth"):
        return "xenbr" + device[len("eth"):]
    return "br" + device


def interface_candidates(name):
    """Where the address of the interface ``name`` (the inventory's MANAGEMENT_INTERFACE) may
    be: the interface itself (on a dom0 the bridge, xenbr0, holds it), then, for a bridge name,
    the device under it (eth0 here, where there are no bridges)."""
    if not name:
        return []
    if name.startswith("xenbr") and name[len("xenbr"):].isdigit():
        return [name, "eth" + name[len("xenbr"):]]
    if name.startswith("br") and len(name) > 2:
        return [name, name[2:]]
    return [name]


def _console_location(address, console_ref):
    return f"https://{address}{CONSOLE_URI}?ref={console_ref}" if address else ""


def _entries(directory):
    """The entries of a data directory under ROOT; a missing one is empty."""
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise XapiError("DBSYNC_NOT_A_DIRECTORY", str(directory)) from None


def _force_halted(s, vm, record):
    """xapi Xapi_vm_lifecycle.force_state_reset to Halted (with set_db_shutdown's domid -1): not
    resident or scheduled anywhere, no current operations, its VBDs and VIFs detached."""
    changed = s.db.update("VM", vm, {
        "power_state": "Halted", "domid": -1, "resident_on": NULL_REF,
        "scheduled_to_be_resident_on": NULL_REF, "current_operations": {}}, record)
    for cls, refs in (("VBD", record.get("VBDs") or []), ("VIF", record.get("VIFs") or [])):
        for ref in refs:
            device = s.db.record(cls, ref)
            if device is not None:
                changed += s.db.update(cls, ref, {"currently_attached": False,
                                                  "current_operations": {}}, device)
    return changed
