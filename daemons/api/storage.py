"""SR.scan (a XenAPI call) and ``api.scan_srs`` (the RPC of the periodic job "sr-scan", xapi's
SR scanning thread), both running common/storage/sr_scan.py's scan.

What xapi does (xen-api xapi_sr.ml): SR.scan asks the SR's storage plugin for its VDIs and brings
the VDI records in line; the scanning thread wakes every 30 s (host other_config
auto-scan-interval) and scans the plugged SRs whose other_config has auto-scan=true or a "dirty"
key (scan_all), one scan per SR at a time. Here only this host's files can be read, so an SR is
scanned through this host's attached PBD; an SR without one is ``SR_NO_PBDS [sr]``. After a
scan the "dirty" key is removed, so a dirty SR is scanned by the next pass and then left alone.
"""

import asyncio

from common import schema
from common.errors import XapiError
from common.storage import sr_scan
from daemons.api import marshal as m
from daemons.api.methods import Method

SCANNABLE_TYPES = ("file", "iso")


def _eq(field, value):
    return ["eq", ["field", field], ["literal", value]]


def _and(*terms):
    expr = terms[0]
    for term in terms[1:]:
        expr = ["and", expr, term]
    return expr


class Storage:
    def __init__(self, api):
        self.api = api
        self.locks = {}              # SR ref -> asyncio.Lock: one scan of an SR at a time
        self.scans = 0
        self.scan_failures = 0

    async def _attached_pbds(self, **eq):
        host = await self.api.sessions.host_ref()
        if host == schema.NULL_REF:
            return {}
        terms = [_eq("host", host), _eq("currently_attached", True)]
        terms += [_eq(k, v) for k, v in eq.items()]
        return await self.api.db.call("db.read_records_where", "PBD", _and(*terms))

    async def scan(self, sr):
        """Scan SR ``sr`` through this host's attached PBD. Returns the scan's note."""
        db = self.api.db
        record = await db.call("db.read_record", "SR", sr)          # HANDLE_INVALID
        if record["type"] not in SCANNABLE_TYPES:
            raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr)
        pbds = await self._attached_pbds(SR=sr)
        if not pbds:
            raise XapiError("SR_NO_PBDS", sr)
        pbd = pbds[sorted(pbds)[0]]
        lock = self.locks.setdefault(sr, asyncio.Lock())
        async with lock:
            self.scans += 1
            try:
                note = await sr_scan.scan_sr_async(self.api, db, sr, record, pbd)
            except XapiError:
                self.scan_failures += 1
                raise
            other = (await db.call("db.read_field", "SR", sr, "other_config")) or {}
            if sr_scan.DIRTY in other:
                await db.call("db.process_structured_field", "SR", sr, "other_config",
                              "remove_map", sr_scan.DIRTY)
        self.api.log.info("SR %s (%s) scanned: %s", record["name_label"], record["uuid"], note)
        return note

    async def scan_srs(self, only_auto_scan=True):
        """RPC (the job "sr-scan"): scan the SRs attached on this host, by default only those
        xapi's scanning thread scans (other_config auto-scan=true or "dirty"); with
        ``only_auto_scan`` false, all of them. Every SR is tried; when one fails the call fails
        with SR_SCAN_FAILED naming each failure (the job counts it and tries again next
        period)."""
        pbds = await self._attached_pbds()
        scanned, skipped, errors = [], 0, []
        for sr in sorted({pbd["SR"] for pbd in pbds.values()}):
            try:
                record = await self.api.db.call("db.read_record", "SR", sr)
            except XapiError as exc:
                if exc.code == "HANDLE_INVALID":
                    continue                       # a dangling PBD: the DB GC's to remove
                raise
            if record["type"] not in SCANNABLE_TYPES or (
                    only_auto_scan and not sr_scan.wants_auto_scan(record)):
                skipped += 1
                continue
            label = f"{record['name_label']!r} ({record['uuid']})"
            try:
                scanned.append(f"{label}: {await self.scan(sr)}")
            except XapiError as exc:
                self.api.log.warning("SR %s not scanned: %s", label, exc)
                errors.append(f"{label}: {exc}")
        if errors:
            raise XapiError("SR_SCAN_FAILED", "; ".join(errors))
        return {"scanned": len(scanned), "skipped": skipped, "notes": scanned}

    # -- the XenAPI --------------------------------------------------------------------------
    async def _sr_scan(self, call, sr):
        await self.scan(sr)

    def methods(self):
        return [Method("SR.scan", (("sr", m.ref("SR")),), m.VOID, self._sr_scan)]
