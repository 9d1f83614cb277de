"""The SR scan: VDI records from the files of an SR's directory (file SRs and local ISO SRs), and
the tools ISO naming and version rules the scan and the step "Establish version of tools VDI"
share.

What the storage manager does, read in xapi-project/sm ISOSR.py: an ISO SR's images are the
files named *.iso or *.img (any case), one VDI each, its location the file name, its uuid the
file name's when that is <uuid>.iso|img, its size the file's, read-only; in an SR with
device_config legacy_mode, a file named xs-tools*/guest-tools* is a tools ISO, named
"xs-tools.iso"/"guest-tools.iso", with sm_config xs-tools-version and xs-tools-build taken from
its name (xs-tools-8.2.0-1.iso: "8.2.0", "1"); in the tools SR (other_config
xenserver_tools_sr=true) the latest gets sm_config xs-tools=true, the others are named "Old
version of ...", and the VDI of an ISO that is gone is kept, marked missing. xapi reads
xs-tools-version / xs-tools-build back (create_templates.ml version_of_tools_vdi) and orders
versions as (major, minor, micro, build) (xapi_pv_driver_version.ml get_latest_tools_vsn).

A file SR (our "file" type) holds one VDI per regular file (dot files, being written, are not
disks): virtual_size is the file's size, physical_utilisation the space it takes (st_blocks, so
a sparse image shows both). Where we differ from SM: a VDI whose file is gone is marked
``missing`` (and un-marked when the file is back), in every SR, never deleted: a directory that is
empty for a while (a disk not mounted yet) must not erase the records VBDs and operators rely on;
forgetting a VDI is the operator's call (VDI.forget). SR physical_size is the file system's size,
physical_utilisation and virtual_allocation the sums over its present VDIs (SM reports the file
system's use, which moves with every other file and would rewrite the SR at each scan).

The scan is written once, as a generator of xapi-db requests (``scan_steps``): it reads the SR's
VDI rows, lists the directory, and ends with one ``db.batch`` that creates and updates the rows
atomically (a scan interrupted half-way writes nothing). Two drivers run it: ``scan_sr`` with a
blocking client (xapi-init's steps) and ``scan_sr_async`` on an asyncio loop (xapi-api's SR.scan
and the scanning job), which runs the file-system work in an executor thread. xapi's background
scanner (xapi_sr.ml scan_all) only scans plugged SRs whose other_config has auto-scan=true or a
"dirty" key: ``wants_auto_scan``.
"""

import asyncio
import os
import re
import stat
import uuid as uuid_mod

from common.errors import XapiError
from common.platform import hostfacts

TOOLS_SR_TAG = "xenserver_tools_sr"  # SR other_config key of the tools SR (xapi_globs.ml)
AUTO_SCAN = "auto-scan"              # SR other_config: "true" -> scanned in the background
DIRTY = "dirty"                      # SR other_config key: scanned by the next background pass

ISO_IMAGE = re.compile(r"\.(iso|img)$", re.I)
UUID_FILE = re.compile(r"^([0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12})(?:\.[^.]+)?$", re.I)
TOOLS_PREFIXES = ("xs-tools", "guest-tools")
XS_TOOLS = "xs-tools"
XS_TOOLS_VERSION = "xs-tools-version"
XS_TOOLS_BUILD = "xs-tools-build"
OLD_VERSION = "Old version of "
NO_VERSION = (-1, -1, -1, -1)        # xapi_globs.ml tools_version_none


# -- the tools ISO --------------------------------------------------------------------------------

def tools_iso_version(filename):
    """(version, build) strings of a tools ISO's file name as ISOSR records them, or None when
    the file is not a tools ISO: guest-tools-8.4.0-12.iso -> ("8.4.0", "12"), guest-tools.iso ->
    ("", "0")."""
    if not filename.startswith(TOOLS_PREFIXES) or not ISO_IMAGE.search(filename):
        return None
    rest = filename[filename.find("tools") + len("tools"):-len(".iso")].strip("-")
    version, _, build = rest.partition("-")
    return version, build or "0"


def tools_iso_name(filename):
    return "xs-tools.iso" if filename.startswith("xs-") else "guest-tools.iso"


def version_key(version, build):
    """(major, minor, micro, build) as xapi orders tools versions; NO_VERSION when the version is
    not three numbers (the build loses any non-digit suffix, as in xapi)."""
    parts = version.split(".")
    digits = re.sub(r"\D.*$", "", build)
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return NO_VERSION
    return tuple(int(p) for p in parts) + (int(digits) if digits else -1,)


def format_version(key):
    """xapi's string_of_vsn4: "8.4.0-12"; None for NO_VERSION."""
    return None if key == NO_VERSION else "%d.%d.%d-%d" % key


def latest_tools_iso(filenames):
    """The tools ISO among ``filenames`` with the highest version (name order breaks ties and
    ranks unversioned ones), or None."""
    tools = [(version_key(*v), name) for name in filenames
             if (v := tools_iso_version(name)) is not None]
    return max(tools)[1] if tools else None


# -- listing an SR's directory ---------------------------------------------------------------------

def sr_directory(paths, device_config):
    """The directory under ROOT that device_config ``location`` names (a dom0 path); a location
    that is missing, relative or climbs out with ".." is an error naming it."""
    location = (device_config or {}).get("location", "")
    if not location.startswith("/") or ".." in location.split("/"):
        raise XapiError("SR_LOCATION_INVALID", repr(location),
                        "device_config location must be an absolute dom0 path without '..'")
    return paths.under(location)


def list_files(directory, iso):
    """{file name: os.stat_result} of the disk files of an SR directory. An unreadable directory
    is SR_SCAN_FAILED naming it (the caller changes nothing then)."""
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise XapiError("SR_SCAN_FAILED", str(directory),
                        f"cannot be read: {exc.strerror or exc}") from None
    found = {}
    for entry in entries:
        name = entry.name
        if name.startswith(".") or (iso and not ISO_IMAGE.search(name)):
            continue
        try:
            st = entry.stat()          # follows a symlink to an image
        except OSError:
            continue                   # vanished or dangling: not a disk now
        if stat.S_ISREG(st.st_mode):
            found[name] = st
    return found


# -- the scan -------------------------------------------------------------------------------------

def _facts(name, st, iso, legacy):
    """The VDI fields a file gives."""
    if iso:
        values = {"virtual_size": st.st_size, "physical_utilisation": st.st_size,
                  "read_only": True}
    else:
        values = {"virtual_size": st.st_size, "physical_utilisation": st.st_blocks * 512,
                  "read_only": not st.st_mode & 0o222}   # no write bit for anyone
    sm_config = {}
    tools = tools_iso_version(name) if iso and legacy else None
    if tools is not None:
        sm_config = {XS_TOOLS_VERSION: tools[0], XS_TOOLS_BUILD: tools[1]}
    return values, sm_config, tools is not None


def wants_auto_scan(record):
    """xapi scan_all's filter: other_config auto-scan=true, or a "dirty" key."""
    other = record.get("other_config") or {}
    return other.get(AUTO_SCAN) == "true" or DIRTY in other


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _changed(current, values):
    """The entries of ``values`` that differ from ``current`` (a record off the bus)."""
    return {k: v for k, v in values.items() if _norm(current.get(k)) != _norm(v)}


def _eq(field, value):
    return ["eq", ["field", field], ["literal", value]]


def _new_ref():
    return f"OpaqueRef:{uuid_mod.uuid4()}"


def scan_steps(paths, log, sr, record, pbd_record):
    """The scan of SR ``sr`` as a generator: it yields xapi-db requests ``(method, *args)``, is
    sent their results, and returns a short note. XapiError (SR_LOCATION_INVALID,
    SR_SCAN_FAILED) is raised before anything is written when the directory cannot be read."""
    sr_type = record["type"]
    if sr_type not in ("file", "iso"):
        return f"type {sr_type}: no local directory to scan"
    iso = sr_type == "iso"
    device_config = pbd_record["device_config"] or {}
    legacy = iso and "legacy_mode" in device_config
    directory = sr_directory(paths, device_config)
    files = list_files(directory, iso)
    total_bytes, _ = hostfacts.disk_usage(directory)
    is_tools_sr = (record["other_config"] or {}).get(TOOLS_SR_TAG) == "true"
    latest = latest_tools_iso(files) if is_tools_sr else None
    vdis = yield ("db.read_records_where", "VDI", _eq("SR", sr))
    by_location = {}
    for ref, vdi in sorted(vdis.items()):
        by_location.setdefault(vdi["location"], (ref, vdi))
    calls = []
    taken = set()                    # uuids given to new rows by this scan
    created = updated = missing = 0
    for name, st in sorted(files.items()):
        values, sm_config, is_tools = _facts(name, st, iso, legacy)
        found = by_location.get(name)
        current_sm = dict(found[1]["sm_config"] or {}) if found else {}
        sm_config = {**{k: v for k, v in current_sm.items()
                        if k not in (XS_TOOLS, XS_TOOLS_VERSION, XS_TOOLS_BUILD)}, **sm_config}
        if is_tools_sr and name == latest:
            sm_config[XS_TOOLS] = "true"
        values.update(sm_config=sm_config, missing=False)
        if is_tools_sr and is_tools:
            label = tools_iso_name(name)
            values["name_label"] = label if name == latest else OLD_VERSION + label
        if found is None:
            match = UUID_FILE.match(name)
            uuid = match.group(1).lower() if match else None
            if uuid and (uuid in taken or (yield ("db.find_refs_with_filter", "VDI",
                                                  _eq("uuid", uuid)))):
                log.warning("SR %s: %s names uuid %s, which another VDI has: a new uuid is "
                            "used", record["name_label"], name, uuid)
                uuid = None
            row = {"name_label": name, "name_description": "", "SR": sr, "type": "user",
                   "location": name, "managed": True, "sharable": False, **values}
            if uuid:
                row["uuid"] = uuid
                taken.add(uuid)
            calls.append(["create_row", "VDI", row, _new_ref()])
            created += 1
        else:
            changed = _changed(found[1], values)
            calls += [["write_field", "VDI", found[0], k, v] for k, v in changed.items()]
            updated += bool(changed)
    for location, (ref, vdi) in sorted(by_location.items()):
        if location in files:
            continue
        values = {"missing": True}
        if is_tools_sr and XS_TOOLS in (vdi["sm_config"] or {}):
            values["sm_config"] = {k: v for k, v in vdi["sm_config"].items() if k != XS_TOOLS}
        if is_tools_sr and tools_iso_version(location) is not None and \
                not vdi["name_label"].startswith(OLD_VERSION):
            values["name_label"] = OLD_VERSION + vdi["name_label"]
        changed = _changed(vdi, values)
        if changed:
            log.info("SR %s: VDI %s (%s) marked missing: its file is gone",
                     record["name_label"], vdi["uuid"], location)
            calls += [["write_field", "VDI", ref, k, v] for k, v in changed.items()]
            missing += 1
    present = [_facts(name, st, iso, legacy)[0] for name, st in files.items()]
    sr_values = _changed(record, {
        "physical_size": total_bytes,
        "physical_utilisation": sum(v["physical_utilisation"] for v in present),
        "virtual_allocation": sum(v["virtual_size"] for v in present)})
    calls += [["write_field", "SR", sr, k, v] for k, v in sr_values.items()]
    if calls:
        yield ("db.batch", calls)
    return (f"{len(files)} file(s): {created} VDI(s) created, {updated} updated, "
            f"{missing} marked missing")


def scan_sr(ctx, db, sr, record, pbd_record):
    """The scan with a blocking client: ``ctx`` gives paths and log, ``db.call(method, *args)``
    reaches xapi-db. Returns the note."""
    steps = scan_steps(ctx.paths, ctx.log, sr, record, pbd_record)
    try:
        request = next(steps)
        while True:
            request = steps.send(db.call(*request))
    except StopIteration as stop:
        return stop.value


def _advance(steps, value, first):
    """One step of the generator -> ("call", request) or ("done", note) (StopIteration cannot
    cross an executor's future)."""
    try:
        return "call", (next(steps) if first else steps.send(value))
    except StopIteration as stop:
        return "done", stop.value


async def scan_sr_async(ctx, db, sr, record, pbd_record):
    """The scan from an asyncio loop: the generator (the directory listing, the file system's
    size) runs in the default executor, ``await db.call(method, *args)`` on the loop."""
    loop = asyncio.get_running_loop()
    steps = scan_steps(ctx.paths, ctx.log, sr, record, pbd_record)
    kind, value = await loop.run_in_executor(None, _advance, steps, None, True)
    while kind == "call":
        result = await db.call(*value)
        kind, value = await loop.run_in_executor(None, _advance, steps, result, False)
    return value
