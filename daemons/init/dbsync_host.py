"""xapi's Dbsync_slave: the dbsync sub-steps run on every host (master and slave), and their
private helpers."""

import os
import platform
import uuid as uuid_mod
from datetime import datetime, timezone
from xml.etree import ElementTree

from common import inventory as inventory_mod
from common import license as license_mod
from common import schema
from common.daemon import VERSION
from common.platform import hostfacts
from daemons.init.dbsync_client import NULL_REF, new_ref, now_utc, same
from daemons.init.dbsync_common import (_changes, _console_location, _count, _entries,
                                        _force_halted)

# dom0 paths (below ROOT)
CRASH_DIR = "/var/crash"                       # xapi_host_crashdump.ml crash_dir
PATCH_APPLIED_DIR = "/var/patch/applied"       # xapi_pool_patch.ml patch_applied_dir

# datamodel_common.ml: api_version_major 2L; api_version_minor 21L at schema 5.781 (the Nile
# release, 5.775, and the numbered releases after it). Our schema says 5.909, past the last
# datamodel_common.ml we could read; 2.21 is xapi's API version of that line.
API_VERSION_MAJOR = 2
API_VERSION_MINOR = 21
API_VERSION_VENDOR = "XenSource"

# xapi_globs.ml
VBD_TASK_KEY = "task_id"
RELATED_TO_KEY = "related_to"
BOOT_TIME_KEY = "boot_time"
AGENT_START_KEY = "agent_start_time"

# host_crashdump has no "filename" field here (xapi's is internal): the file name is kept in
# other_config under this key.
CRASHDUMP_FILENAME_KEY = "filename"

# "cpu MHz" in /proc/cpuinfo follows frequency scaling; xapi reads a copy taken at boot
# (/etc/xensource/boot_time_cpus) so its records do not move. We keep the recorded speed unless
# it is off by more than this share.
CPU_SPEED_SLACK = 0.10

PENDING_SUBSTEPS = {}


def ocaml_string_of_float(value):
    """OCaml's string_of_float ("%.12g", a trailing "." when it looks like an int): xapi writes
    host.other_config boot_time and agent_start_time with it."""
    text = "%.12g" % value
    if all(c.isdigit() or c == "-" for c in text):
        text += "."
    return text


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
    """xapi: load_rrd for the host's uuid, which xcp-rrdd loads. Here xapi-rrd (started by this
    step, the one owner of blobs/rrds/) loads blobs/rrds/<uuid>.gz; its note says what it found
    (loaded, no archive, or corrupt and set aside)."""
    with s.ctx.rpc("xapi-rrd") as rrd:
        return rrd.call("rrd.load_host_rrd", s.host_uuid)


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
    memory_free is rewritten only when it is off by more than hostfacts.MEMORY_FREE_SLACK of
    the total."""
    host = s.localhost
    metrics, _ = s.ensure_host_metrics(host)
    total, free = hostfacts.memory()
    current = s.db.call("db.read_record", "host_metrics", metrics)
    values = {"memory_total": int(total)}
    if abs(current.get("memory_free", 0) - free) > hostfacts.MEMORY_FREE_SLACK * total or \
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
        nic = hostfacts.nic(record["device"], s.ctx.paths.sys_class_net)
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

