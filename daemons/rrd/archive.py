"""RRD archive files: var/lib/xcp/blobs/rrds/<uuid>.gz, the gzipped rrdtool dump XML of one RRD
(what xapi keeps there too; ``gunzip`` then ``rrdtool restore`` reads it).

Written whole (temp file, fsync, rename), so a crash leaves the old file or the new one. A file
that does not read back as an RRD is renamed aside (``<uuid>.gz.corrupt-<epoch>``) with a log
line, and the caller starts a fresh RRD: the bad file is kept for a person to look at, never
overwritten and never silently dropped.
"""

import gzip
import logging
import os
import re
import time
import zlib

from common.errors import XapiError
from common.fileutil import atomic_write
from daemons.rrd.dump import dump_xml, parse_xml
from daemons.rrd.engine import RrdError

log = logging.getLogger("xapi-rrd")

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")
GZIP_LEVEL = 1   # the dumps are mostly repeated "NaN" and digits: level 1 is near the best


def check_uuid(uuid):
    """A uuid safe to put in a file name; XapiError UUID_INVALID otherwise."""
    if not isinstance(uuid, str) or not UUID_RE.match(uuid):
        raise XapiError("UUID_INVALID", "rrd", uuid)
    return uuid


def save(paths, uuid, rrd):
    """Write the archive of ``uuid``; returns its size in bytes."""
    path = paths.rrd_archive(check_uuid(uuid))
    data = gzip.compress(dump_xml(rrd).encode("ascii"), compresslevel=GZIP_LEVEL, mtime=0)
    atomic_write(path, data, mode=0o600)
    return len(data)


def load(paths, uuid):
    """The RRD archived for ``uuid``, or None when there is no file. RrdError (naming the file
    and the fault) when the file is not a readable archive."""
    path = paths.rrd_archive(check_uuid(uuid))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        text = gzip.decompress(raw).decode("ascii")
        return parse_xml(text)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, RrdError) as exc:
        raise RrdError(f"{path}: {exc}") from None


def set_aside(path, reason):
    """Rename a corrupt archive out of the way; returns the new path."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}.{n}")
    os.rename(path, aside)
    log.warning("RRD archive %s is corrupt (%s): renamed to %s, starting a fresh RRD",
                path, reason, aside.name)
    return aside


def load_or_none(paths, uuid):
    """``load``, with a corrupt file set aside: (rrd or None, note for the log)."""
    path = paths.rrd_archive(check_uuid(uuid))
    try:
        rrd = load(paths, uuid)
    except RrdError as exc:
        aside = set_aside(path, exc)
        return None, f"archive corrupt ({exc}); renamed to {aside.name}"
    if rrd is None:
        return None, "no archive"
    return rrd, f"loaded from {path.name}"


def archived_uuids(paths):
    """The uuids with an archive file."""
    try:
        names = os.listdir(paths.rrds_dir)
    except FileNotFoundError:
        return []
    return sorted(n[:-3] for n in names if n.endswith(".gz") and UUID_RE.match(n[:-3]))
