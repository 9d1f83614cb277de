"""The redo log: an append-only file of msgpack records, each durable before it is acknowledged.

xapi-db appends one record per persistent change, and a change becomes visible only once
``append`` has returned its sequence number (the record is written and fsynced). At start the
records are replayed on top of the newest snapshot (``open``); after a successful snapshot
flush the records it covers are dropped (``truncate``). Non-persistent tables never come here:
that is the caller's rule.

File layout (all integers little-endian)::

    file header  b"XAPIREDO\\x01"  base_seq:u64  crc32(magic + base_seq):u32      21 bytes
    record       length:u32  crc32:u32  seq:u64  payload[length]               16 + length

* ``payload`` is ``common.protocol.pack(record)`` (msgpack; datetimes as Timestamps in UTC).
* ``crc32`` is ``zlib.crc32(struct.pack("<Q", seq) + payload)``: a record copied to the wrong
  place (a stale block, a record of another file) fails it as well as a flipped bit does.
* Sequence numbers increase by 1: the first record is ``base_seq + 1``, every next one the
  previous plus 1. ``base_seq`` is the last sequence number dropped by ``truncate`` (0 for a
  new file), so numbers keep growing across truncations and restarts.

Reading stops at the first record that is cut short by the end of the file (a torn tail, the
normal leftover of a crash: it was never acknowledged), or whose length is over the frame
limit, whose CRC or sequence number is wrong, or whose payload does not decode (corruption).
The file is cut there (truncated, fsynced) with a warning naming the file, the offset and the
bytes dropped; for corruption the dropped bytes are also kept in ``<path>.corrupt-tail``. A
file whose header is wrong is renamed to ``<path>.corrupt`` and a new empty log is started.
``open`` never refuses to start because of the content of the file.

Writes (group commit): ``append`` encodes the record on the caller's thread and queues it; one
writer task takes everything queued, and a dedicated single-thread executor frames it, writes
it with one ``pwrite`` at the end of the file, fsyncs once and hands back the first sequence
number, after which every future of the group is resolved. Every disk operation (groups,
``append_sync``, ``truncate``, ``close``) runs on that one thread, in submission order, so the
event loop never does disk I/O and the file never sees two writers.

Failures: if the write or the fsync of a group fails (ENOSPC, EROFS, EIO, EFBIG ...), every
append of the group raises ``RedoLogError`` carrying the ``OSError``, and the file is cut back
to its size before the group and fsynced, so a refused record can never be replayed later. If
that cut cannot be made durable, the next group makes it first and is refused while it cannot;
likewise after a truncate whose directory fsync failed. Whether to retry is the caller's
decision; acknowledged records stay. If ``open`` cannot write the file or its directory
(read-only, full), it still replays the file read-only and returns its records, and every
write is refused until ``close`` and ``open`` again: never a refusal to start.

Replay may hand back records that the newest snapshot already holds (a crash between the
snapshot's rename and ``truncate``): the caller skips them, by generation or sequence number.
One event loop at a time may call ``append``; ``append_sync`` and ``truncate`` may be called
from any thread.

Fault-injection seam: ``RedoLog._pwrite``, ``._fsync`` and ``._ftruncate`` are ``os.pwrite``,
``os.fsync`` and ``os.ftruncate`` looked up through the instance, so tests can make them fail.
It exists because a real full or read-only filesystem cannot be had in the test environment
(it runs as root, with no tmpfs to mount); it is not a configuration point.
"""

import asyncio
import concurrent.futures
import errno
import logging
import os
import struct
import time
import zlib
from array import array
from pathlib import Path

from common.fileutil import atomic_write, create_temp_beside, fsync_dir
from common.protocol import MAX_FRAME_BYTES, pack, unpack

MAGIC = b"XAPIREDO\x01"
_BASE = struct.Struct("<Q")
_HEADER_CRC = struct.Struct("<I")
FILE_HEADER_BYTES = len(MAGIC) + _BASE.size + _HEADER_CRC.size
_RECORD = struct.Struct("<IIQ")  # length, crc32(seq bytes + payload), seq
RECORD_HEADER_BYTES = _RECORD.size
_READ_CHUNK_BYTES = 1 << 20
# open() falls back to replaying read-only for these; appends are then refused
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


class RedoLogError(Exception):
    """A record could not be made durable (or the log is closed). ``os_error`` is the cause."""

    def __init__(self, message, os_error=None):
        super().__init__(message)
        self.os_error = os_error
        self.errno = getattr(os_error, "errno", None)


def _file_header(base_seq):
    head = MAGIC + _BASE.pack(base_seq)
    return head + _HEADER_CRC.pack(zlib.crc32(head))


def _frame(seq, payload):
    seq_bytes = _BASE.pack(seq)
    return _RECORD.pack(len(payload), zlib.crc32(payload, zlib.crc32(seq_bytes)), seq) + payload


class RedoLog:
    """One redo-log file: ``open`` (replay), ``append``/``append_sync``, ``truncate``, ``close``."""

    def __init__(self, path, logger=None):
        self.path = Path(path)
        self.log = logger or logging.getLogger(__name__)
        self._pwrite = os.pwrite  # the fault-injection seam, see the module docstring
        self._fsync = os.fsync
        self._ftruncate = os.ftruncate
        self._fd = None
        self._executor = None
        self._base_seq = 0       # records in the file are base_seq+1 .. last_seq
        self._last_seq = 0
        self._size = 0           # end of the last durable record
        self._offsets = array("Q")  # _offsets[i]: where record base_seq+1+i starts
        self._dir_sync_pending = False  # a truncate's rename not yet known durable
        self._rollback_to = None    # a cut back after a failed group not yet known durable
        self._pending = []          # (payload, future) waiting for the writer task
        self._writer = None
        self._refusal = None        # the OSError that made open() fall back to read-only
        self._reset_stats()

    def _reset_stats(self):
        self._stats = {"records": 0, "bytes": 0, "fsyncs": 0, "groups": 0, "max_group": 0,
                       "errors": 0}
        self._fsync_s_total = 0.0
        self._fsync_s_max = 0.0

    # -- opening and replay ----------------------------------------------------------------

    def open(self):
        """Read every good record (decoded, in order), cut a bad tail, and open for appending.
        A missing file is created empty. If the file or its directory cannot be written
        (read-only, full, no permission), the records are still read and returned, and every
        append is refused with RedoLogError until a later close() and open()."""
        if self._fd is not None:
            raise RedoLogError(f"redo log {self.path} is already open")
        self._reset_stats()
        self._refusal = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            records = self._replay(writable=True) if self.path.exists() else self._create(0)
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS:
                raise RedoLogError(f"redo log {self.path}: cannot open: {exc}", exc) from exc
            self._close_fd()
            self.log.error("redo log %s: cannot write it (%s); replaying it read-only, every "
                           "write is refused", self.path, exc)
            self._refusal = exc
            try:
                records = self._replay(writable=False) if self.path.exists() else []
            except OSError as again:
                raise RedoLogError(f"redo log {self.path}: cannot read: {again}",
                                   again) from again
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="redolog")
        return records

    def _create(self, base_seq):
        atomic_write(self.path, _file_header(base_seq), mode=0o600)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._base_seq = self._last_seq = base_seq
        self._size = FILE_HEADER_BYTES
        self._offsets = array("Q")
        self._rollback_to = None
        return []

    def _replay(self, writable):
        self._fd = os.open(self.path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        data = self._read_all(self._fd)
        header = data[:FILE_HEADER_BYTES]
        if len(header) < FILE_HEADER_BYTES or header != _file_header(
                _BASE.unpack_from(header, len(MAGIC))[0]):
            self._close_fd()
            what = f"bad file header ({len(data)} bytes, starting {bytes(data[:16])!r})"
            if not writable:
                self.log.error("redo log %s: %s; ignored it", self.path, what)
                return []
            corrupt = self.path.with_name(self.path.name + ".corrupt")
            os.rename(self.path, corrupt)
            fsync_dir(self.path.parent)
            self.log.error("redo log %s: %s; moved it to %s and started an empty log",
                           self.path, what, corrupt)
            return self._create(0)
        base = _BASE.unpack_from(data, len(MAGIC))[0]
        records, offsets = [], array("Q")
        seq, pos, problem = base, FILE_HEADER_BYTES, None
        while pos < len(data):
            if len(data) - pos < RECORD_HEADER_BYTES:
                problem = "torn", "incomplete record header"
                break
            length, crc, rec_seq = _RECORD.unpack_from(data, pos)
            if length > MAX_FRAME_BYTES:
                problem = "corrupt", f"record length {length} over the limit"
                break
            start, end = pos + RECORD_HEADER_BYTES, pos + RECORD_HEADER_BYTES + length
            if end > len(data):
                problem = "torn", f"record of {length} bytes cut short by the end of the file"
                break
            payload = data[start:end]
            if zlib.crc32(payload, zlib.crc32(_BASE.pack(rec_seq))) != crc:
                problem = "corrupt", f"bad CRC in a record claiming seq {rec_seq}"
                break
            if rec_seq != seq + 1:
                problem = "corrupt", f"record seq {rec_seq} where {seq + 1} was expected"
                break
            try:
                value = unpack(payload)
            except ValueError as exc:
                problem = "corrupt", f"record seq {rec_seq}: {exc}"
                break
            records.append(value)
            offsets.append(pos)
            seq, pos = rec_seq, end
        self._base_seq, self._last_seq, self._size, self._offsets = base, seq, pos, offsets
        self._rollback_to = None
        if problem is not None:
            self._cut(data, pos, *problem, writable=writable)
        return records

    def _cut(self, data, good_end, kind, reason, writable):
        """Drop the bad tail from ``good_end`` on. If it cannot be done now, the first group
        makes the cut before it writes (and is refused while it cannot)."""
        dropped = len(data) - good_end
        kept = ""
        if kind == "corrupt" and writable:
            kept_path = self.path.with_name(self.path.name + ".corrupt-tail")
            try:
                atomic_write(kept_path, bytes(data[good_end:]), mode=0o600)
                kept = f"; the dropped bytes are kept in {kept_path}"
            except OSError as exc:
                kept = f"; could not keep the dropped bytes in {kept_path}: {exc}"
        self._rollback_to = good_end
        if writable:
            try:
                self._ftruncate(self._fd, good_end)
                self._fsync(self._fd)
                self._rollback_to = None
            except OSError as exc:
                kept += f"; could not cut the file yet: {exc}"
        self.log.warning("redo log %s: %s tail (%s) at offset %d: %s there, dropped %d bytes%s",
                         self.path, kind, reason, good_end,
                         "cut the file" if self._rollback_to is None else "reading stops",
                         dropped, kept)

    @staticmethod
    def _read_all(fd):
        chunks, offset = [], 0
        while True:
            chunk = os.pread(fd, _READ_CHUNK_BYTES, offset)
            if not chunk:
                return memoryview(b"".join(chunks))
            chunks.append(chunk)
            offset += len(chunk)

    # -- appending -------------------------------------------------------------------------

    @staticmethod
    def _encode(record):
        payload = pack(record)  # TypeError for a value msgpack cannot carry
        if len(payload) > MAX_FRAME_BYTES:
            raise ValueError(f"redo-log record of {len(payload)} bytes is over the limit of "
                             f"{MAX_FRAME_BYTES}")
        return payload

    async def append(self, record):
        """Queue ``record``; return its sequence number once it is written and fsynced.
        Raises RedoLogError if it could not be (nothing of it stays in the file). A cancelled
        caller does not withdraw its record: it may still become durable."""
        payload = self._encode(record)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((payload, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_queued(), name="redolog-writer")
        return await future

    async def _write_queued(self):
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending, []
            try:
                first_seq = await loop.run_in_executor(
                    self._executor_or_closed(), self._write_group, [p for p, _ in group])
            except asyncio.CancelledError:
                for _, future in group:
                    future.cancel()
                for _, future in self._pending:
                    future.cancel()
                self._pending = []
                raise
            except Exception as exc:  # RedoLogError, or a closed executor
                for _, future in group:
                    if not future.done():
                        future.set_exception(self._group_error(exc))
                continue
            for index, (_, future) in enumerate(group):
                if not future.done():
                    future.set_result(first_seq + index)

    @staticmethod
    def _group_error(exc):
        if isinstance(exc, RedoLogError):  # one instance per waiting caller
            error = RedoLogError(str(exc), exc.os_error)
            error.__cause__ = exc.os_error
            return error
        error = RedoLogError(f"redo log write failed: {exc!r}")
        error.__cause__ = exc
        return error

    def append_sync(self, record):
        """``append`` for callers without a loop: blocks until the record is durable."""
        payload = self._encode(record)
        return self._executor_or_closed().submit(self._write_group, [payload]).result()

    def _executor_or_closed(self):
        if self._executor is None:
            raise RedoLogError(f"redo log {self.path} is not open")
        return self._executor

    def _write_group(self, payloads):
        """On the I/O thread: frame, write at the end, fsync; return the first seq."""
        self._check_writable()
        first_seq = self._last_seq + 1
        buffer = b"".join(_frame(first_seq + i, p) for i, p in enumerate(payloads))
        start = self._size
        try:
            if self._dir_sync_pending:
                self._sync_dir()
            if self._rollback_to is not None:
                self._rollback(self._rollback_to)
            self._pwrite_all(self._fd, buffer, start)
            self._timed_fsync(self._fd)
        except OSError as exc:
            self._stats["errors"] += 1
            self._rollback_to = start
            try:
                self._rollback(start)
            except OSError as cut_exc:
                self.log.error("redo log %s: could not cut the file back to %d bytes after a "
                               "failed write (%s); no record is accepted until it can",
                               self.path, start, cut_exc)
            message = (f"redo log {self.path}: could not make {len(payloads)} record(s) "
                       f"durable: {exc}")
            self.log.error("%s", message)
            raise RedoLogError(message, exc) from exc
        pos = start
        for payload in payloads:
            self._offsets.append(pos)
            pos += RECORD_HEADER_BYTES + len(payload)
        self._size = pos
        self._last_seq = first_seq + len(payloads) - 1
        stats = self._stats
        stats["records"] += len(payloads)
        stats["bytes"] += len(buffer)
        stats["groups"] += 1
        stats["max_group"] = max(stats["max_group"], len(payloads))
        return first_seq

    def _check_writable(self):
        if self._fd is None:
            raise RedoLogError(f"redo log {self.path} is closed")
        if self._refusal is not None:
            raise RedoLogError(f"redo log {self.path} is read-only since open: {self._refusal}",
                               self._refusal)

    def _rollback(self, size):
        """Cut the file back to ``size`` (the end of the last durable record) and fsync. While
        this fails, ``_rollback_to`` stays set and every group tries it again first."""
        self._ftruncate(self._fd, size)
        self._timed_fsync(self._fd)
        self._rollback_to = None

    def _sync_dir(self):
        fsync_dir(self.path.parent)
        self._dir_sync_pending = False

    def _pwrite_all(self, fd, data, offset):
        view = memoryview(data)
        while view:
            written = self._pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def _timed_fsync(self, fd):
        started = time.monotonic()
        self._fsync(fd)
        elapsed_s = time.monotonic() - started
        self._stats["fsyncs"] += 1
        self._fsync_s_total += elapsed_s
        self._fsync_s_max = max(self._fsync_s_max, elapsed_s)

    # -- truncating ------------------------------------------------------------------------

    def truncate(self, upto_seq=None):
        """Drop the records with seq <= ``upto_seq`` (None: every record), after a snapshot
        that holds them is durable. Records after it, even ones appended meanwhile, stay."""
        return self._executor_or_closed().submit(self._truncate, upto_seq).result()

    async def truncate_async(self, upto_seq=None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor_or_closed(), self._truncate, upto_seq)

    def _truncate(self, upto_seq):
        """On the I/O thread, so between groups: write the header and the kept records to a
        temp file, fsync, rename it over the log, fsync the directory."""
        self._check_writable()
        upto = self._last_seq if upto_seq is None else min(upto_seq, self._last_seq)
        if upto <= self._base_seq:
            return
        drop = upto - self._base_seq
        cut = self._offsets[drop] if drop < len(self._offsets) else self._size
        try:
            fd, tmp = create_temp_beside(self.path)
        except OSError as exc:
            self._stats["errors"] += 1
            raise RedoLogError(f"redo log {self.path}: could not drop records up to seq "
                               f"{upto}: {exc}", exc) from exc
        try:
            os.fchmod(fd, 0o600)
            self._pwrite_all(fd, _file_header(upto), 0)
            out, offset = FILE_HEADER_BYTES, cut
            while offset < self._size:
                chunk = os.pread(self._fd, min(_READ_CHUNK_BYTES, self._size - offset), offset)
                if not chunk:
                    raise OSError(errno.EIO, f"the log ends at {offset}, before {self._size}")
                self._pwrite_all(fd, chunk, out)
                out, offset = out + len(chunk), offset + len(chunk)
            self._timed_fsync(fd)
            os.rename(tmp, self.path)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self._stats["errors"] += 1
            raise RedoLogError(f"redo log {self.path}: could not drop records up to seq "
                               f"{upto}: {exc}", exc) from exc
        # From here the log is the new file. Until the rename is durable a crash could bring
        # the old one back, without what is appended from now on: no group is acknowledged
        # before the directory fsync succeeds (see _write_group).
        self._dir_sync_pending = True
        try:
            self._sync_dir()
        except OSError as exc:
            self.log.warning("redo log %s: fsync of the directory after truncate failed (%s); "
                             "the next write tries again", self.path, exc)
        os.close(self._fd)
        self._fd = fd
        shift = cut - FILE_HEADER_BYTES
        self._offsets = array("Q", (o - shift for o in self._offsets[drop:]))
        self._size -= shift
        self._base_seq = upto
        self._rollback_to = None  # the new file holds only durable records

    # -- closing and stats -----------------------------------------------------------------

    def close(self):
        """Wait for the writes already submitted, then close the file. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._close_fd)
            executor.shutdown(wait=True)
        else:
            self._close_fd()

    def _close_fd(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def last_seq(self):
        """The sequence number of the last durable record (the base after a full truncate).
        It moves on the I/O thread, before the appenders' futures resolve: it can be ahead of
        what they have applied. To truncate after a snapshot, pass the seq that ``append``
        returned for the last record the snapshot holds, not this."""
        return self._last_seq

    @property
    def stats(self):
        """Counters since ``open``: records and bytes acknowledged, fsyncs (groups, cut-backs
        and truncates), groups written, the largest group, fsync time, failed writes; and the
        state of the file: ``last_seq``, ``file_records``, ``file_bytes``."""
        fsyncs = self._stats["fsyncs"]
        return {
            **self._stats,
            "fsync_ms_avg": round(1000 * self._fsync_s_total / fsyncs, 3) if fsyncs else 0.0,
            "fsync_ms_max": round(1000 * self._fsync_s_max, 3),
            "last_seq": self._last_seq,
            "file_records": len(self._offsets),
            "file_bytes": self._size,
        }
