"""The step "Perform house-keeping on the internal database" (xapi's dbsync): bring the pool
database up to date with this host at every start, through xapi-db.

Both lists of REFERENCE.md "dbsync", in order. Each sub-step is a function of dbsync_host (per
host) or dbsync_master (master only), logged as ``dbsync: <name>: <note>``, skippable by naming
it in the option ``disable-dbsync-for`` (the ``sync_``-prefixed form of xapi's switches,
``sync_create_host_cpu``..., is accepted too), and idempotent: run again it writes nothing
(every write compares first; xapi-db would drop an unchanged write anyway), so a second run bumps
no generation and creates no row. A sub-step that raises fails the whole step with
``DBSYNC_FAILED <name> <reason>``.

Per host (master and slave; a slave has no master connection yet, pool work, so it syncs into its
own xapi-db):

- ``create_localhost``: the host record (uuid = inventory INSTALLATION_UUID, name_label = the
  hostname) with its host_metrics, if missing.
- ``record_hostname``: host.hostname.
- ``load_host_rrd``: xapi-rrd (started by the step) loads blobs/rrds/<uuid>.gz.
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
paths are constants of dbsync_host and dbsync_master); a missing directory is an empty one. xapi-db
is reached through dbsync_client.DbClient; dbsync_common holds what the sub-steps share (Sync).
"""

from common.errors import XapiError
from daemons.init.dbsync_client import DbClient
from daemons.init.dbsync_common import Sync
from daemons.init.dbsync_host import (
    PENDING_SUBSTEPS, copy_license_to_db, copy_pifs_from_master, crashdump_resynchronise,
    create_domain_zero, create_host_cpu, create_localhost, load_host_rrd, patch_update_db,
    record_host_memory_properties, record_hostname, refresh_localhost_info, remove_leaked_vbds,
    resynchronise_pif_currently_attached, update_vms)
from daemons.init.dbsync_master import (
    cancel_tasks, create_host_metrics, create_pool_record, create_root_user, create_tools_sr,
    create_vlan_records, refresh_console_urls, reset_vm_states, set_master_ip, set_master_live,
    update_sm_table)

OPTION = "disable-dbsync-for"


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
    db = DbClient.connect(ctx)
    try:
        results = sync(ctx, db)
    finally:
        db.close()
    ctx.notes["dbsync"] = {name: f"{status}: {note}" for name, status, note in results}
    return describe(results, ctx.role.kind)


def register_sr_plugins(ctx, runner):
    """The step "Register SR plugins" (xapi's Sm.register): SM records from the executables in
    the plugins dir, the same work as the master's dbsync sub-step update_sm_table. On a slave
    the pool DB is the master's, reached only once the slave has logged in (pool work)."""
    if not ctx.role.is_master:
        return "slave: SM records are the master's (its dbsync keeps them)"
    db = DbClient.connect(ctx)
    try:
        return update_sm_table(Sync(ctx, db))
    finally:
        db.close()
