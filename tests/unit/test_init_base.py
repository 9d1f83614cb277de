"""What start-up time rests on in the daemon base and xapi-init: the command line read without
argparse, the watched log file, the start-up record written once per quick step, and the
run-time records written without fsync."""

import asyncio
import json
import logging
import os

import pytest

from common.daemon import WatchedFileHandler, parse_simple_args
from common.fileutil import atomic_write
from daemons.init import progress as pr
from daemons.init.main import InitDaemon
from daemons.init.steps import STEPS


@pytest.mark.parametrize("argv", [
    [], ["--root", "/x"], ["--root=/x"], ["-o", "a=b", "--option", "c=d", "--option=e=f"],
    ["--fresh"], ["--root", "/x", "--fresh", "-o", "k=v"], ["--root", "/a", "--root", "/b"],
])
def test_the_usual_command_line_reads_as_argparse_reads_it(argv):
    fast = parse_simple_args(argv, InitDaemon.flags)
    assert fast is not None
    assert vars(fast) == vars(InitDaemon.arg_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["--help"], ["-h"], ["--root"], ["--bogus"], ["positional"], ["--fresh=1"], ["-o", "--root"],
    ["--ro", "/x"],
])
def test_anything_else_is_left_to_argparse(argv):
    assert parse_simple_args(argv, InitDaemon.flags) is None


def test_a_daemon_without_flags_refuses_another_programs_flag():
    assert parse_simple_args(["--fresh"]) is None
    with pytest.raises(SystemExit):
        InitDaemon.parse_args(["--no-such-option"])


def test_the_log_handler_follows_a_rotation(tmp_path):
    path = tmp_path / "x.log"
    handler = WatchedFileHandler(str(path))
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test_init_base.rotation")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("one")
        os.rename(path, tmp_path / "x.log.1")        # what the rotation job does
        log.warning("two")
        path.unlink()                                 # removed outright
        log.warning("three")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert (tmp_path / "x.log.1").read_text() == "one\n"
    assert path.read_text() == "three\n"


def test_run_time_records_are_replaced_whole_without_fsync(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    path = tmp_path / "var" / "run" / "xapi" / "state.json"
    atomic_write(path, "old", mode=0o600, durable=False)
    atomic_write(path, "new", mode=0o600, durable=False)
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o600
    assert synced == []
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]   # no temp file left
    atomic_write(path, "durable")
    assert len(synced) == 2                          # the file, then its directory


def test_a_quick_step_is_written_once_a_long_one_shows_running(tmp_path):
    record = tmp_path / "startup.json"
    progress = pr.Progress(record)

    def on_disk(index):
        return json.loads(record.read_text())["steps"][index]["status"]

    async def run():
        progress.new_run(STEPS, "master", 1)
        writes = []
        real_save = progress.save
        progress.save = lambda: (writes.append(1), real_save())
        progress.mark(0, pr.RUNNING)
        assert on_disk(0) == pr.WAITING              # not written yet
        progress.mark(0, pr.OK, duration_s=0.001)
        assert on_disk(0) == pr.OK and len(writes) == 1
        await asyncio.sleep(pr.RUNNING_SAVE_DELAY_S * 2)
        assert len(writes) == 1                      # nothing left to write
        progress.mark(1, pr.RUNNING)
        deadline = asyncio.get_running_loop().time() + 5.0
        while on_disk(1) != pr.RUNNING:              # a long step: written after the delay
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert len(writes) == 2

    asyncio.run(run())


def test_without_a_loop_a_running_step_is_written_at_once(tmp_path):
    progress = pr.Progress(tmp_path / "startup.json")
    progress.new_run(STEPS, "master", 1)
    progress.mark(3, pr.RUNNING)
    assert pr.Progress.load(tmp_path / "startup.json").step(3)["status"] == pr.RUNNING


def test_a_restart_waits_for_the_old_process_through_its_pidfd():
    import subprocess
    import sys
    import time
    from daemons.init.programs import open_pidfd, wait_readable

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fd = open_pidfd(child.pid)
    try:
        assert fd is not None

        async def wait(timeout_s):
            started = time.monotonic()
            await wait_readable(fd, timeout_s)
            return time.monotonic() - started

        assert asyncio.run(wait(0.1)) >= 0.09          # still running: the wait times out
        child.terminate()
        assert asyncio.run(wait(30.0)) < 10.0          # gone (a zombie suffices): at once
    finally:
        child.kill()
        child.wait()
        if fd is not None:
            os.close(fd)
    assert open_pidfd(None) is None
    assert open_pidfd(child.pid) is None                # reaped: no such process
