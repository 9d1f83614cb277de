"""The durable outbox of xapi-mailer: one JSON file per e-mail (or hook run) owed, in
``var/lib/xcp/mailer/``, named by a sequence number (the delivery order).

A file is written temp + fsync + rename (the directory fsynced once per batch) before the
event token that covers its message is saved, and removed only once the SMTP server accepted
the e-mail (or the hook exited 0): so a crash loses nothing, and repeats at most the entries in
flight (one per SMTP connection). The outbox holds at most ``cap`` entries: past it the oldest
entry of the lowest priority (the largest number) not in flight is shed, never silently: a log
line and the ``shed`` counter.

The in-memory side (``entries``, ``stage``, ``commit``, ``next_ready``) belongs to the event
loop; ``write`` and ``load`` do the disk work in one I/O thread, in order; ``remove`` (one
unlink) runs in the delivery thread that sent the entry.
"""

import concurrent.futures
import json
import os
from pathlib import Path

from common.fileutil import create_temp_beside, fsync_dir

KINDS = ("mail", "fold", "hook")
# Entry files of a batch are written and fsynced by this many threads at once: the file system
# commits concurrent fsyncs together (on ext4 one journal commit), ~15x the rate of one by one.
WRITERS = 8
CORRUPT_DIR = "corrupt"
_REQUIRED = ("seq", "kind", "due", "generation", "message")
_MESSAGE_KEYS = ("ref", "uuid", "name", "priority", "cls", "obj_uuid", "timestamp", "body")


def entry_file_name(seq):
    return f"{seq:012d}.json"


class OutboxEntryError(ValueError):
    pass


def check_entry(data, name):
    """The entry of file ``name`` checked: a ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise OutboxEntryError("not a JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise OutboxEntryError(f"missing {', '.join(missing)}")
    if data["kind"] not in KINDS:
        raise OutboxEntryError(f"unknown kind {data['kind']!r}")
    if entry_file_name(data["seq"]) != name:
        raise OutboxEntryError(f"seq {data['seq']} does not match the file name")
    message = data["message"]
    if not isinstance(message, dict) or any(k not in message for k in _MESSAGE_KEYS):
        raise OutboxEntryError("message lacks one of " + ", ".join(_MESSAGE_KEYS))
    if data["kind"] != "hook" and not data.get("to"):
        raise OutboxEntryError("an e-mail without recipients")
    return data


class Outbox:
    def __init__(self, directory, cap, log):
        if cap < 1:
            raise ValueError("the outbox cap must be at least 1")
        self.directory = Path(directory)
        self.cap = cap
        self.log = log
        self.entries = {}        # seq -> entry, in seq order: committed (visible to delivery)
        self.staged = {}         # seq -> entry written in this batch, not yet committed
        self.in_flight = set()   # seqs of the entries being delivered
        self.next_seq = 1
        self.shed = 0
        self.corrupt = 0
        self._by_priority = {}   # priority -> {seq: entry}: the shedding order, kept as we go
        self._writers = None

    # -- disk (the I/O thread) ---------------------------------------------------------------
    def load(self):
        """Read every entry file; unfinished writes are removed, an unreadable file is moved
        to corrupt/ with an error naming it. Returns the number of entries."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        loaded = {}
        for path in sorted(self.directory.iterdir()):
            if not path.is_file():
                continue
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                self.log.warning("outbox: removing the unfinished write %s", path)
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(".json"):
                continue
            try:
                entry = check_entry(json.loads(path.read_bytes().decode("utf-8")), path.name)
            except (ValueError, UnicodeDecodeError) as exc:
                self._set_aside(path, exc)
                continue
            loaded[entry["seq"]] = entry
        self.entries = dict(sorted(loaded.items()))
        self._by_priority = {}
        for entry in self.entries.values():
            self._index(entry)
        self.next_seq = max(self.entries, default=0) + 1
        return len(self.entries)

    def _set_aside(self, path, exc):
        self.corrupt += 1
        target_dir = self.directory / CORRUPT_DIR
        try:
            target_dir.mkdir(mode=0o700, exist_ok=True)
            os.rename(path, target_dir / path.name)
            self.log.error("outbox: %s is not a valid entry (%s): moved to %s", path, exc,
                           target_dir / path.name)
        except OSError as err:
            self.log.error("outbox: %s is not a valid entry (%s) and cannot be moved: %s",
                           path, exc, err)

    def write(self, entries, removed=()):
        """Write ``entries`` (temp, fsync, rename) and remove the files of ``removed`` (seqs),
        then fsync the directory once."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if len(entries) > 1:
            if self._writers is None:
                self._writers = concurrent.futures.ThreadPoolExecutor(
                    WRITERS, thread_name_prefix="outbox")
            list(self._writers.map(self._write_one, entries))
        else:
            for entry in entries:
                self._write_one(entry)
        for seq in removed:
            (self.directory / entry_file_name(seq)).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def _write_one(self, entry):
        path = self.directory / entry_file_name(entry["seq"])
        data = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        fd, tmp = create_temp_beside(path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)

    def close(self):
        if self._writers is not None:
            self._writers.shutdown(wait=True)
            self._writers = None

    def remove(self, seq):
        """Forget a delivered entry. The unlink alone survives a crash of this process (a
        power cut may bring the entry back: it is then sent again, with its Message-ID)."""
        (self.directory / entry_file_name(seq)).unlink(missing_ok=True)

    # -- memory (the loop) -----------------------------------------------------------------
    def __len__(self):
        return len(self.entries) + len(self.staged)

    @property
    def max_generation(self):
        """The newest message generation any entry holds (0 if none)."""
        return max((e["generation"] for e in (*self.entries.values(), *self.staged.values())),
                   default=0)

    def stage(self, entry):
        """Give ``entry`` its seq and hold it for the batch being written; returns the entries
        shed to stay within the cap (maybe ``entry`` itself), each already logged, as
        (entry, whether it was committed: its file must go)."""
        entry["seq"] = self.next_seq
        self.next_seq += 1
        self.staged[entry["seq"]] = entry
        self._index(entry)
        shed = []
        while len(self) > self.cap:
            victim = self._victim()
            if victim is None:
                break
            was_committed = self.entries.pop(victim["seq"], None) is not None
            self.staged.pop(victim["seq"], None)
            self._unindex(victim)
            shed.append((victim, was_committed))
            self.shed += 1
            msg = victim["message"]
            self.log.warning("outbox full (%d entries): shed the %s entry %d of message %s %s "
                             "(priority %s, %s %s), the oldest of the lowest priority",
                             self.cap, victim["kind"], victim["seq"], msg["uuid"], msg["name"],
                             msg["priority"], msg["cls"], msg["obj_uuid"])
        return shed

    def _index(self, entry):
        self._by_priority.setdefault(_priority(entry), {})[entry["seq"]] = entry

    def _unindex(self, entry):
        bucket = self._by_priority.get(_priority(entry), {})
        bucket.pop(entry["seq"], None)
        if not bucket:
            self._by_priority.pop(_priority(entry), None)

    def _victim(self):
        """The oldest entry of the lowest priority (the largest number), not in flight."""
        for priority in sorted(self._by_priority, reverse=True):
            for seq, entry in self._by_priority[priority].items():
                if seq not in self.in_flight:
                    return entry
        return None

    def commit(self):
        """The staged batch is on disk and its token saved: visible to delivery."""
        self.entries.update(self.staged)
        self.staged = {}

    def discard_staged(self):
        for entry in self.staged.values():
            self._unindex(entry)
        self.staged = {}

    def next_ready(self, now, skip=()):
        """The first committed entry due by ``now`` and not in ``skip``, and the time until the
        next one falls due (None: none waits)."""
        soonest = None
        for seq, entry in self.entries.items():
            if seq in skip:
                continue
            if entry["due"] <= now:
                return entry, 0.0
            wait = entry["due"] - now
            soonest = wait if soonest is None else min(soonest, wait)
        return None, soonest

    def forget(self, seq):
        entry = self.entries.pop(seq, None)
        if entry is not None:
            self._unindex(entry)


def _priority(entry):
    priority = entry["message"].get("priority")
    return priority if isinstance(priority, int) else 0
