"""The message store: xapi's alerts, one XML file each under ``blobs/messages``, not in the DB.

Real xapi (xen-api ``ocaml/xapi/xapi_message.ml``; ``xapi_globs.ml``, ``record_util.ml``,
``xapi_event.ml``, ``libs/clock/date.ml``): one file per message in
``/var/lib/xcp/blobs/messages``, named ``"%0.5f"`` of its Unix time (a clash adds 0.00001 s to
the name, not the message); files 0600, dir 0700; symlink indexes ``<cls>/<obj_uuid>/<ts>``,
``uuids/``, ``refs/``, ``gen/``. The file: ``<?xml ...?>`` then ``<message>`` holding
``generation ref name priority cls obj_uuid timestamp uuid body`` in that order (an unknown tag
is an error), timestamp ``20250319T04:16:24Z``. The message generation is the *DB's*: a write
stamps the DB generation and increments it, each destroy increments it and pushes ``(gen, ref)``
on a deleted list (over 1024 it keeps 512); ``get_since_for_events`` gives creations with
gen > since plus remembered deletions and never reports a loss; token ``"%020Ld,%020Ld"`` (DB,
messages). ``message_limit = 10000``: the GC sorts the names (timestamps), destroys the oldest.
``create`` wants a body valid as UTF-8 XML (``INVALID_VALUE``) and obj_uuid an existing object
of cls (``UUID_INVALID [cls, uuid]``); the name is unchecked, priority any int64. cls: VM Host SR
Pool VMPP VMSS PVS_proxy VDI Certificate. Unknown ref: ``HANDLE_INVALID [message, ref]``;
``get_by_uuid`` of an unknown uuid: ``UUID_INVALID [message, uuid]``.

We keep the name, the file form (plus ``.ffffff`` for sub-second times, which xapi's rfc3339
parser reads, and CR as ``&#13;`` so it survives) and the modes. Departures: our own generation
(the last stamped value, kept in ``<dir>/generation`` so deletions survive restarts); atomic
writes; an in-memory index, no symlinks (we are the only writer); obj_uuid checked for form only
(existence is the API layer's job); name non-empty without control characters; oldest =
(timestamp, generation); the DB's deletion queue (512, cut to 256): a token older than it
remembers, from before a restart or from the future gets ``EVENTS_LOST``; a message created and
destroyed inside the window gives no event; a file that does not parse goes to ``corrupt/``.
"""

import heapq
import logging
import os
import re
import threading
import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common.errors import XapiError
from common.fileutil import atomic_write, fsync_dir

CLASSES = ("VM", "Host", "SR", "Pool", "VMPP", "VMSS", "PVS_proxy", "VDI", "Certificate")
MESSAGE_LIMIT, DELETED_MAX, DELETED_KEEP = 10000, 512, 256
GENERATION_FILE, CORRUPT_DIR = "generation", "corrupt"
FILE_MODE, DIR_MODE = 0o600, 0o700
_TAGS = ("generation", "ref", "name", "priority", "cls", "obj_uuid", "timestamp", "uuid", "body")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def format_timestamp(ts):
    """xapi's ``20250319T04:16:24Z``, with ``.ffffff`` before the Z when not whole seconds."""
    text = ts.astimezone(timezone.utc).strftime("%Y%m%dT%H:%M:%S.%fZ")
    return text.replace(".000000Z", "Z")


def parse_timestamp(text):
    """Also reads RFC 3339; a date without a zone is UTC, as xapi's Date reads it."""
    return _utc(datetime.fromisoformat(text.strip()), "timestamp")


def _utc(ts, field):
    if not isinstance(ts, datetime):
        raise XapiError("FIELD_TYPE_ERROR", field)
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _validate(name, priority, cls, obj_uuid, body):
    for field, value in (("name", name), ("cls", cls), ("obj_uuid", obj_uuid), ("body", body)):
        if not isinstance(value, str):
            raise XapiError("FIELD_TYPE_ERROR", field)
    if not name or _CONTROL.search(name) or _NOT_XML.search(name):  # _NOT_XML: surrogates
        raise XapiError("INVALID_VALUE", "name", name)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise XapiError("FIELD_TYPE_ERROR", "priority")
    if not -(2 ** 63) <= priority < 2 ** 63:
        raise XapiError("INVALID_VALUE", "priority", priority)
    if cls not in CLASSES:
        raise XapiError("INVALID_VALUE", "cls", cls)
    if not _UUID.match(obj_uuid):
        raise XapiError("INVALID_VALUE", "obj_uuid", obj_uuid)
    if _NOT_XML.search(body):
        raise XapiError("INVALID_VALUE", "body", "UTF8 expected")


@dataclass(frozen=True)
class Message:
    ref: str
    uuid: str
    name: str
    priority: int
    cls: str
    obj_uuid: str
    timestamp: datetime
    body: str
    generation: int

    def to_record(self):
        return {"uuid": self.uuid, "name": self.name, "priority": self.priority,
                "cls": self.cls, "obj_uuid": self.obj_uuid, "timestamp": self.timestamp,
                "body": self.body}

    def to_xml(self):
        values = (str(self.generation), self.ref, self.name, str(self.priority), self.cls,
                  self.obj_uuid, format_timestamp(self.timestamp), self.uuid, self.body)
        inner = "".join(f"<{t}>{v.translate(_ESCAPES)}</{t}>" for t, v in zip(_TAGS, values))
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<message>{inner}</message>'

    @classmethod
    def from_xml(cls, data):
        import xml.etree.ElementTree as ET   # messages are parsed rarely; not at import
        root, fields = ET.fromstring(data), {}
        if root.tag != "message":
            raise ValueError(f"root element {root.tag!r}, not 'message'")
        for child in root:
            if child.tag not in _TAGS or child.tag in fields or len(child):
                raise ValueError(f"unexpected element {child.tag!r}")
            fields[child.tag] = child.text or ""
        missing = [t for t in _TAGS if t not in fields and t != "body"]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        msg = cls(ref=fields["ref"], uuid=fields["uuid"], name=fields["name"],
                  priority=int(fields["priority"]), cls=fields["cls"],
                  obj_uuid=fields["obj_uuid"], timestamp=parse_timestamp(fields["timestamp"]),
                  body=fields.get("body", ""), generation=int(fields["generation"]))
        _validate(msg.name, msg.priority, msg.cls, msg.obj_uuid, msg.body)
        if not msg.ref.startswith("OpaqueRef:") or not _UUID.match(msg.uuid):
            raise ValueError("bad ref or uuid")
        return msg


class MessageStore:
    """The messages of this host's pool, in memory and one file each in ``directory``."""

    def __init__(self, directory, cap=MESSAGE_LIMIT, logger=None):
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.directory, self.cap = Path(directory), cap
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.RLock()
        self._reset()

    def _reset(self):
        # ref -> Message (in generation order), ref -> (file name, size), uuid -> ref
        self._msgs, self._files, self._by_uuid = {}, {}, {}
        self._deleted = []  # (generation, ref, generation at creation), oldest first
        self._gen = self._lost_below = 0  # a token below _lost_below may miss deletions

    @property
    def generation(self):
        return self._gen

    def load(self):
        with self._lock:
            self._reset()
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            saved_gen = 0
            for entry in sorted(os.scandir(self.directory), key=lambda e: e.name):
                if not entry.is_file(follow_symlinks=False):
                    continue  # corrupt/, and xapi's symlink directories
                path = Path(entry.path)
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    self._log.warning("message store: removing unfinished write %s", path)
                    path.unlink(missing_ok=True)
                    continue
                try:
                    data = path.read_bytes()
                    if entry.name == GENERATION_FILE:
                        saved_gen = int(data.decode().strip())
                        continue
                    msg = Message.from_xml(data)
                    if msg.ref in self._files or msg.uuid in self._by_uuid:
                        raise ValueError(f"duplicate ref {msg.ref} or uuid {msg.uuid}")
                except Exception as exc:
                    self._set_aside(path, exc)
                    continue
                self._add(msg, entry.name, len(data))
            self._msgs = dict(sorted(self._msgs.items(), key=lambda kv: kv[1].generation))
            self._gen = max([saved_gen] + [m.generation for m in self._msgs.values()])
            self._lost_below = self._gen  # deletions before this start are not remembered
            self._log.info("message store: %d messages loaded from %s, generation %d",
                           len(self._msgs), self.directory, self._gen)
            self._enforce_cap()

    def _add(self, msg, fname, size):
        self._msgs[msg.ref], self._files[msg.ref] = msg, (fname, size)
        self._by_uuid[msg.uuid] = msg.ref

    def _set_aside(self, path, exc):
        target_dir = self.directory / CORRUPT_DIR
        try:
            target_dir.mkdir(mode=DIR_MODE, exist_ok=True)
            target = target_dir / path.name
            if target.exists():
                target = target_dir / f"{path.name}.{uuidlib.uuid4().hex[:8]}"
            os.rename(path, target)
            fsync_dir(self.directory)
            self._log.error("message store: %s is corrupt (%s): moved to %s", path, exc, target)
        except OSError as err:
            self._log.error("message store: %s is corrupt (%s), cannot move it aside: %s",
                            path, exc, err)

    def create(self, name, priority, cls, obj_uuid, body, timestamp=None):
        _validate(name, priority, cls, obj_uuid, body)
        ts = _utc(timestamp, "timestamp") if timestamp is not None else datetime.now(timezone.utc)
        with self._lock:
            msg = Message(ref=f"OpaqueRef:{uuidlib.uuid4()}", uuid=str(uuidlib.uuid4()),
                          name=name, priority=priority, cls=cls, obj_uuid=obj_uuid,
                          timestamp=ts, body=body, generation=self._gen + 1)
            stamp = ts.timestamp()
            while (self.directory / (fname := f"{stamp:0.5f}")).exists():
                stamp += 0.00001  # as xapi: a later name, the message keeps its timestamp
            data = msg.to_xml().encode("utf-8")
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            atomic_write(self.directory / fname, data, mode=FILE_MODE)
            self._gen = msg.generation
            self._add(msg, fname, len(data))
            self._enforce_cap()
            return msg

    def _enforce_cap(self):
        if (excess := len(self._msgs) - self.cap) > 0:
            self._log.warning("message store: over the limit of %d, deleting the %d oldest",
                              self.cap, excess)
            oldest = heapq.nsmallest(excess, self._msgs.values(),
                                     key=lambda m: (m.timestamp, m.generation))
            self._delete([m.ref for m in oldest])

    def _delete(self, refs):
        names = []
        for ref in refs:
            msg = self._msgs.pop(ref)
            names.append(self._files.pop(ref)[0])
            del self._by_uuid[msg.uuid]
            self._gen += 1
            self._deleted.append((self._gen, ref, msg.generation))
        if len(self._deleted) > DELETED_MAX:
            dropped = self._deleted[:-DELETED_KEEP]
            self._deleted = self._deleted[-DELETED_KEEP:]
            self._lost_below = max(self._lost_below, dropped[-1][0])
        # The generation first: after a crash it is never behind a deletion a client saw.
        atomic_write(self.directory / GENERATION_FILE, f"{self._gen}\n", mode=FILE_MODE)
        for fname in names:
            (self.directory / fname).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def destroy(self, ref):
        with self._lock:
            if ref in self._msgs:
                return self._delete([ref])
        raise XapiError("HANDLE_INVALID", "message", ref)

    def get_all_records(self):
        with self._lock:
            return {ref: m.to_record() for ref, m in self._msgs.items()}

    def get_record(self, ref):
        with self._lock:
            if ref in self._msgs:
                return self._msgs[ref].to_record()
        raise XapiError("HANDLE_INVALID", "message", ref)

    def get_by_uuid(self, uuid):
        with self._lock:
            if uuid in self._by_uuid:
                return self._by_uuid[uuid]
        raise XapiError("UUID_INVALID", "message", uuid)

    def get_since(self, since):
        since = _utc(since, "since")
        with self._lock:
            return {r: m.to_record() for r, m in self._msgs.items() if m.timestamp > since}

    def events_since(self, generation):
        """Events with a generation above ``generation``, oldest first, and the generation now.
        0 means "from the start": every message as ``add``, no deletions."""
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise XapiError("FIELD_TYPE_ERROR", "generation")
        with self._lock:
            if generation and not self._lost_below <= generation <= self._gen:
                raise XapiError("EVENTS_LOST")
            events = []  # the messages are in generation order: walk back from the newest
            for msg in reversed(self._msgs.values()):
                if msg.generation <= generation:
                    break
                events.append({"class": "message", "operation": "add", "ref": msg.ref,
                               "snapshot": msg.to_record(), "generation": msg.generation})
            events.extend({"class": "message", "operation": "del", "ref": ref,
                           "snapshot": None, "generation": gen}
                          for gen, ref, born in self._deleted if gen > generation >= born)
            events.sort(key=lambda e: e["generation"])
            return events, self._gen

    def stats(self):
        with self._lock:
            return {"count": len(self._msgs), "generation": self._gen,
                    "bytes": sum(size for _, size in self._files.values())}
