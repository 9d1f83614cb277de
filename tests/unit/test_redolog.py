"""The redo log (daemons/db/redolog.py): framing, replay, torn and corrupt tails, group commit,
refused writes that leave nothing behind, truncation with appends in flight, kill -9."""

import asyncio
import datetime
import errno
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from common.protocol import MAX_FRAME_BYTES, pack
from daemons.db import redolog
from daemons.db.redolog import FILE_HEADER_BYTES, MAGIC, RedoLog, RedoLogError

UTC = datetime.timezone.utc
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "var" / "lib" / "xcp" / "redo.log"


def opened(path):
    log = RedoLog(path)
    return log, log.open()


def replay(path):
    log, records = opened(path)
    last_seq = log.last_seq
    log.close()
    return records, last_seq


def record_starts(path):
    """The offset of every record in a good file, and its end."""
    data = Path(path).read_bytes()
    starts, pos = [], FILE_HEADER_BYTES
    while pos < len(data):
        starts.append(pos)
        length = struct.unpack_from("<I", data, pos)[0]
        pos += 16 + length
    return starts, pos


# -- writing and replay ----------------------------------------------------------------------

def test_missing_file_is_created_with_only_a_header(log_path):
    log, records = opened(log_path)
    log.close()
    assert records == []
    data = log_path.read_bytes()
    assert data.startswith(MAGIC) and len(data) == FILE_HEADER_BYTES
    assert data[9:17] == struct.pack("<Q", 0)


def test_append_reopen_replays_values_in_order(log_path):
    values = [
        {"op": "create_row", "table": "VM", "ref": "OpaqueRef:1",
         "row": {"name_label": "vm ✓", "other_config": {"a": "1", "nested": {"b": ["x", "y"]}},
                 "tags": ["t1", "t2"], "memory_static_max": 2**63 - 1}},
        {"op": "write_field", "when": datetime.datetime(2024, 5, 1, 12, 30, 15, 123456, UTC)},
        {"naive": datetime.datetime(2024, 5, 1, 12, 0)},
        [1, 2.5, None, True, b"\x00\xff"],
        "plain",
        {},
    ]
    log, records = opened(log_path)
    assert records == []
    assert [log.append_sync(v) for v in values] == [1, 2, 3, 4, 5, 6]
    log.close()

    records, last_seq = replay(log_path)
    assert last_seq == 6
    assert records[0] == values[0] and records[1] == values[1]
    assert records[2] == {"naive": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)}
    assert records[3:] == values[3:]

    log, _ = opened(log_path)
    assert log.append_sync("after reopen") == 7  # numbering goes on from the file
    log.close()
    assert replay(log_path) == (values[:2] + [records[2]] + values[3:] + ["after reopen"], 7)


def test_file_layout_is_the_documented_framing(log_path):
    log, _ = opened(log_path)
    log.append_sync({"k": "v"})
    log.append_sync([1, 2])
    log.close()
    data = log_path.read_bytes()
    head = MAGIC + struct.pack("<Q", 0)
    assert data[:FILE_HEADER_BYTES] == head + struct.pack("<I", zlib.crc32(head))
    pos = FILE_HEADER_BYTES
    for seq, value in ((1, {"k": "v"}), (2, [1, 2])):
        payload = pack(value)
        crc = zlib.crc32(struct.pack("<Q", seq) + payload)
        assert data[pos:pos + 16] == struct.pack("<IIQ", len(payload), crc, seq)
        assert data[pos + 16:pos + 16 + len(payload)] == payload
        pos += 16 + len(payload)
    assert pos == len(data)


def test_unencodable_and_oversized_records_are_refused_before_any_io(log_path):
    log, _ = opened(log_path)
    with pytest.raises(TypeError):
        log.append_sync({"x": object()})
    with pytest.raises(ValueError, match="over the limit"):
        log.append_sync(b"x" * (MAX_FRAME_BYTES + 1))
    with pytest.raises(TypeError):
        asyncio.run(log.append(object()))
    assert log.append_sync("ok") == 1
    log.close()
    assert replay(log_path) == (["ok"], 1)


def test_a_closed_log_refuses_writes(log_path):
    log, _ = opened(log_path)
    log.close()
    log.close()  # idempotent
    with pytest.raises(RedoLogError):
        log.append_sync("x")
    with pytest.raises(RedoLogError):
        asyncio.run(log.append("x"))
    with pytest.raises(RedoLogError):
        log.truncate()


# -- torn and corrupt files ------------------------------------------------------------------

def test_torn_tail_at_every_offset_of_the_last_record(log_path, caplog):
    log, _ = opened(log_path)
    for value in ({"a": 1}, {"b": "two"}, {"c": ["three", {"d": datetime.datetime.now(UTC)}]}):
        log.append_sync(value)
    log.close()
    full = log_path.read_bytes()
    good = replay(log_path)[0]
    starts, end = record_starts(log_path)
    last = starts[-1]
    assert end == len(full)
    for cut in range(last, end):
        log_path.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="daemons.db.redolog"):
            log, records = opened(log_path)
        assert records == good[:2], cut
        assert log.last_seq == 2
        assert os.path.getsize(log_path) == last, cut
        if cut > last:
            assert str(log_path) in caplog.text and f"offset {last}" in caplog.text
            assert f"dropped {cut - last} bytes" in caplog.text and "torn" in caplog.text
        assert log.append_sync("again") == 3  # appends go on where the good records end
        log.close()
        assert replay(log_path)[0] == good[:2] + ["again"]
    assert not log_path.with_name("redo.log.corrupt-tail").exists()  # torn is not corrupt


def test_corrupt_crc_in_the_middle_cuts_there(log_path, caplog):
    log, _ = opened(log_path)
    for i in range(5):
        log.append_sync({"i": i, "pad": "x" * 20})
    log.close()
    starts, _ = record_starts(log_path)
    data = bytearray(log_path.read_bytes())
    data[starts[2] + 20] ^= 0x01  # a bit flip inside the payload of seq 3
    log_path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="daemons.db.redolog"):
        records, last_seq = replay(log_path)
    assert records == [{"i": 0, "pad": "x" * 20}, {"i": 1, "pad": "x" * 20}]
    assert last_seq == 2
    assert os.path.getsize(log_path) == starts[2]
    assert "bad CRC" in caplog.text and f"offset {starts[2]}" in caplog.text
    assert f"dropped {len(data) - starts[2]} bytes" in caplog.text
    assert log_path.with_name("redo.log.corrupt-tail").read_bytes() == bytes(data[starts[2]:])


def test_a_misplaced_record_is_caught_by_its_seq(log_path):
    log, _ = opened(log_path)
    for i in range(4):
        log.append_sync(f"r{i}")  # equal lengths, so swapping keeps offsets
    log.close()
    starts, end = record_starts(log_path)
    data = log_path.read_bytes()
    rec = [data[s:e] for s, e in zip(starts, starts[1:] + [end])]
    log_path.write_bytes(data[:starts[0]] + rec[0] + rec[2] + rec[1] + rec[3])
    assert replay(log_path) == (["r0"], 1)


def test_a_record_whose_crc_was_computed_without_its_seq_is_rejected(log_path):
    log, _ = opened(log_path)
    log.append_sync("first")
    log.close()
    payload = pack("forged")
    with open(log_path, "ab") as f:
        f.write(struct.pack("<IIQ", len(payload), zlib.crc32(payload), 2) + payload)
    assert replay(log_path) == (["first"], 1)


@pytest.mark.parametrize("content", [
    b"", b"XAPIRE", b"XAPIREDO\x02" + bytes(12), b"garbage that is not a redo log at all",
    MAGIC + struct.pack("<Q", 7) + b"\0\0\0\0",  # header CRC wrong
])
def test_bad_header_is_set_aside_and_an_empty_log_started(log_path, caplog, content):
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="daemons.db.redolog"):
        log, records = opened(log_path)
    assert records == []
    assert log_path.with_name("redo.log.corrupt").read_bytes() == content
    assert "bad file header" in caplog.text and str(log_path) in caplog.text
    assert log.append_sync("fresh") == 1
    log.close()
    assert replay(log_path) == (["fresh"], 1)


# -- group commit ----------------------------------------------------------------------------

def test_concurrent_appends_are_durable_in_order_and_share_fsyncs(log_path):
    log, _ = opened(log_path)

    async def main():
        return await asyncio.gather(*(log.append({"i": i}) for i in range(200)))

    seqs = asyncio.run(main())
    stats = log.stats
    log.close()
    assert seqs == list(range(1, 201))
    assert stats["records"] == 200 and stats["groups"] < 200 and stats["max_group"] > 1
    assert stats["fsyncs"] == stats["groups"] and stats["errors"] == 0
    assert replay(log_path) == ([{"i": i} for i in range(200)], 200)


def test_writers_in_a_loop_share_fsyncs(log_path):
    log, _ = opened(log_path)

    async def writer(w):
        return [await log.append({"w": w, "n": n}) for n in range(20)]

    async def main():
        return await asyncio.gather(*(writer(w) for w in range(8)))

    per_writer = asyncio.run(main())
    stats = log.stats
    log.close()
    assert sorted(s for seqs in per_writer for s in seqs) == list(range(1, 161))
    assert all(seqs == sorted(seqs) for seqs in per_writer)
    assert stats["groups"] <= 160 // 2 and stats["max_group"] == 8
    records, _ = replay(log_path)
    for w in range(8):
        assert [r["n"] for r in records if r["w"] == w] == list(range(20))


def test_disk_io_runs_off_the_event_loop_thread(log_path):
    log, _ = opened(log_path)
    threads = []

    def pwrite(fd, data, offset):
        threads.append(threading.get_ident())
        return os.pwrite(fd, data, offset)

    log._pwrite = pwrite

    async def main():
        loop_thread = threading.get_ident()
        await asyncio.gather(log.append("a"), log.append("b"))
        await log.truncate_async(1)
        return loop_thread

    loop_thread = asyncio.run(main())
    log.close()
    assert threads and loop_thread not in threads
    assert replay(log_path) == (["b"], 2)


# -- refused writes (the seam: see the module docstring) -------------------------------------

def test_failed_write_refuses_the_whole_group_and_leaves_nothing(log_path):
    log, _ = opened(log_path)
    log.append_sync("kept")
    size_before = os.path.getsize(log_path)

    def half_then_enospc(fd, data, offset):
        os.pwrite(fd, bytes(data[:len(data) // 2]), offset)  # a partial write reached the file
        raise OSError(errno.ENOSPC, "No space left on device")

    log._pwrite = half_then_enospc

    async def group():
        return await asyncio.gather(*(log.append(f"lost{i}") for i in range(5)),
                                    return_exceptions=True)

    results = asyncio.run(group())
    assert all(isinstance(r, RedoLogError) for r in results)
    assert all(r.errno == errno.ENOSPC and isinstance(r.__cause__, OSError) for r in results)
    assert len({id(r) for r in results}) == 5
    assert os.path.getsize(log_path) == size_before
    assert log.stats["errors"] == 1 and log.stats["records"] == 1

    log._pwrite = os.pwrite  # the disk has room again
    assert log.append_sync("after") == 2
    log.close()
    assert replay(log_path) == (["kept", "after"], 2)


def test_failed_fsync_refuses_until_the_cut_back_is_durable(log_path):
    log, _ = opened(log_path)
    log.append_sync("kept")
    size_before = os.path.getsize(log_path)

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    log._fsync = eio
    with pytest.raises(RedoLogError) as info:
        log.append_sync("lost")
    assert info.value.errno == errno.EIO
    assert os.path.getsize(log_path) == size_before  # cut back, though not yet fsynced
    with pytest.raises(RedoLogError):  # the cut back still is not durable: refused
        log.append_sync("lost too")
    assert os.path.getsize(log_path) == size_before

    log._fsync = os.fsync
    assert log.append_sync("after") == 2
    assert log.stats["errors"] == 2
    log.close()
    assert replay(log_path) == (["kept", "after"], 2)


def test_a_failed_cut_back_is_made_before_anything_else_is_written(log_path):
    """The refused group's records are whole in the file and the cut back fails: a later,
    shorter group must not leave them behind its end, where they would replay."""
    log, _ = opened(log_path)
    log.append_sync("kept")
    size_before = os.path.getsize(log_path)

    def eio(*args):
        raise OSError(errno.EIO, "Input/output error")

    log._fsync, log._ftruncate = eio, eio

    async def group():
        return await asyncio.gather(*(log.append(f"lost{i}") for i in range(3)),
                                    return_exceptions=True)

    assert all(isinstance(r, RedoLogError) for r in asyncio.run(group()))
    assert os.path.getsize(log_path) > size_before  # whole records still there: the cut failed
    log._fsync = os.fsync
    with pytest.raises(RedoLogError):
        log.append_sync("refused while the cut cannot be made")
    log._ftruncate = os.ftruncate
    assert log.append_sync("after") == 2  # as long as "lost0": "lost1", "lost2" would follow
    log.close()
    assert replay(log_path) == (["kept", "after"], 2)


def test_a_failed_cut_at_open_does_not_refuse_to_start(log_path):
    log, _ = opened(log_path)
    log.append_sync("kept")
    log.close()
    with open(log_path, "ab") as f:
        f.write(b"\x05\x00")
    log = RedoLog(log_path)
    log._ftruncate = lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "cut"))
    assert log.open() == ["kept"]
    with pytest.raises(RedoLogError):
        log.append_sync("refused while the cut cannot be made")
    log._ftruncate = os.ftruncate
    assert log.append_sync("after") == 2
    log.close()
    assert replay(log_path) == (["kept", "after"], 2)


def test_a_real_file_size_limit_refuses_and_cuts_back(log_path):
    """No seam: RLIMIT_FSIZE makes the kernel cut a write short and then refuse it (EFBIG)."""
    script = f"""
import os, resource, signal
from daemons.db.redolog import RedoLog, RedoLogError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
log = RedoLog({str(log_path)!r}); log.open()
log.append_sync("kept")
size = os.path.getsize({str(log_path)!r})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
try:
    log.append_sync("x" * 300)
    print("acked")
except RedoLogError as exc:
    print("refused", exc.errno, os.path.getsize({str(log_path)!r}) == size)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("seq", log.append_sync("after"))
log.close()
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    assert out[:2] == [f"refused {errno.EFBIG} True", "seq 2"]
    assert replay(log_path) == (["kept", "after"], 2)


def test_directory_fsync_failure_after_truncate_holds_back_writes(log_path, monkeypatch):
    log, _ = opened(log_path)
    for i in range(3):
        log.append_sync(i)
    real = redolog.fsync_dir
    monkeypatch.setattr(redolog, "fsync_dir",
                        lambda d: (_ for _ in ()).throw(OSError(errno.EIO, "dir fsync")))
    log.truncate(2)  # done, but the rename is not known durable
    with pytest.raises(RedoLogError):
        log.append_sync("held back")
    monkeypatch.setattr(redolog, "fsync_dir", real)
    assert log.append_sync("now") == 4
    log.close()
    assert replay(log_path) == ([2, "now"], 4)


def test_read_only_state_dir_still_replays_and_refuses_writes(log_path, monkeypatch, caplog):
    log, _ = opened(log_path)
    log.append_sync("acked before the disk went read-only")
    log.close()
    content = log_path.read_bytes() + b"torn"
    log_path.write_bytes(content)
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(log_path.parent)) and flags & (os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(redolog.os, "open", read_only_open)
    with caplog.at_level(logging.WARNING, logger="daemons.db.redolog"):
        log, records = opened(log_path)
    assert records == ["acked before the disk went read-only"]
    assert "read-only" in caplog.text
    with pytest.raises(RedoLogError) as info:
        log.append_sync("refused")
    assert info.value.errno == errno.EROFS
    with pytest.raises(RedoLogError):
        log.truncate()
    log.close()
    assert log_path.read_bytes() == content  # untouched

    monkeypatch.setattr(redolog.os, "open", real_open)
    log, records = opened(log_path)  # writable again: the torn tail is cut now
    assert records == ["acked before the disk went read-only"]
    assert log.append_sync("later") == 2
    log.close()


# -- truncate --------------------------------------------------------------------------------

def test_truncate_keeps_later_records_and_the_numbering(log_path):
    log, _ = opened(log_path)
    for i in range(1, 11):
        assert log.append_sync(i) == i
    log.truncate(4)
    log.truncate(2)   # already dropped: nothing to do
    log.close()
    assert replay(log_path) == ([5, 6, 7, 8, 9, 10], 10)

    log, _ = opened(log_path)
    assert log.append_sync(11) == 11
    log.truncate()    # everything
    assert log.stats["file_records"] == 0
    log.close()
    assert replay(log_path) == ([], 11)
    assert os.path.getsize(log_path) == FILE_HEADER_BYTES

    log, _ = opened(log_path)
    assert log.append_sync(12) == 12  # numbering survives an empty log and a restart
    log.truncate(1000)  # beyond the end: everything, and no jump in the numbering
    assert log.append_sync(13) == 13
    log.close()
    assert replay(log_path) == ([13], 13)


def test_truncate_with_appends_in_flight_keeps_them(log_path):
    log, _ = opened(log_path)
    for i in range(10):
        log.append_sync({"old": i})

    async def main():
        appends = [log.append({"new": i}) for i in range(50)]
        results = await asyncio.gather(log.truncate_async(10), *appends)
        return results[1:]

    seqs = asyncio.run(main())
    log.close()
    assert seqs == list(range(11, 61))
    assert replay(log_path) == ([{"new": i} for i in range(50)], 60)


def test_truncate_from_another_thread_while_appending(log_path):
    log, _ = opened(log_path)
    done = threading.Event()

    def appender():
        for i in range(400):
            log.append_sync(i)
        done.set()

    thread = threading.Thread(target=appender)
    thread.start()
    upto = 0
    while not done.is_set():
        upto = log.last_seq
        log.truncate(upto)
    thread.join(timeout=60)
    log.close()
    records, last_seq = replay(log_path)
    assert last_seq == 400
    assert records == list(range(upto, 400))  # record i has seq i + 1


# -- crash -----------------------------------------------------------------------------------

def test_kill_9_mid_way_keeps_a_prefix_with_every_acked_record(log_path):
    script = f"""
import sys
from daemons.db.redolog import RedoLog
log = RedoLog({str(log_path)!r}); log.open()
for i in range(100000):
    log.append_sync({{"i": i, "pad": "p" * (i % 300)}})
    print("acked", i, flush=True)
"""
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in child.stdout:
            acked.append(int(line.split()[1]))
            if len(acked) == 300:
                child.send_signal(signal.SIGKILL)
                break
        acked += [int(line.split()[1]) for line in child.stdout if line.startswith("acked")]
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    records, last_seq = replay(log_path)
    assert records == [{"i": i, "pad": "p" * (i % 300)} for i in range(len(records))]
    assert last_seq == len(records) >= acked[-1] + 1
