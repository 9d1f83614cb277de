"""A program that dies at once on every start ends FATAL in supervisord; xapi-init retries it
with a capped exponential delay, shown by `xapi-ctl status`, and brings it back once the cause
is gone. Its own tree: the test makes one program fail on purpose.

How it is made to fail: the test stops xapi-mailer (`xapi-ctl stop`), takes its lock file
(var/run/xapi/xapi-mailer.lock) with flock, and runs `xapi-ctl start xapi-mailer`. Each copy
supervisord starts finds the lock held and exits 1 at once, so supervisord gives up (FATAL).
`xapi-ctl start` is the route that really exercises xapi-init's retries: it clears the operator's
stop, so the orchestrator's monitor owns the program again (asking supervisord directly would
leave it "stopped by the operator", which xapi-init rightly never retries). `xapi-ctl start`
waits until the program is ready, so it runs in the background while the test watches the
status, and must return 0 once the lock is released and a retry succeeds.
"""

import contextlib
import fcntl
import os
import re
import subprocess

import pytest

from .conftest import BIN, all_ready, clean_env, daemon, describe, running_tree

NAME = "xapi-mailer"


@pytest.fixture(scope="module")
def tree():
    # ready-timeout bounds how long `xapi-ctl start` waits: room for a FATAL and a retry.
    with running_tree(ready_timeout=90) as t:
        yield t


@pytest.fixture
def background():
    """Processes a test runs in the background; killed afterwards if still running."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


@pytest.mark.timeout(150)
def test_a_program_that_dies_at_every_start_is_retried(tree, background):
    tree.wait_status(all_ready, 20, "every program ready")
    done = tree.ctl("stop", NAME)
    assert done.returncode == 0, describe(done)
    old_pid_gone = daemon(tree.status(), NAME)
    assert old_pid_gone["pid"] is None and old_pid_gone["operator_stopped"], old_pid_gone

    lock_path = tree.paths.lock_file(NAME)
    fd = os.open(lock_path, os.O_RDWR)
    lock = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()

        start = subprocess.Popen([str(BIN / "xapi-ctl"), "--root", tree.root, "start", NAME],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=clean_env(), stdin=subprocess.DEVNULL)
        background.append(start)

        def fatal_with_retry(s):
            e = daemon(s, NAME)
            return e["state"] == "FATAL" and e["next_retry_in_s"] is not None
        status = tree.wait_status(fatal_with_retry, 60,
                                  f"{NAME} FATAL in supervisord with a retry planned")
        entry = daemon(status, NAME)
        assert entry["ready"] is False and entry["operator_stopped"] is False, entry
        assert entry["fatal_retries"] >= 0
        assert 0 <= entry["next_retry_in_s"] <= 60 * 1.2, entry   # restart-backoff-max, jitter
        tail = "\n".join(entry.get("log_tail") or [])
        assert "already running" in tail and str(lock_path) in tail, entry.get("log_tail")
        assert f"pid {os.getpid()}" in tail, tail
        assert start.poll() is None, "`xapi-ctl start` returned while the program cannot start"
    finally:
        lock.close()   # releases the flock: the next retry can take it

    status = tree.wait_status(
        lambda s: daemon(s, NAME)["ready"] and daemon(s, NAME)["pid"] is not None, 60,
        f"{NAME} back after a retry")
    entry = daemon(status, NAME)
    assert entry["fatal_retries"] >= 1, entry
    assert entry["next_retry_in_s"] is None and "log_tail" not in entry, entry
    out, err = start.communicate(timeout=30)
    assert start.returncode == 0, (out, err)
    assert f"{NAME} is ready (pid {entry['pid']})" in out, out
    health = tree.health(NAME)
    assert health["pid"] == entry["pid"]
    assert any(c["m"] == "sys.set_role" for c in health["applied"]), health
    log = "\n".join(tree.log_lines("xapi-init"))
    assert re.search(rf"{NAME} is FATAL in supervisord: retry 1 in [0-9.]+ s", log), log[-2000:]
    assert tree.status()["_exit"] == 0
