"""Start-up of a master: `xapi-ctl up`, the status object, the step order, the lock that keeps a
second copy out, and what a daemon does with garbage on its RPC socket. One tree for the module."""

import os
import random
import subprocess
import time

import msgpack
import psutil
import pytest
import zmq

from common import inventory, protocol
from daemons.init.steps import STEPS, steps_for

from .conftest import (BIN, LOG_TASK_RE, MANAGED_PROGRAMS, PROGRAMS, all_ready, clean_env,
                       daemon, running_tree, wait_until)


@pytest.fixture(scope="module")
def tree():
    with running_tree() as t:
        yield t


@pytest.mark.timeout(120)
def test_up_reaches_init_complete_as_master(tree):
    done = tree.up_result
    assert done.returncode == 0
    assert "init complete as master" in done.stdout, done.stdout
    assert tree.paths.init_complete_cookie.is_file()
    assert tree.paths.ready_cookie.is_file()
    # A second `up` on a running tree finds it complete and says so, without restarting it.
    pids = {d["name"]: d["pid"] for d in tree.status()["daemons"]}
    again = tree.ctl("up", timeout_s=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout
    assert {d["name"]: d["pid"] for d in tree.status()["daemons"]} == pids


@pytest.mark.timeout(120)
def test_status_json_lists_every_program_ready(tree):
    status = wait_until(
        lambda: (s := tree.status()) and all(d["state"] == "RUNNING" for d in s["daemons"]) and s,
        15, "supervisord to show every program RUNNING (past startsecs)")
    assert status["_exit"] == 0, status
    uuid = inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]
    assert status["host"]["uuid"] == uuid
    assert status["host"]["role"] == "master"
    assert "master_address" in status["host"] and status["host"]["master_address"] is None
    init = status["init"]
    assert init["ready"] is True and init["complete"] is True and init["emergency"] is False
    assert status["api"]["unix_socket"] == str(tree.paths.api_socket)   # xapi-api listens

    assert [d["name"] for d in status["daemons"]] == list(PROGRAMS)
    for entry in status["daemons"]:
        for key in ("name", "state", "ready", "pid", "restarts", "watchdog_age_s"):
            assert key in entry, (key, entry)
        assert entry["ready"] is True, entry
        assert entry["restarts"] == 0, entry
        proc = psutil.Process(entry["pid"])
        assert proc.cmdline()[-2:] == ["--root", tree.root], proc.cmdline()
        assert os.path.basename(proc.cmdline()[1]) == entry["name"], proc.cmdline()
    for name in MANAGED_PROGRAMS:
        entry = daemon(status, name)
        age = entry["watchdog_age_s"]
        # the daemons ping every watchdog-timeout/4 (2.5 s by default)
        assert isinstance(age, (int, float)) and 0 <= age < 10, entry
        assert entry["pid"] == tree.health(name)["pid"]

    steps = status["steps"]
    assert [s["name"] for s in steps] == [s.name for s in STEPS]
    master_steps = {s.name for s in steps_for("master")}
    for step in steps:
        for key in ("name", "role", "status", "duration_s", "error"):
            assert key in step, (key, step)
        assert step["error"] is None, step
        if step["name"] in master_steps:
            assert step["status"] in ("ok", "pending"), step
            assert isinstance(step["duration_s"], (int, float)) and step["duration_s"] >= 0
        else:
            assert step["role"] == "slave" and step["status"] == "skipped", step


@pytest.mark.timeout(60)
def test_step_log_follows_the_table_order(tree):
    lines = tree.log_lines("xapi-init")
    runs = [i for i, line in enumerate(lines) if "fresh start-up as master" in line]
    assert len(runs) == 1, f"expected one fresh start-up in the log, found {len(runs)}"
    started = [m["name"] for line in lines[runs[0]:] if (m := LOG_TASK_RE.search(line))]

    table = steps_for("master")
    on_thread = [s.name for s in table if s.on_thread]
    assert on_thread, "the table has on_thread steps; this test must look at them"
    # Steps the runner awaits start in exactly the table's order...
    assert [n for n in started if n not in on_thread] == [s.name for s in table
                                                         if not s.on_thread]
    # ...on_thread steps (not awaited) each start once, and only after the step before them
    # in the table has started.
    assert sorted(n for n in started if n in on_thread) == sorted(on_thread)
    for i, step in enumerate(table):
        if step.on_thread and i > 0:
            assert started.index(step.name) > started.index(table[i - 1].name), step.name
    assert len(started) == len(table)


@pytest.mark.timeout(60)
def test_second_copy_of_a_daemon_exits_at_once(tree):
    running = tree.health("xapi-db")
    t0 = time.monotonic()
    done = subprocess.run([str(BIN / "xapi-db"), "--root", tree.root], capture_output=True,
                          text=True, timeout=30, env=clean_env(), stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert took < 15, f"the second copy took {took:.1f} s to give up"
    err = done.stderr
    assert "xapi-db" in err and "already running" in err, err
    assert str(tree.paths.lock_file("xapi-db")) in err, err
    assert f"pid {running['pid']}" in err, err
    # The copy that runs is untouched: same pid, its socket still answers, still ready.
    assert tree.health("xapi-db")["pid"] == running["pid"]
    assert tree.paths.rpc_socket("xapi-db").exists()
    entry = daemon(tree.status(), "xapi-db")
    assert entry["ready"] and entry["pid"] == running["pid"] and entry["restarts"] == 0


def _send_raw(endpoint, frame, timeout_s=5.0):
    """Send one raw frame with a DEALER and return the decoded reply (or fail)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(frame)
        assert sock.poll(int(timeout_s * 1000)), f"no reply to {frame[:16]!r}... within {timeout_s} s"
        return protocol.unpack(sock.recv_multipart()[-1])
    finally:
        sock.close(0)


@pytest.mark.timeout(60)
def test_garbage_frames_get_an_error_reply(tree):
    name = "xapi-db"
    endpoint = tree.paths.rpc_endpoint(name)
    pid = tree.health(name)["pid"]
    decode_errors_before = tree.call(name, "sys.stats")["rpc_errors"]["decode"]
    rng = random.Random(20240611)
    frames = [b"\xc1" + rng.randbytes(63)]                       # 0xc1 is never valid msgpack
    frames += [rng.randbytes(rng.randint(1, 200)) for _ in range(5)]
    frames += [msgpack.packb([1, "sys.health", []]), msgpack.packb("sys.health"),
               msgpack.packb(42)]                               # valid msgpack, not a map
    for frame in frames:
        reply = _send_raw(endpoint, frame)
        assert reply["ok"] is False, (frame, reply)
        assert reply["e"][0] == "MESSAGE_DECODE_ERROR", (frame, reply)
        assert tree.health(name)["pid"] == pid
    stats = tree.call(name, "sys.stats")
    assert stats["rpc_errors"]["decode"] == decode_errors_before + len(frames)
    assert psutil.pid_exists(pid)
    assert daemon(tree.status(), name)["ready"] is True
    assert all_ready(tree.status())
