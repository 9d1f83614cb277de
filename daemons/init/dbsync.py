"""The step "Perform house-keeping on the internal database" (xapi's dbsync): bring the pool
database up to date with this host at every start, through xapi-db.

Both lists of REFERENCE.md "dbsync", in order. Each sub-step is a function below, logged as
``dbsync: <name>: <note>``, skippable by naming it in the option ``disable-dbsync-for`` (the
``sync_``-prefixed form of xapi's switches, ``sync_create_host_cpu``..., is accepted too), and
idempotent: run again it writes nothing (every write compares first; xapi-db would drop an
unchanged write anyway), so a second run bumps no generation and creates no row. A sub-step that
raises fails the whole step with ``DBSYNC_FAILED <name> <reason>``.

Per host (master and slave; a slave has no master connection yet, pool work, so it syncs into its
own xapi-db):

- ``create_localhost``: the host record (uuid = inventory INSTALLATION_UUID, name_label = the
  hostname) with its host_metrics, if missing.
- ``record_hostname``: host.hostname.
- ``load_host_rrd``: PENDING (the RRD issue: xapi-rrd loads blobs/rrds/<uuid>.gz).
- ``refresh_localhost_info``: software_version, API_version (2.21, see API_VERSION_MINOR),
  hostname, address (management-address, else the IPv4 of the inventory's MANAGEMENT_INTERFACE,
  else 127.0.0.1), other_config boot_time and agent_start_time.
- ``record_host_memory_properties``: host_metrics memory_total / memory_free.
- ``copy_license_to_db``: host.edition and host.license_params from the licence read at start-up.
- ``create_host_cpu``: one host_cpu per logical CPU (by host + number), extra ones removed, and
  host.cpu_info.
- ``create_domain_zero``: the control domain VM (uuid = inventory CONTROL_DOMAIN_UUID), its
  VM_metrics and its two consoles (rfb, vt100).
- ``crashdump_resynchronise``: host_crashdump records for the crash directories in var/crash/.
- ``update_vms``: power_state / domid / resident_on of the VMs of this host from the simulated
  hypervisor's domains (by uuid).
- ``remove_leaked_vbds``: dom0 VBDs whose task / related VBD is gone.
- ``copy_pifs_from_master``: bonds and VLANs from the master (slave only: pool work).
- ``resynchronise_pif_currently_attached``: PIF.currently_attached of this host's PIFs.
- ``patch_update_db``: pool_patch / host_patch records from var/patch/applied/.

Master only:

- ``create_root_user``, ``create_pool_record`` (and pool.master = this host), ``set_master_ip``,
  ``set_master_live``, ``refresh_console_urls``, ``reset_vm_states`` (Running VMs of a host that
  is gone to Halted, every Halted VM to a known good state, scheduled_to_be_resident_on cleared),
  ``cancel_tasks``, ``update_sm_table`` (SM records from opt/xensource/sm/<Type>SR),
  ``create_vlan_records``, ``create_host_metrics``, ``create_tools_sr`` (the tools ISO SR on
  opt/xensource/packages/iso/ and a PBD on every host).

What xapi does, read in xapi-project/xen-api (dbsync_slave.ml and xapi_globs.ml of the Xc era,
dbsync_master.ml, create_misc.ml, xapi_host_crashdump.ml, xapi_pool_patch.ml, sm.ml, sm_exec.ml,
xapi_sm.ml, attach_helpers.ml, cancel_tasks.ml, datamodel_common.ml), is noted at each function;
where we differ, the function says so. The data sources are directories under ROOT (their dom0
paths below); a missing directory is an empty one.
"""

import logging
import os
import platform
import stat
import uuid as uuid_mod
from datetime import datetime, timezone
from xml.etree import ElementTree

import psutil

from common import inventory as inventory_mod
from common import license as license_mod
from common import schema
from common.daemon import VERSION
from common.errors import XapiError
from common.platform import hostfacts
from common.platform.xensim import XenSim
from common.rpc import RpcClient

log = logging.getLogger("xapi-init")

NULL_REF = schema.NULL_REF
OPTION = "disable-dbsync-for"

# dom0 paths (below ROOT)
CRASH_DIR = "/var/crash"                       # xapi_host_crashdump.ml crash_dir
PATCH_APPLIED_DIR = "/var/patch/applied"       # xapi_pool_patch.ml patch_applied_dir
TOOLS_SR_DIR = "/opt/xensource/packages/iso"   # xapi_globs.ml tools_sr_dir
SM_DIR = "/opt/xensource/sm"                   # the SMAPIv1 plugins dir (sm_exec.ml)

# datamodel_common.ml: api_version_major 2L; api_version_minor 21L at schema 5.781 (the Nile
# release, 5.775, and the numbered releases after it). Our schema says 5.909, past the last
# datamodel_common.ml we could read; 2.21 is xapi's API version of that line.
API_VERSION_MAJOR = 2
API_VERSION_MINOR = 21
API_VERSION_VENDOR = "XenSource"
CONSOLE_URI = "/console"                       # constants.ml console_uri

# xapi_globs.ml
TOOLS_SR_NAME = "XenServer Tools"              # miami_tools_sr_name
TOOLS_SR_DESCRIPTION = "XenServer Tools ISOs"
TOOLS_SR_TAG = "xenserver_tools_sr"
XENSOURCE_INTERNAL = "xensource_internal"
I18N_KEY = "i18n-key"
I18N_ORIGINAL = "i18n-original-value-"
VBD_TASK_KEY = "task_id"
RELATED_TO_KEY = "related_to"
BOOT_TIME_KEY = "boot_time"
AGENT_START_KEY = "agent_start_time"

# host_crashdump has no "filename" field here (xapi's is internal): the file name is kept in
# other_config under this key.
CRASHDUMP_FILENAME_KEY = "filename"

# host_metrics.memory_free moves all the time (the RRD monitor keeps it current in xapi); dbsync
# rewrites it only when it is off by more than this share of the total, so a second run is quiet.
MEMORY_FREE_SLACK = 0.01
# "cpu MHz" in /proc/cpuinfo follows frequency scaling; xapi reads a copy taken at boot
# (/etc/xensource/boot_time_cpus) so its records do not move. We keep the recorded speed unless
# it is off by more than this share.
CPU_SPEED_SLACK = 0.10

PENDING_SUBSTEPS = {"load_host_rrd": "RRD issue"}


def new_ref():
    return f"OpaqueRef:{uuid_mod.uuid4()}"


def now_utc():
    return datetime.now(timezone.utc).replace(microsecond=0)


def ocaml_string_of_float(value):
    """OCaml's string_of_float ("%.12g", a trailing "." when it looks like an int): xapi writes
    host.other_config boot_time and agent_start_time with it."""
    text = "%.12g" % value
    if all(c.isdigit() or c == "-" for c in text):
        text += "."
    return text


def _norm(value):
    """A value as it compares after a trip on the bus (tuples are lists there)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def same(a, b):
    return _norm(a) == _norm(b)


def _eq(field, value):
    return ["eq", ["field", field], ["literal", value]]


def _where(**eq):
    expr = ["true"]
    for field, value in eq.items():
        term = _eq(field, value)
        expr = term if expr == ["true"] else ["and", expr, term]
    return expr


class DbClient:
    """xapi-db as dbsync needs it: the bus methods through ``caller.call(method, *args)``
    (a common.rpc.RpcClient, or anything with that method) plus a few helpers."""

    def __init__(self, caller):
        self.caller = caller

    @classmethod
    def connect(cls, paths, timeout_s):
        return cls(RpcClient(paths.rpc_endpoint("xapi-db"), timeout_s=timeout_s))

    def close(self):
        close = getattr(self.caller, "close", None)
        if close:
            close()

    def call(self, method, *args):
        return self.caller.call(method, *args)

    # -- reads ------------------------------------------------------------------------------
    def get_by_uuid_or_none(self, cls, uuid):
        try:
            return self.call("db.get_by_uuid", cls, uuid)
        except XapiError as exc:
            if exc.code == "UUID_INVALID":
                return None
            raise

    def record(self, cls, ref):
        """The record, or None when ``ref`` is not a row of ``cls``."""
        if not ref or ref == NULL_REF:
            return None
        try:
            return self.call("db.read_record", cls, ref)
        except XapiError as exc:
            if exc.code == "HANDLE_INVALID":
                return None
            raise

    def is_valid_ref(self, ref):
        return bool(ref) and ref != NULL_REF and self.call("db.is_valid_ref", ref)

    def find(self, cls, **eq):
        """The refs of ``cls`` whose fields equal ``eq`` (all of them; none given: every row)."""
        return self.call("db.find_refs_with_filter", cls, _where(**eq))

    def records(self, cls, **eq):
        """{ref: record} of the rows of ``cls`` whose fields equal ``eq``."""
        return self.call("db.read_records_where", cls, _where(**eq))

    # -- writes -----------------------------------------------------------------------------
    def create(self, cls, values, ref=None):
        """A new row (ref chosen here, so a retried call is a no-op); returns its ref."""
        return self.call("db.create_row", cls, values, ref or new_ref())

    def delete(self, cls, ref):
        self.call("db.delete_row", cls, ref)

    def batch(self, calls):
        return self.call("db.batch", list(calls)) if calls else []

    def update(self, cls, ref, values, current=None):
        """Write the fields of ``values`` that differ from the row (in one atomic batch);
        returns the names written."""
        if current is None:
            current = self.call("db.read_record", cls, ref)
        changed = [name for name, value in values.items()
                   if not same(current.get(name), value)]
        self.batch([["write_field", cls, ref, name, values[name]] for name in changed])
        return changed

    def ensure_row(self, cls, key_fields, values):
        """The row of ``cls`` whose fields equal ``key_fields``: created with ``key_fields`` and
        ``values`` if there is none, else its differing ``values`` written. Returns
        (ref, "created" | "updated" | "unchanged")."""
        found = self.records(cls, **key_fields)
        if not found:
            return self.create(cls, {**key_fields, **values}), "created"
        ref = sorted(found)[0]
        changed = self.update(cls, ref, values, found[ref])
        return ref, ("updated" if changed else "unchanged")


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
    device = (ctx.inventory.get(inventory_mod.MANAGEMENT_INTERFACE) or "").strip()
    if device:
        nic = hostfacts.nic(device)
        if nic is not None and nic.ipv4:
            return nic.ipv4[0]
    return "127.0.0.1"


# == per host (dbsync_slave.ml) =================================================================

def create_localhost(s):
    """xapi create_localhost: Xapi_host.create ~uuid ~name_label:hostname ~hostname ~address
    ~license_params:[] ~edition:"free" ~license_server:[address localhost; port 27000], only when
    no host has this uuid (first boot). Its host_metrics record is created with it."""
    if s.db.get_by_uuid_or_none("host", s.host_uuid) is not None:
        return f"host {s.host_uuid} exists"
    metrics, host = new_ref(), new_ref()
    s.db.batch([
        ["create_row", "host_metrics", {"live": False, "last_updated": now_utc()}, metrics],
        ["create_row", "host", {
            "uuid": s.host_uuid, "name_label": s.hostname, "name_description": "",
            "hostname": s.hostname, "address": s.address, "license_params": {},
            "edition": license_mod.FREE,
            "license_server": {"address": "localhost", "port": "27000"},
            "metrics": metrics, "enabled": False}, host]])
    return f"created host {s.host_uuid} ({s.hostname})"


def record_hostname(s):
    changed = s.db.update("host", s.localhost, {"hostname": s.hostname})
    return f"hostname {s.hostname}" + ("" if changed else ", unchanged")


def load_host_rrd(s):
    """xapi: Monitor_rrds.load_rrd for the host's uuid. Built by the RRD issue (xapi-rrd)."""
    return f"pending: {PENDING_SUBSTEPS['load_host_rrd']}"


def software_version(s):
    """xapi's Create_misc.make_software_version: xapi_globs.software_version (product_version,
    product_brand, build_number, hostname...) with "xapi", "xen", "linux". Here: the inventory's
    product and build, and xapi-py's version under "xapi"; no Xen."""
    inv = s.inventory
    return {
        "product_version": inv.get(inventory_mod.PRODUCT_VERSION) or VERSION,
        "product_brand": inv.get(inventory_mod.PRODUCT_BRAND) or "xapi-py",
        "build_number": inv.get(inventory_mod.BUILD_NUMBER) or "0",
        "hostname": s.hostname,
        "xapi": VERSION,
        "xapi-py": VERSION,
        "linux": platform.release(),
    }


def refresh_localhost_info(s):
    """xapi refresh_localhost_info: software_version, API_version_major/minor, hostname,
    address, and other_config boot_time (string_of_float of the boot time) and agent_start_time
    (string_of_float of the agent's start). Xen capabilities: none here."""
    host = s.localhost
    current = s.db.call("db.read_record", "host", host)
    other_config = dict(current.get("other_config") or {})
    other_config[BOOT_TIME_KEY] = ocaml_string_of_float(hostfacts.boot_time())
    other_config[AGENT_START_KEY] = ocaml_string_of_float(s.agent_start_time)
    changed = s.db.update("host", host, {
        "software_version": software_version(s),
        "API_version_major": API_VERSION_MAJOR, "API_version_minor": API_VERSION_MINOR,
        "API_version_vendor": API_VERSION_VENDOR, "API_version_vendor_implementation": {},
        "hostname": s.hostname, "address": s.address, "other_config": other_config,
    }, current)
    return f"API {API_VERSION_MAJOR}.{API_VERSION_MINOR}, address {s.address}: " + \
        _changes(changed)


def record_host_memory_properties(s):
    """xapi record_host_memory_properties: host_metrics memory_total (and, from a file taken at
    boot, the host's boot free memory). Here memory_total and memory_free from the host now;
    memory_free is rewritten only when it is off by more than MEMORY_FREE_SLACK of the total."""
    host = s.localhost
    metrics, _ = s.ensure_host_metrics(host)
    total, free = hostfacts.memory()
    current = s.db.call("db.read_record", "host_metrics", metrics)
    values = {"memory_total": int(total)}
    if abs(current.get("memory_free", 0) - free) > MEMORY_FREE_SLACK * total or \
            not current.get("memory_free"):
        values["memory_free"] = int(free)
    if any(not same(current.get(k), v) for k, v in values.items()):
        values["last_updated"] = now_utc()
    changed = s.db.update("host_metrics", metrics, values, current)
    recorded_free = values.get("memory_free", current.get("memory_free", 0))
    return (f"total {total // 2**20} MiB, free {recorded_free // 2**20} MiB: "
            + _changes(changed))


def license_params(lic):
    """host.license_params as xapi's keys: sku_type (the edition), expiry (UTC, ISO 8601, the end
    of the licence's last day; "never" without one) and restrict_pooling."""
    if lic.expiry is None:
        expiry = "never"
    else:
        end = datetime(lic.expiry.year, lic.expiry.month, lic.expiry.day, 23, 59, 59,
                       tzinfo=timezone.utc)
        expiry = schema.format_datetime(end)
    return {"sku_type": lic.edition, "expiry": expiry,
            "restrict_pooling": "true" if lic.restrict_pooling else "false"}


def copy_license_to_db(s):
    """xapi copy_license_to_db: host.license_params from the licence (Features.to_assoc_list
    restrict_* keys and the licence's own); and the edition."""
    lic = s.ctx.license or license_mod.read_license(s.ctx.paths.license)
    changed = s.db.update("host", s.localhost,
                          {"edition": lic.edition, "license_params": license_params(lic)})
    return f"{lic.edition} edition: " + _changes(changed)


def _int(text, default=0):
    try:
        return int(str(text), 0)
    except ValueError:
        try:
            return int(str(text))
        except ValueError:
            return default


def _stable_speed(recorded, measured):
    if recorded and abs(recorded - measured) <= CPU_SPEED_SLACK * max(recorded, 1):
        return recorded
    return measured


def create_host_cpu(s):
    """xapi Create_misc.create_host_cpu: host.cpu_info (cpu_count, vendor, speed, modelname,
    family, model, stepping, flags) and one host_cpu per logical CPU (number, vendor, speed,
    modelname, family, model, stepping, flags). xapi destroys and recreates them all at every
    start; here they are found by host + number and updated, and the extra ones removed."""
    host = s.localhost
    cpus = hostfacts.cpus()
    existing = s.db.records("host_cpu", host=host)
    by_number = {}
    for ref in sorted(existing):
        by_number.setdefault(existing[ref]["number"], ref)
    created = updated = 0
    speeds = {}
    for cpu in cpus:
        ref = by_number.get(cpu.number)
        recorded = existing[ref]["speed"] if ref else 0
        speed = _stable_speed(recorded, int(round(cpu.speed_mhz)))
        speeds[cpu.number] = speed
        values = {"vendor": cpu.vendor, "speed": speed, "modelname": cpu.model_name,
                  "family": _int(cpu.family), "model": _int(cpu.model),
                  "stepping": str(cpu.stepping), "flags": " ".join(cpu.flags)}
        if ref is None:
            s.db.create("host_cpu", {"host": host, "number": cpu.number, **values})
            created += 1
        elif s.db.update("host_cpu", ref, values, existing[ref]):
            updated += 1
    wanted = {by_number.get(cpu.number) for cpu in cpus}
    extra = [ref for ref in existing if ref not in wanted]
    for ref in extra:
        s.db.delete("host_cpu", ref)
    first = cpus[0]
    cpu_info = {"cpu_count": str(len(cpus)), "vendor": first.vendor,
                "speed": f"{speeds[first.number]:.3f}", "modelname": first.model_name,
                "family": str(first.family), "model": str(first.model),
                "stepping": str(first.stepping), "flags": " ".join(first.flags)}
    info_changed = s.db.update("host", host, {"cpu_info": cpu_info})
    return (f"{_count(len(cpus), 'CPU')}: {created} created, {updated} updated, "
            f"{len(extra)} removed" + (", cpu_info updated" if info_changed else ""))


def _dom0_static_min(total_bytes, static_max):
    """xapi calculate_domain_zero_memory_static_range: 126 MiB + 21/1024 of the host's memory,
    at least 200 MiB, at most static_max."""
    total_mib = total_bytes // 2**20
    mib = max(200, int(21.0 / 1024.0 * total_mib) + 126)
    return min(mib * 2**20, static_max)


def _console_location(address, console_ref):
    return f"https://{address}{CONSOLE_URI}?ref={console_ref}" if address else ""


def create_domain_zero(s):
    """xapi Create_misc.ensure_domain_zero_records: the control domain VM (uuid from the
    inventory, is_control_domain, Running, domid 0, resident_on and affinity this host, memory
    constraints, vCPUs), its VM_metrics, one rfb and one vt100 console. On an existing record xapi
    updates the memory constraints; we keep memory, vCPUs, residence and power state in step.
    Memory and vCPUs come from the simulated hypervisor's domain 0, else from the host."""
    host = s.localhost
    dom0 = next((d for d in s.sim().domains() if d["domid"] == 0), None)
    total, _ = hostfacts.memory()
    if dom0 is not None:
        memory, vcpus = dom0["memory_kib"] * 1024, dom0["vcpus"]
    else:
        memory, vcpus = total, len(s.db.find("host_cpu", host=host)) or len(hostfacts.cpus())
    values = {
        "is_control_domain": True, "power_state": "Running", "domid": 0,
        "resident_on": host, "affinity": host,
        "memory_static_min": _dom0_static_min(total, memory), "memory_static_max": memory,
        "memory_dynamic_min": memory, "memory_dynamic_max": memory, "memory_target": memory,
        "VCPUs_max": vcpus, "VCPUs_at_startup": vcpus,
    }
    vm = s.db.get_by_uuid_or_none("VM", s.dom0_uuid)
    if vm is None:
        vm = s.db.create("VM", {
            "uuid": s.dom0_uuid, **values,
            "name_label": f"Control domain on host: {s.hostname}",
            "name_description": "The domain which manages physical devices and manages other "
                                "domains",
            "domarch": "x64", "user_version": 1, "actions_after_shutdown": "destroy",
            "actions_after_reboot": "destroy", "actions_after_crash": "destroy"})
        what = [f"created domain 0 {s.dom0_uuid}"]
    else:
        what = [f"domain 0 {s.dom0_uuid}: " + _changes(s.db.update("VM", vm, values))]
    metrics = s.db.call("db.read_field", "VM", vm, "metrics")
    metrics_values = {"VCPUs_number": vcpus, "memory_actual": memory}
    if not s.db.is_valid_ref(metrics):
        metrics = new_ref()
        s.db.batch([["create_row", "VM_metrics", metrics_values, metrics],
                    ["write_field", "VM", vm, "metrics", metrics]])
        what.append("VM_metrics created")
    elif s.db.update("VM_metrics", metrics, metrics_values):
        what.append("VM_metrics updated")
    consoles = s.db.records("console", VM=vm)
    for protocol in ("rfb", "vt100"):
        if not any(c["protocol"] == protocol for c in consoles.values()):
            ref = new_ref()
            s.db.create("console", {"protocol": protocol, "VM": vm,
                                    "location": _console_location(s.address, ref)}, ref)
            what.append(f"{protocol} console created")
    return f"{memory // 2**20} MiB, {_count(vcpus, 'vCPU')}; " + ", ".join(what)


def _tree_size(path):
    """``du --bytes -s``: the apparent size of a directory and everything in it."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    try:
        total += os.lstat(path).st_size
    except OSError:
        pass
    return total


def _crash_timestamp(path):
    """xapi: the name's "%04d%02d%02d-%02d%02d%02d-UTC", else the directory's ctime."""
    try:
        stamp = datetime.strptime(path.name, "%Y%m%d-%H%M%S-UTC")
        return stamp.replace(tzinfo=timezone.utc)
    except ValueError:
        return datetime.fromtimestamp(int(path.stat().st_ctime), timezone.utc)


def _entries(directory):
    """The entries of a data directory under ROOT; a missing one is empty."""
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise XapiError("DBSYNC_NOT_A_DIRECTORY", str(directory)) from None


def crashdump_resynchronise(s):
    """xapi Xapi_host_crashdump.resynchronise: the crash kernel leaves one directory per crash in
    /var/crash (plain files there are not crash dumps); records of dumps gone are destroyed, new
    ones get a host_crashdump (timestamp, size as du --bytes -s). (The HA "host was fenced" alert
    xapi raises here comes with HA.)"""
    host = s.localhost
    directory = s.under(CRASH_DIR)
    on_disk = {p.name: p for p in _entries(directory) if p.is_dir()}
    records = s.db.records("host_crashdump", host=host)
    known = {}
    gone = []
    for ref, record in sorted(records.items()):
        name = (record.get("other_config") or {}).get(CRASHDUMP_FILENAME_KEY)
        if name in on_disk and name not in known:
            known[name] = ref
        else:
            gone.append(ref)
    for ref in gone:
        s.db.delete("host_crashdump", ref)
    arrived = [name for name in on_disk if name not in known]
    for name in arrived:
        path = on_disk[name]
        s.db.create("host_crashdump", {
            "host": host, "timestamp": _crash_timestamp(path), "size": _tree_size(path),
            "other_config": {CRASHDUMP_FILENAME_KEY: name}})
    return f"{len(arrived)} new, {len(gone)} removed, {len(known)} kept"


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


def update_vms(s):
    """xapi update_vms: the VMs this host owns (resident_on it, or scheduled to be and resident
    nowhere) against the hypervisor's domains, by uuid. Not Running/Paused in the database:
    resident_on, scheduled_to_be_resident_on and current_operations cleared. Running/Paused but no
    live domain: Halted. A live domain of a known VM: resident here with the domain's power state
    and domid. A live domain no VM record knows: xapi destroys it; we leave it and log it. The
    control domain is create_domain_zero's."""
    host = s.localhost
    domains = {d["uuid"]: d for d in s.sim().domains() if d["domid"] != 0}
    live = {u: d for u, d in domains.items() if d["power_state"] in ("Running", "Paused")}
    mine = s.db.records("VM", resident_on=host)
    for ref, record in s.db.records("VM", scheduled_to_be_resident_on=host).items():
        if ref not in mine and not s.db.is_valid_ref(record["resident_on"]):
            mine[ref] = record
    mine = {ref: r for ref, r in mine.items() if not r["is_control_domain"]}
    counts = {"running": 0, "halted": 0, "cleared": 0}
    for ref, record in sorted(mine.items()):
        domain = live.get(record["uuid"])
        if domain is not None:
            continue     # a live domain: set below
        if record["power_state"] not in ("Running", "Paused"):
            if s.db.update("VM", ref, {"current_operations": {}, "resident_on": NULL_REF,
                                       "scheduled_to_be_resident_on": NULL_REF}, record):
                counts["cleared"] += 1
        else:
            s.log.info("dbsync: VM %s is %s here in the database but has no live domain: "
                       "Halted", record["uuid"], record["power_state"])
            _force_halted(s, ref, record)
            counts["halted"] += 1
    for uuid, domain in sorted(live.items()):
        vm = s.db.get_by_uuid_or_none("VM", uuid)
        if vm is None:
            s.log.info("dbsync: domain %d '%s' (%s) has no VM record: left alone (xapi would "
                       "destroy it)", domain["domid"], domain["name"], uuid)
            continue
        record = s.db.call("db.read_record", "VM", vm)
        if record["is_control_domain"]:
            continue
        if s.db.update("VM", vm, {"resident_on": host, "power_state": domain["power_state"],
                                  "domid": domain["domid"]}, record):
            counts["running"] += 1
    return (f"{_count(len(mine), 'guest VM')} of this host, "
            f"{_count(len(live), 'live guest domain')}: "
            f"{counts['running']} set live, {counts['halted']} set Halted, "
            f"{counts['cleared']} cleared")


def _vbd_leaked(s, record):
    """xapi Attach_helpers.has_vbd_leaked: a dom0 VBD with other_config task_id and/or
    related_to is leaked when neither still holds (task pending or cancelling; related VBD
    attached); one with neither key is not ours to remove."""
    other = record.get("other_config") or {}
    task, related = other.get(VBD_TASK_KEY), other.get(RELATED_TO_KEY)
    if task is None and related is None:
        return False
    task_alive = task is not None and (s.db.record("task", task) or {}).get("status") in (
        "pending", "cancelling")
    related_alive = related is not None and bool(
        (s.db.record("VBD", related) or {}).get("currently_attached"))
    return not task_alive and not related_alive


def remove_leaked_vbds(s):
    """xapi remove_all_leaked_vbds: the VBDs of this host's control domains that leaked (a start
    interrupted in the middle of a provision) are unplugged and destroyed. Nothing is plugged
    into a simulated dom0, so here they are destroyed."""
    host = s.localhost
    removed = 0
    for dom0 in s.db.find("VM", resident_on=host, is_control_domain=True):
        for ref, record in sorted(s.db.records("VBD", VM=dom0).items()):
            if _vbd_leaked(s, record):
                s.log.info("dbsync: removing leaked dom0 VBD %s (device %s)", ref,
                           record.get("device"))
                s.db.delete("VBD", ref)
                removed += 1
    return f"{removed} leaked dom0 VBD(s) removed"


def copy_pifs_from_master(s):
    """xapi (sync_copy_pifs_from_master): a slave copies the master's bonds and VLANs for its
    PIFs. Pool work: a slave has no master connection yet."""
    if s.is_master:
        return "master: nothing to copy"
    return "pending: pool work (no master connection yet; this slave syncs into its own xapi-db)"


def resynchronise_pif_currently_attached(s):
    """xapi resynchronise_pif_currently_attached (later resynchronise_pif_params): a PIF is
    attached when its interface is up. Here: when its NIC (by device) exists with a carrier."""
    host = s.localhost
    changed = 0
    pifs = s.db.records("PIF", host=host)
    for ref, record in sorted(pifs.items()):
        nic = hostfacts.nic(record["device"])
        attached = nic is not None and nic.carrier
        if s.db.update("PIF", ref, {"currently_attached": attached}, record):
            s.log.info("dbsync: PIF %s (%s) currently_attached <- %s", ref, record["device"],
                       attached)
            changed += 1
    return f"{_count(len(pifs), 'PIF')}, {changed} changed"


def _patch_info(path):
    """xapi patch_info_of_string: <info uuid name-label name-description version
    after-apply-guidance/>."""
    root = ElementTree.fromstring(path.read_bytes())
    if root.tag != "info":
        raise ValueError(f"root element <{root.tag}>, expected <info>")
    missing = [k for k in ("uuid", "name-label", "name-description", "version",
                           "after-apply-guidance") if k not in root.attrib]
    if missing:
        raise ValueError("missing " + ", ".join(missing))
    uuid = str(uuid_mod.UUID(root.attrib["uuid"]))
    guidance = root.attrib["after-apply-guidance"].split()
    bad = [g for g in guidance if g not in schema_guidance()]
    if bad:
        raise ValueError(f"unknown after-apply-guidance {' '.join(bad)}")
    return {"uuid": uuid, "name_label": root.attrib["name-label"],
            "name_description": root.attrib["name-description"],
            "version": root.attrib["version"], "after_apply_guidance": guidance}


def schema_guidance():
    return schema.get_class("pool_patch").field("after_apply_guidance").enum_values


def patch_update_db(s):
    """xapi Xapi_pool_patch.update_db: each stamp file in /var/patch/applied (the patch's <info>
    XML) has a pool_patch (created from it if missing) and a host_patch of this host (applied,
    timestamp_applied = the file's mtime); host_patches of this host for patches no longer there
    are destroyed. A stamp file that does not parse is skipped with a warning, as xapi."""
    host = s.localhost
    on_disk = {}
    for path in _entries(s.under(PATCH_APPLIED_DIR)):
        if not path.is_file():
            continue
        try:
            info = _patch_info(path)
        except (OSError, ValueError, ElementTree.ParseError) as exc:
            s.log.warning("dbsync: patch stamp file %s skipped: %s", path, exc)
            continue
        on_disk[info["uuid"]] = (info, int(path.stat().st_mtime))
    created_pool = created_host = 0
    wanted = set()
    for uuid, (info, mtime) in sorted(on_disk.items()):
        pool_patch = s.db.get_by_uuid_or_none("pool_patch", uuid)
        if pool_patch is None:
            pool_patch = s.db.create("pool_patch", {**info, "size": 0, "pool_applied": False})
            created_pool += 1
        wanted.add(pool_patch)
        if not s.db.find("host_patch", host=host, pool_patch=pool_patch):
            s.db.create("host_patch", {
                "host": host, "pool_patch": pool_patch, "applied": True,
                "timestamp_applied": datetime.fromtimestamp(mtime, timezone.utc)})
            created_host += 1
    removed = 0
    for ref, record in sorted(s.db.records("host_patch", host=host).items()):
        if record["pool_patch"] not in wanted:
            s.db.delete("host_patch", ref)
            removed += 1
    patches = _count(len(on_disk), "applied patch", "applied patches")
    return (f"{patches}: {created_pool} pool_patch and {created_host} host_patch created, "
            f"{removed} host_patch removed")


# == master only (dbsync_master.ml) ==============================================================

def create_root_user(s):
    """xapi Create_misc.create_root_user: a user short_name "root", fullname "superuser", if no
    user has that short name."""
    if s.db.find("user", short_name="root"):
        return "root user exists"
    s.db.create("user", {"short_name": "root", "fullname": "superuser"})
    return "root user created"


def create_pool_record(s):
    """xapi create_pool_record (a pool with name_label "" and master = this host, if there is
    none) and set_master_pool_reference (pool.master = this host)."""
    host = s.localhost
    pools = sorted(s.db.find("pool"))
    if not pools:
        s.db.create("pool", {"name_label": "", "name_description": "", "master": host})
        return "pool created, master = this host"
    changed = s.db.update("pool", pools[0], {"master": host})
    return "pool exists, master " + ("set to this host" if changed else "is this host")


def set_master_ip(s):
    """xapi set_master_ip: host.address = the management address."""
    changed = s.db.update("host", s.localhost, {"address": s.address})
    return f"address {s.address}" + ("" if changed else ", unchanged")


def set_master_live(s):
    """xapi set_master_live: the master does not heartbeat itself, so its host_metrics.live
    starts true."""
    metrics, created = s.ensure_host_metrics(s.localhost, live=True)
    changed = s.db.update("host_metrics", metrics, {"live": True})
    return "host_metrics.live = true" + (" (metrics created)" if created else
                                         "" if changed else ", unchanged")


def refresh_console_urls(s):
    """xapi refresh_console_urls: each console's location is https://<address of its VM's
    host>/console?ref=<console ref>; a console of a VM resident nowhere is left alone (xapi's
    call fails and is logged)."""
    changed = total = 0
    addresses = {}
    for ref, record in sorted(s.db.records("console").items()):
        vm = s.db.record("VM", record["VM"])
        host = vm["resident_on"] if vm else NULL_REF
        if host not in addresses:
            host_record = s.db.record("host", host)
            addresses[host] = host_record["address"] if host_record else None
        if addresses[host] is None:
            continue
        total += 1
        if s.db.update("console", ref, {"location": _console_location(addresses[host], ref)},
                       record):
            changed += 1
    return f"{_count(total, 'console')} of resident VMs, {changed} changed"


def reset_vm_states(s):
    """xapi reset_vms_running_on_missing_hosts then release_locks. A VM whose resident_on names
    no host: a control domain is destroyed (the host was forgotten), a Running one is reset to
    Halted. Every Halted VM: force_state_reset to Halted (current operations, residence, its VBDs'
    and VIFs' current operations cleared). Every VM: scheduled_to_be_resident_on cleared."""
    destroyed = halted = reset = 0
    vms = s.db.records("VM")
    for ref, record in sorted(vms.items()):
        if s.db.is_valid_ref(record["resident_on"]):
            continue
        if record["is_control_domain"] and record["resident_on"] != NULL_REF:
            s.log.info("dbsync: deleting control domain VM %s: its host %s is no longer in "
                       "the pool", record["uuid"], record["resident_on"])
            s.db.delete("VM", ref)
            destroyed += 1
        elif record["power_state"] == "Running":
            s.log.info("dbsync: resetting VM %s to Halted: VM.resident_on refers to a host "
                       "which is no longer in the pool", record["uuid"])
            _force_halted(s, ref, record)
            halted += 1
    for ref, record in sorted(s.db.records("VM").items()):
        if record["power_state"] == "Halted":
            if _force_halted(s, ref, record):
                reset += 1
        elif s.db.update("VM", ref, {"scheduled_to_be_resident_on": NULL_REF}, record):
            reset += 1
    return (f"{_count(len(vms), 'VM')}: {destroyed} orphaned control domain(s) deleted, "
            f"{halted} set Halted (host gone), {reset} reset")


def cancel_tasks(s):
    """xapi Cancel_tasks.cancel_tasks_on_host ~host_opt:None: every task still pending or
    cancelling is ended (modern xapi destroys it; here its status becomes cancelled) and removed
    from the current_operations of every object."""
    tasks = s.db.records("task")
    doomed = {ref for ref, r in tasks.items() if r["status"] in ("pending", "cancelling")}
    for ref in sorted(doomed):
        s.db.update("task", ref, {"status": "cancelled", "finished": now_utc()}, tasks[ref])
    cleaned = 0
    if doomed:
        for cls in ("VM", "VBD", "VIF", "VDI", "SR", "host"):
            for ref, record in s.db.records(cls).items():
                ops = record.get("current_operations") or {}
                if any(task in doomed for task in ops):
                    kept = {k: v for k, v in ops.items() if k not in doomed}
                    s.db.update(cls, ref, {"current_operations": kept}, record)
                    cleaned += 1
    return f"{_count(len(doomed), 'task')} cancelled, {cleaned} object(s) cleaned"


def sm_plugins(s):
    """The SMAPIv1 plugins as xapi's Sm_exec.get_supported finds them: executables named
    <Driver>SR in the plugins dir; the driver's name is <Driver>, its type lower-case. A file
    that is not executable is skipped with a log line."""
    directory = s.under(SM_DIR)
    found = {}
    for path in _entries(directory):
        if not path.name.endswith("SR") or len(path.name) <= 2:
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode) or not os.access(path, os.X_OK):
            s.log.warning("dbsync: SM plugin %s is not an executable file: skipped", path)
            continue
        driver = path.name[:-2]
        found[driver.lower()] = (driver, f"{SM_DIR}/{path.name}")
    return found


def update_sm_table(s):
    """xapi Xapi_sm.on_xapi_start: an SM record per plugin (type = the lower-case driver name,
    driver_filename its path), created or brought up to date; SM records of plugins that are gone
    are destroyed unless an SR still uses the type (xapi keeps those in use). xapi fills the
    other fields from the plugin's sr_get_driver_info; we do not run plugins."""
    plugins = sm_plugins(s)
    created = updated = 0
    for ty, (driver, filename) in sorted(plugins.items()):
        _, status = s.db.ensure_row("SM", {"type": ty},
                                    {"name_label": driver, "driver_filename": filename})
        created += status == "created"
        updated += status == "updated"
    in_use = {r["type"] for r in s.db.records("SR").values()}
    removed = 0
    for ref, record in sorted(s.db.records("SM").items()):
        if record["type"] not in plugins and record["type"] not in in_use:
            s.log.info("dbsync: unregistering SM plugin %s: gone and not in use", record["type"])
            s.db.delete("SM", ref)
            removed += 1
    return (f"{_count(len(plugins), 'plugin')}: {created} created, {updated} updated, "
            f"{removed} removed")


def create_vlan_records(s):
    """A VLAN record for each PIF with VLAN >= 0 that has none (tag = PIF.VLAN, untagged_PIF =
    that PIF, tagged_PIF = the physical PIF of the same host and device), and PIF.VLAN_master_of
    pointing at it (the upgrade of pre-VLAN-object databases)."""
    created = linked = 0
    pifs = s.db.records("PIF")
    for ref, record in sorted(pifs.items()):
        if record["VLAN"] < 0:
            continue
        master_of = record["VLAN_master_of"]
        if s.db.is_valid_ref(master_of) and \
                s.db.call("db.get_table_from_ref", master_of) == "VLAN":
            continue
        existing = sorted(s.db.find("VLAN", untagged_PIF=ref))
        if existing:
            s.db.update("PIF", ref, {"VLAN_master_of": existing[0]}, record)
            linked += 1
            continue
        tagged = next((r for r, p in sorted(pifs.items())
                       if p["host"] == record["host"] and p["device"] == record["device"]
                       and p["VLAN"] < 0), NULL_REF)
        vlan = new_ref()
        s.db.batch([
            ["create_row", "VLAN", {"tagged_PIF": tagged, "untagged_PIF": ref,
                                    "tag": record["VLAN"]}, vlan],
            ["write_field", "PIF", ref, "VLAN_master_of", vlan]])
        created += 1
    return f"{created} VLAN record(s) created, {linked} linked"


def create_host_metrics(s):
    """Every host has a host_metrics record (created live=false for a host that lacks one; this
    host's is live, see set_master_live)."""
    created = 0
    me = s.localhost
    hosts = s.db.find("host")
    for host in sorted(hosts):
        _, made = s.ensure_host_metrics(host, live=(host == me))
        created += made
    return f"{_count(len(hosts), 'host')}, {created} host_metrics created"


def create_tools_sr(s):
    """xapi create_tools_sr: one tools SR (SR.introduce type iso, content_type iso, shared,
    other_config xensource_internal / xenserver_tools_sr / i18n keys), found by its other_config
    tag; extra ones destroyed; name and other_config kept up to date; a PBD on every host
    (maybe_create_pbd) with device_config location = the tools ISO dir, legacy_mode = true."""
    other_config = {
        XENSOURCE_INTERNAL: "true", TOOLS_SR_TAG: "true", I18N_KEY: "xenserver-tools",
        I18N_ORIGINAL + "name_label": TOOLS_SR_NAME,
        I18N_ORIGINAL + "name_description": TOOLS_SR_DESCRIPTION}
    device_config = {"location": TOOLS_SR_DIR, "legacy_mode": "true"}
    srs = s.db.records("SR")
    tools = sorted(ref for ref, r in srs.items()
                   if (r.get("other_config") or {}).get(TOOLS_SR_TAG) == "true")
    what = []
    if tools:
        sr = tools[0]
        for extra in tools[1:]:
            for pbd in s.db.find("PBD", SR=extra):
                s.db.delete("PBD", pbd)
            s.db.delete("SR", extra)
            what.append(f"extra tools SR {extra} destroyed")
        merged = {**(srs[sr].get("other_config") or {}), **other_config}
        if s.db.update("SR", sr, {"name_label": TOOLS_SR_NAME,
                                  "name_description": TOOLS_SR_DESCRIPTION,
                                  "other_config": merged}, srs[sr]):
            what.append("tools SR updated")
    else:
        sr = s.db.create("SR", {
            "name_label": TOOLS_SR_NAME, "name_description": TOOLS_SR_DESCRIPTION,
            "type": "iso", "content_type": "iso", "shared": True,
            "other_config": other_config})
        what.append("tools SR created")
    pbds = s.db.records("PBD", SR=sr)
    hosts_with_pbd = {r["host"] for r in pbds.values()}
    for ref, record in sorted(pbds.items()):
        s.db.update("PBD", ref, {"device_config": device_config}, record)
    created = 0
    for host in sorted(s.db.find("host")):
        if host not in hosts_with_pbd:
            s.db.create("PBD", {"host": host, "SR": sr, "device_config": device_config,
                                "currently_attached": False})
            created += 1
    if created:
        what.append(f"{created} PBD(s) created")
    directory = s.under(TOOLS_SR_DIR)
    isos = [p for p in _entries(directory) if p.suffix == ".iso"]
    return (f"SR {sr} on {TOOLS_SR_DIR} ({_count(len(isos), 'ISO')}): "
            + (", ".join(what) if what else "unchanged"))


PER_HOST = (
    ("create_localhost", create_localhost),
    ("record_hostname", record_hostname),
    ("load_host_rrd", load_host_rrd),
    ("refresh_localhost_info", refresh_localhost_info),
    ("record_host_memory_properties", record_host_memory_properties),
    ("copy_license_to_db", copy_license_to_db),
    ("create_host_cpu", create_host_cpu),
    ("create_domain_zero", create_domain_zero),
    ("crashdump_resynchronise", crashdump_resynchronise),
    ("update_vms", update_vms),
    ("remove_leaked_vbds", remove_leaked_vbds),
    ("copy_pifs_from_master", copy_pifs_from_master),
    ("resynchronise_pif_currently_attached", resynchronise_pif_currently_attached),
    ("patch_update_db", patch_update_db),
)
MASTER_ONLY = (
    ("create_root_user", create_root_user),
    ("create_pool_record", create_pool_record),
    ("set_master_ip", set_master_ip),
    ("set_master_live", set_master_live),
    ("refresh_console_urls", refresh_console_urls),
    ("reset_vm_states", reset_vm_states),
    ("cancel_tasks", cancel_tasks),
    ("update_sm_table", update_sm_table),
    ("create_vlan_records", create_vlan_records),
    ("create_host_metrics", create_host_metrics),
    ("create_tools_sr", create_tools_sr),
)
SUBSTEP_NAMES = tuple(name for name, _ in PER_HOST + MASTER_ONLY)


def substeps(is_master):
    return PER_HOST + (MASTER_ONLY if is_master else ())


def disabled_substeps(config):
    """The names of disable-dbsync-for (``sync_<name>`` accepted), and the unknown ones."""
    wanted, unknown = set(), []
    for word in config[OPTION]:
        name = word[len("sync_"):] if word.startswith("sync_") and \
            word[len("sync_"):] in SUBSTEP_NAMES else word
        if name in SUBSTEP_NAMES:
            wanted.add(name)
        else:
            unknown.append(word)
    return wanted, unknown


def sync(ctx, db, agent_start_time=None):
    """Run the sub-steps for this host's role against ``db`` (a DbClient). Returns a list of
    (name, status, note) with status "done", "skipped" or "pending"; raises
    XapiError DBSYNC_FAILED <name> <reason> at the first sub-step that fails."""
    s = Sync(ctx, db, agent_start_time)
    disabled, unknown = disabled_substeps(ctx.config)
    if unknown:
        s.log.warning("dbsync: %s names no dbsync sub-step: %s (known: %s)", OPTION,
                      ", ".join(unknown), ", ".join(SUBSTEP_NAMES))
    results = []
    for name, fn in substeps(s.is_master):
        if name in disabled:
            s.log.info("dbsync: %s: skipped (%s)", name, OPTION)
            results.append((name, "skipped", f"skipped ({OPTION})"))
            continue
        try:
            note = fn(s)
        except Exception as exc:   # noqa: BLE001 - named and re-raised as the step's error
            reason = str(exc) if isinstance(exc, XapiError) else f"{type(exc).__name__}: {exc}"
            s.log.error("dbsync: %s: failed: %s", name, reason)
            raise XapiError("DBSYNC_FAILED", name, reason) from exc
        pending = name in PENDING_SUBSTEPS or str(note).startswith("pending")
        s.log.info("dbsync: %s: %s", name, note)
        results.append((name, "pending" if pending else "done", note))
    return results


def describe(results, role):
    counts = {}
    for _, status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    head = f"{role}: {len(results)} sub-steps, " + ", ".join(
        f"{n} {status}" for status, n in sorted(counts.items()))
    return head + "; " + "; ".join(f"{name}: {note}" for name, _, note in results)


def run_dbsync(ctx, runner):
    """The step's action: dbsync against this host's xapi-db (on a slave too: the master
    connection is pool work, so a slave's own xapi-db takes the per-host part)."""
    db = DbClient.connect(ctx.paths, ctx.config["command-timeout"])
    try:
        results = sync(ctx, db)
    finally:
        db.close()
    ctx.notes["dbsync"] = {name: f"{status}: {note}" for name, status, note in results}
    return describe(results, ctx.role.kind)
