"""xapi's Dbsync_master: the dbsync sub-steps run on the master only, and their private
helpers."""

import os
import stat

from common.storage.sr_scan import TOOLS_SR_TAG
from daemons.init.dbsync_client import NULL_REF, new_ref, now_utc
from daemons.init.dbsync_common import _console_location, _count, _entries, _force_halted

# dom0 paths (below ROOT)
TOOLS_SR_DIR = "/opt/xensource/packages/iso"   # xapi_globs.ml tools_sr_dir
SM_DIR = "/opt/xensource/sm"                   # the SMAPIv1 plugins dir (sm_exec.ml)

# xapi_globs.ml
TOOLS_SR_NAME = "XenServer Tools"              # miami_tools_sr_name
TOOLS_SR_DESCRIPTION = "XenServer Tools ISOs"
XENSOURCE_INTERNAL = "xensource_internal"
I18N_KEY = "i18n-key"
I18N_ORIGINAL = "i18n-original-value-"


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
