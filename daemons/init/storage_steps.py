"""The local actions of the start-up steps "Initialise storage", "Establish version of tools
VDI" and "Plug unplugged PBDs": this host's local file SR, PBDs for the shared SRs, plugging this
host's PBDs, the SR scan (common/storage/sr_scan.py) and the tools ISO's version.

Like platform_steps.py each action takes the HostContext and the runner, returns a short note and
raises XapiError to fail its step; run again on the same host it writes nothing.

What xapi does, read in xapi-project/xen-api create_storage.ml: create_storage makes a PBD on this
host for every shared SR that lacks one, its device_config copied from the master's PBD without
"SRmaster" (extra PBDs of this host for one SR are destroyed); plug_all_pbds resynchronises and
plugs this host's PBDs, and one that fails raises the alert PBD_PLUG_FAILED_ON_SERVER_START
(priority 1, class Host); plug_unplugged_pbds (the later step) plugs what is still unplugged and
only logs failures. The local SR is what a XenServer installer makes ("Local storage",
other_config i18n-key local-storage), here of type "file" on a directory (Paths.local_sr).
Plugging, without storage plugins to run: a file SR's directory is made if missing and must be
readable and writable; a local ISO SR (device_config legacy_mode) needs its directory; any other
type cannot be attached here and stays unplugged, logged with its name.
"""

import os

from common.errors import XapiError
from common.storage import sr_scan
from daemons.init.dbsync_client import DbClient
from daemons.init.dbsync_common import Sync, _count, _entries
from common.storage.sr_scan import TOOLS_SR_TAG
from daemons.init.dbsync_master import TOOLS_SR_DIR

LOCAL_SR_NAME = "Local storage"
LOCAL_SR_OTHER_CONFIG = {"i18n-key": "local-storage",
                         "i18n-original-value-name_label": LOCAL_SR_NAME}
LOCAL_SR_TYPE = "file"
SR_MASTER_KEY = "SRmaster"
PBD_PLUG_FAILED = "PBD_PLUG_FAILED_ON_SERVER_START"   # api_messages.ml, priority 1


def _session(ctx):
    db = DbClient.connect(ctx)
    return db, Sync(ctx, db)


def _dom0_path(ctx, path):
    return "/" + str(path.relative_to(ctx.paths.root))


def _sr_label(record, sr):
    return f"{record['name_label']!r} ({record['uuid'] if record else sr})"


# -- the local SR and the shared SRs' PBDs ---------------------------------------------------------

def ensure_local_sr(ctx, s):
    """This host's local file SR: the SR of type file whose PBD on this host has device_config
    location = Paths.local_sr; made with its directory and its (unplugged) PBD when missing.
    Returns (SR ref, created?)."""
    location = _dom0_path(ctx, ctx.paths.local_sr)
    for pbd in s.db.records("PBD", host=s.localhost).values():
        if (pbd["device_config"] or {}).get("location") == location:
            sr = s.db.record("SR", pbd["SR"])
            if sr is not None and sr["type"] == LOCAL_SR_TYPE:
                return pbd["SR"], False
    ctx.paths.local_sr.mkdir(parents=True, exist_ok=True)
    sr = s.db.create("SR", {
        "name_label": LOCAL_SR_NAME, "name_description": "", "type": LOCAL_SR_TYPE,
        "content_type": "user", "shared": False, "other_config": dict(LOCAL_SR_OTHER_CONFIG)})
    s.db.create("PBD", {"host": s.localhost, "SR": sr, "device_config": {"location": location},
                        "currently_attached": False})
    ctx.log.info("local SR %s created on %s", sr, location)
    return sr, True


def create_pbds_for_shared_srs(ctx, s):
    """xapi create_pbds_for_shared_srs (on the master): a PBD on this host for each shared SR
    that has none, device_config from the master's PBD (else any PBD of the SR) without
    SRmaster; extra PBDs of this host for one SR destroyed. Returns how many were created."""
    host = s.localhost
    pools = s.db.records("pool")
    master = pools[sorted(pools)[0]]["master"] if pools else host
    created = 0
    for sr, record in sorted(s.db.records("SR", shared=True).items()):
        pbds = s.db.records("PBD", SR=sr)
        mine = sorted(ref for ref, p in pbds.items() if p["host"] == host)
        for extra in mine[1:]:
            ctx.log.warning("SR %s: extra PBD %s of this host destroyed",
                            _sr_label(record, sr), extra)
            s.db.delete("PBD", extra)
        if mine:
            continue
        sources = sorted(pbds.items(), key=lambda item: (item[1]["host"] != master, item[0]))
        if not sources:
            ctx.log.warning("shared SR %s has no PBD to copy a device_config from: no PBD "
                            "made for this host", _sr_label(record, sr))
            continue
        device_config = {k: v for k, v in (sources[0][1]["device_config"] or {}).items()
                         if k != SR_MASTER_KEY}
        s.db.create("PBD", {"host": host, "SR": sr, "device_config": device_config,
                            "currently_attached": False})
        created += 1
    return created


def ensure_tools_iso_dir(ctx):
    """The tools ISO directory (the tools SR's files) made when missing: a dom0 has it from its
    installation; an empty one is an ISO SR with no ISO, which plugs. Returns whether it was
    made; one that cannot be made is left to the plug to name."""
    directory = ctx.paths.under(TOOLS_SR_DIR)
    if directory.exists():
        return False
    try:
        directory.mkdir(parents=True)
    except OSError as exc:
        ctx.log.warning("cannot make the tools ISO directory %s: %s", directory,
                        exc.strerror or exc)
        return False
    return True


# -- plugging ------------------------------------------------------------------------------------

def attach_problem(ctx, sr_record, pbd_record):
    """Why the PBD cannot be attached now (making a file SR's directory first), None when it can."""
    sr_type = sr_record["type"]
    device_config = pbd_record["device_config"] or {}
    if sr_type == "iso" and "legacy_mode" not in device_config:
        return "remote ISO SRs (NFS, CIFS) cannot be mounted here"
    if sr_type not in ("file", "iso"):
        return f"no storage plugin attaches SRs of type {sr_type!r} here"
    try:
        directory = sr_scan.sr_directory(ctx.paths, device_config)
    except XapiError as exc:
        return str(exc)
    if sr_type == "file":
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot make {directory}: {exc.strerror or exc}"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    need = os.R_OK | os.X_OK | (os.W_OK if sr_type == "file" else 0)
    if not os.access(directory, need):
        return f"{directory} is not {'readable and writable' if sr_type == 'file' else 'readable'}"
    return None


def plug_pbds(ctx, s, only_unplugged):
    """Plug this host's PBDs (xapi Xapi_pbd.plug, best effort; with ``only_unplugged`` false the
    attached ones are checked again, as plug_all_pbds resynchronises first). Returns
    (plugged SR labels, [(SR label, why)] of those that cannot be)."""
    plugged, failed = [], []
    for ref, pbd in sorted(s.db.records("PBD", host=s.localhost).items()):
        if only_unplugged and pbd["currently_attached"]:
            continue
        sr_record = s.db.record("SR", pbd["SR"])
        if sr_record is None:
            continue                       # a dangling PBD: the GC's to delete
        label = _sr_label(sr_record, pbd["SR"])
        problem = attach_problem(ctx, sr_record, pbd)
        if s.db.update("PBD", ref, {"currently_attached": problem is None}, pbd):
            ctx.log.info("PBD %s of SR %s currently_attached <- %s", ref, label, problem is None)
        if problem is None:
            plugged.append(label)
        else:
            ctx.log.warning("SR %s cannot be plugged: %s", label, problem)
            failed.append((label, problem))
    return plugged, failed


def scan_attached_srs(ctx, s):
    """Scan every SR with an attached PBD on this host. Returns (notes, errors)."""
    notes, errors = [], []
    for pbd in sorted(s.db.records("PBD", host=s.localhost, currently_attached=True).values(),
                      key=lambda p: p["SR"]):
        record = s.db.record("SR", pbd["SR"])
        if record is None:
            continue
        label = _sr_label(record, pbd["SR"])
        try:
            note = sr_scan.scan_sr(ctx, s.db, pbd["SR"], record, pbd)
            notes.append(f"{record['name_label']}: {note}")
        except XapiError as exc:
            why = " ".join(exc.params) if exc.code == "SR_SCAN_FAILED" else str(exc)
            ctx.log.warning("SR %s not scanned: %s", label, why)
            errors.append(f"{label}: {why}")
    return notes, errors


# -- the steps ------------------------------------------------------------------------------------

def initialise_storage(ctx, runner):
    """xapi create_storage_localhost: the local SR (and the tools ISO directory when missing),
    PBDs for shared SRs (master), every PBD of this host plugged (the alert
    PBD_PLUG_FAILED_ON_SERVER_START when one cannot be), then the attached SRs scanned. An SR
    whose directory cannot be read fails the step (no_exn: start-up goes on) and keeps its VDI
    records as they were."""
    db, s = _session(ctx)
    try:
        sr, created = ensure_local_sr(ctx, s)
        notes = [f"local SR {sr} " + ("created" if created else "exists")
                 + f" on {_dom0_path(ctx, ctx.paths.local_sr)}"]
        if ensure_tools_iso_dir(ctx):
            notes.append(f"made {TOOLS_SR_DIR}")
        if s.is_master:
            notes.append(f"{_count(create_pbds_for_shared_srs(ctx, s), 'PBD')} made for "
                         "shared SRs")
        plugged, failed = plug_pbds(ctx, s, only_unplugged=False)
        notes.append(f"{len(plugged)} SR(s) plugged")
        if failed:
            notes.append("not plugged: " + "; ".join(f"{label}: {why}" for label, why in failed))
            db.call("message.create", PBD_PLUG_FAILED, 1, "Host", s.host_uuid, "")
        scanned, errors = scan_attached_srs(ctx, s)
        notes += scanned
    finally:
        db.close()
    if errors:
        raise XapiError("SR_SCAN_FAILED", "; ".join(errors))
    return "; ".join(notes)


def establish_tools_version(ctx, runner):
    """xapi get_latest_tools_vsn: the latest tools ISO (xs-tools*/guest-tools* .iso) in the
    tools ISO directory and its version. xapi keeps it in memory (Xapi_globs.tools_version); we
    record it where xapi's other readers look, the tools SR's VDI of that ISO: its sm_config
    xs-tools=true, xs-tools-version, xs-tools-build (the tools SR is rescanned for that when
    this host's PBD of it is plugged)."""
    directory = ctx.paths.under(TOOLS_SR_DIR)
    names = [p.name for p in _entries(directory)]
    latest = sr_scan.latest_tools_iso(names)
    if latest is None:
        ctx.notes["tools_version"] = None
        return f"no tools ISO in {TOOLS_SR_DIR}"
    version = sr_scan.format_version(sr_scan.version_key(*sr_scan.tools_iso_version(latest)))
    ctx.notes["tools_version"] = version
    what = f"{latest}: version {version or 'unknown (none in its name)'}"
    db, s = _session(ctx)
    try:
        tools = sorted(ref for ref, r in s.db.records("SR").items()
                       if (r["other_config"] or {}).get(TOOLS_SR_TAG) == "true")
        if not tools:
            return f"{what}; no tools SR in the database"
        pbds = s.db.records("PBD", SR=tools[0], host=s.localhost)
        pbd = next((p for p in pbds.values() if p["currently_attached"]), None)
        if pbd is None:
            return f"{what}; the tools SR is not plugged on this host: not recorded"
        sr_scan.scan_sr(ctx, db, tools[0], s.db.record("SR", tools[0]), pbd)
        vdi = next(iter(sorted(s.db.records("VDI", SR=tools[0], location=latest).items())),
                   None)
        if vdi is None:
            return f"{what}; no VDI for it in the tools SR"
        return (f"{what}; recorded on VDI {vdi[1]['uuid']} (sm_config "
                + ", ".join(f"{k}={vdi[1]['sm_config'].get(k)}" for k in (
                    sr_scan.XS_TOOLS, sr_scan.XS_TOOLS_VERSION, sr_scan.XS_TOOLS_BUILD)) + ")")
    finally:
        db.close()


def plug_unplugged_pbds(ctx, runner):
    """xapi plug_unplugged_pbds: plug this host's PBDs that are not attached; one that cannot be
    is logged with its SR's name and start-up goes on (the host re-enables itself next)."""
    db, s = _session(ctx)
    try:
        unplugged = len(s.db.find("PBD", host=s.localhost, currently_attached=False))
        plugged, failed = plug_pbds(ctx, s, only_unplugged=True)
    finally:
        db.close()
    if not unplugged:
        return "every PBD of this host is plugged"
    note = f"{len(plugged)} of {unplugged} unplugged PBD(s) plugged"
    if failed:
        note += "; could not plug: " + "; ".join(f"{label}: {why}" for label, why in failed)
    return note
