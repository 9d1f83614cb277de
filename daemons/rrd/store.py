"""The RRDs xapi-rrd holds: one per host and per VM, by uuid, with their archive files, and the
rrd_updates query over them.

One owner for the archive files: only this module (in xapi-rrd) reads or writes
var/lib/xcp/blobs/rrds/. Nothing here blocks on the network; file work is called from an
executor by main.py.
"""

import logging

from common.errors import XapiError
from daemons.rrd import archive
from daemons.rrd.dump import dump_xml, updates, xport_json, xport_xml
from daemons.rrd.engine import (AVERAGE, HOST_XFF, MAX, MIN, VM_XFF, Rrd, RrdError)
from daemons.rrd.monitor import host_source, vm_source

log = logging.getLogger("xapi-rrd")

HOST, VM = "host", "vm"
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
UPDATE_PARAMS = ("start", "interval", "cf", "host", "vm_uuid", "json")


class Entry:
    __slots__ = ("uuid", "kind", "rrd", "dirty")

    def __init__(self, uuid, kind, rrd, dirty):
        self.uuid, self.kind, self.rrd, self.dirty = uuid, kind, rrd, dirty


class RrdStore:
    """The RRDs in memory. ``vm_min_max()`` says whether new VM RRDs get MIN and MAX archives
    (the pool's other_config create_min_max_in_new_VM_RRDs)."""

    def __init__(self, paths):
        self.paths = paths
        self.entries = {}
        self.saves = 0
        self.save_errors = 0
        self.last_save_error = None
        self.load_notes = {}

    # -- loading ----------------------------------------------------------------------------
    def load(self, uuid, kind):
        """Load the archive of ``uuid`` unless it is in memory already; a corrupt file is set
        aside. Returns a note saying what happened."""
        if uuid in self.entries:
            e = self.entries[uuid]
            return f"in memory ({len(e.rrd.sources)} data sources, last update " \
                   f"{e.rrd.last_update})"
        rrd, note = archive.load_or_none(self.paths, uuid)
        if rrd is not None:
            self.entries[uuid] = Entry(uuid, kind, rrd, False)
            note += f" ({len(rrd.sources)} data sources, last update {rrd.last_update})"
        self.load_notes[uuid] = note
        log.info("RRD %s %s: %s", kind, uuid, note)
        return note

    def load_all(self, host_uuid):
        """Every archive under blobs/rrds at start: the host's as the host RRD, the rest as
        VM RRDs."""
        notes = {}
        for uuid in archive.archived_uuids(self.paths):
            notes[uuid] = self.load(uuid, HOST if uuid == host_uuid else VM)
        return notes

    # -- updating ---------------------------------------------------------------------------
    def get_or_create(self, uuid, kind, now, vm_min_max=False):
        e = self.entries.get(uuid)
        if e is None:
            if kind == HOST:
                rrd = Rrd.create(now, cfs=(AVERAGE, MIN, MAX), xff=HOST_XFF)
            else:
                cfs = (AVERAGE, MIN, MAX) if vm_min_max else (AVERAGE,)
                rrd = Rrd.create(now, cfs=cfs, xff=VM_XFF)
            e = self.entries[uuid] = Entry(uuid, kind, rrd, True)
            log.info("RRD %s %s: new (%s)", kind, uuid,
                     ", ".join(sorted({a.cf for a in rrd.archives})))
        return e

    def update(self, uuid, kind, t, values, vm_min_max=False):
        """One update of ``uuid``'s RRD at ``t``; data sources seen for the first time are
        added. False (and a log line) when ``t`` is not after its last update."""
        e = self.get_or_create(uuid, kind, t - 1, vm_min_max)
        rrd = e.rrd
        make = host_source if kind == HOST else vm_source
        for name in values:
            if name not in rrd.index:
                rrd.add_source(make(name))
        if t <= rrd.last_update:
            log.warning("RRD %s: update at %s skipped: not after its last update %s "
                        "(the clock went back?)", uuid, t, rrd.last_update)
            return False
        rrd.update(t, values)
        e.dirty = True
        return True

    # -- saving -----------------------------------------------------------------------------
    def save(self, only_dirty=True):
        """Write the archives (only those changed since their last save unless
        ``only_dirty`` is false). Returns (files written, bytes). A file that cannot be
        written is logged and counted, and the others are still written."""
        written, size = 0, 0
        for e in list(self.entries.values()):
            if only_dirty and not e.dirty:
                continue
            e.dirty = False
            try:
                size += archive.save(self.paths, e.uuid, e.rrd)
                written += 1
            except OSError as exc:
                e.dirty = True
                self.save_errors += 1
                self.last_save_error = f"{e.uuid}: {exc}"
                log.error("RRD %s: cannot save its archive: %s", e.uuid, exc)
        self.saves += 1
        return written, size

    # -- reading ----------------------------------------------------------------------------
    def dump(self, uuid, kind):
        e = self.entries.get(uuid)
        if e is None or e.kind != kind:
            raise XapiError("RRD_NOT_FOUND", kind, uuid)
        return dump_xml(e.rrd)

    def rrd_updates(self, host_uuid, params):
        """rrd_updates for ``params`` (see parse_update_params): the xport XML or JSON text."""
        host = self.entries.get(host_uuid)
        last = host.rrd.last_update if host else max(
            (e.rrd.last_update for e in self.entries.values()), default=0)
        q = parse_update_params(params, last)
        prefixed = []
        if q["host"] and host is not None:
            prefixed.append((f"host:{host_uuid}", host.rrd))
        if q["vm_uuid"] is not None:
            vm = self.entries.get(q["vm_uuid"])
            if vm is None or vm.kind != VM:
                raise XapiError("INVALID_VALUE", "vm_uuid", q["vm_uuid"], "no RRD for this VM")
            prefixed.append((f"vm:{vm.uuid}", vm.rrd))
        else:
            prefixed.extend((f"vm:{e.uuid}", e.rrd) for e in sorted(
                self.entries.values(), key=lambda e: e.uuid) if e.kind == VM)
        try:
            result = updates(prefixed, q["start"], q["interval"], q["cf"])
        except RrdError as exc:
            raise XapiError("INVALID_VALUE", "interval", q["interval"], str(exc)) from None
        return xport_json(result) if q["json"] else xport_xml(result)


def _bool(params, name):
    value = params.get(name, False)
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise XapiError("INVALID_VALUE", name, value, "expected true or false")


def _int(params, name, required=False):
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise XapiError("INVALID_VALUE", name, "", "missing: an integer is required")
        return None
    if isinstance(value, bool):
        raise XapiError("INVALID_VALUE", name, value, "expected an integer")
    try:
        return int(str(value).strip())
    except ValueError:
        raise XapiError("INVALID_VALUE", name, value, "expected an integer") from None


def parse_update_params(params, last_update):
    """Check the rrd_updates parameters (query strings or typed values): ``start`` (epoch
    seconds; negative: relative to the last update), ``interval`` (seconds per row wanted,
    > 0), ``cf`` (AVERAGE, MIN or MAX; default AVERAGE), ``host`` and ``json`` (booleans),
    ``vm_uuid``. XapiError INVALID_VALUE <name> <value> <reason> for a bad one."""
    if not isinstance(params, dict):
        raise XapiError("INVALID_VALUE", "params", type(params).__name__, "expected a dict")
    unknown = sorted(set(params) - set(UPDATE_PARAMS) - {"session_id"})
    if unknown:
        raise XapiError("INVALID_VALUE", unknown[0], params[unknown[0]],
                        f"unknown parameter (known: {', '.join(UPDATE_PARAMS)})")
    start = _int(params, "start", required=True)
    if start < 0:
        start = last_update + start
    interval = _int(params, "interval")
    if interval is not None and interval <= 0:
        raise XapiError("INVALID_VALUE", "interval", interval, "must be a positive number of "
                        "seconds")
    cf = str(params.get("cf") or AVERAGE).upper()
    if cf not in (AVERAGE, MIN, MAX):
        raise XapiError("INVALID_VALUE", "cf", params.get("cf"), "expected AVERAGE, MIN or MAX")
    vm_uuid = params.get("vm_uuid") or None
    if vm_uuid is not None:
        try:
            archive.check_uuid(vm_uuid)
        except XapiError:
            raise XapiError("INVALID_VALUE", "vm_uuid", vm_uuid, "not a uuid") from None
    return {"start": start, "interval": interval, "cf": cf, "host": _bool(params, "host"),
            "vm_uuid": vm_uuid, "json": _bool(params, "json")}
