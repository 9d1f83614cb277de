"""System tests: a real supervisord tree (supervisord, xapi-init and the seven daemons) in a
short temp ROOT, driven through the real `xapi-ctl` and, where needed, supervisord's XML-RPC and
the daemons' RPC.

Rules: every wait is a poll with a deadline (``wait_until``); every process a test starts is
stopped by a fixture finaliser, even when the test fails (``xapi-ctl down``, then kill -9 of any
process whose command line names the ROOT, then the ROOT is removed).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from common.paths import MANAGED_PROGRAMS, PROGRAMS, Paths
from common.rpc import RpcClient
from common.supervisor import Supervisor

# The programs of the installation the tests run with (tests run as .venv/bin/python -m pytest).
BIN = Path(sys.executable).parent
CTL_TIMEOUT_S = 90.0
POLL_S = 0.1
LOG_TASK_RE = re.compile(r"\] task \[(?P<name>.*)\] started$")


def free_port():
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- waiting ----------------------------------------------------------------------------------
def wait_until(predicate, timeout_s, what, interval_s=POLL_S):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout_s`` passes
    (AssertionError naming ``what``, the last value and the last exception). An exception in
    the predicate counts as "not yet": processes come and go while we poll."""
    deadline = time.monotonic() + timeout_s
    last_value, last_exc = None, None
    while True:
        try:
            value = predicate()
            last_exc = None
        except Exception as exc:  # noqa: BLE001 - reported below if it never settles
            value, last_exc = None, exc
        if value:
            return value
        last_value = value
        if time.monotonic() >= deadline:
            detail = f"; last value {last_value!r}"
            if last_exc is not None:
                detail += f"; last error {type(last_exc).__name__}: {last_exc}"
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
        time.sleep(interval_s)


def hold_for(predicate, duration_s, what, interval_s=0.25):
    """Check that ``predicate`` stays truthy for the whole of ``duration_s`` (polled); fail at the
    first poll where it is not. This observes a period; it never synchronises on anything."""
    deadline = time.monotonic() + duration_s
    polls = 0
    while True:
        value = predicate()
        polls += 1
        assert value, f"{what} stopped holding after {polls} poll(s): {value!r}"
        if time.monotonic() >= deadline:
            return polls
        time.sleep(interval_s)


# -- processes of a ROOT ----------------------------------------------------------------------
def _names_root(cmdline, root):
    return any(arg == root or arg.startswith(root + "/") for arg in cmdline or ())


def processes_of(root):
    """Every live process whose command line names ``root`` (the ROOT itself or a path below)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if (_names_root(proc.info["cmdline"], root)
                    and proc.info["status"] != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_processes_of(root):
    procs = processes_of(root)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(signal.SIGCONT)   # a test may have left one SIGSTOPped
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    return procs


def clean_env():
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "XAPI_ROOT", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return env


# -- a tree -----------------------------------------------------------------------------------
class Tree:
    """One host's ROOT and its supervisord tree."""

    def __init__(self):
        # Short, so every unix socket path stays under 107 bytes.
        self.root = tempfile.mkdtemp(prefix="x", dir="/tmp")
        self.paths = Paths(self.root)
        self.up_result = None
        self.last_status = None

    # xapi-ctl -------------------------------------------------------------------------------
    def ctl(self, *args, timeout_s=CTL_TIMEOUT_S):
        """Run `xapi-ctl --root ROOT ARGS`; returns the CompletedProcess (text)."""
        return subprocess.run([str(BIN / "xapi-ctl"), "--root", self.root, *args],
                              capture_output=True, text=True, timeout=timeout_s,
                              env=clean_env(), stdin=subprocess.DEVNULL)

    def ctl_ok(self, *args, timeout_s=CTL_TIMEOUT_S):
        done = self.ctl(*args, timeout_s=timeout_s)
        assert done.returncode == 0, describe(done)
        return done

    def init(self, role="master"):
        """`xapi-ctl init`, then free loopback ports for the HTTP and HTTPS APIs in xapi.conf:
        trees of tests running side by side must not all ask for ports 80 and 443
        (``self.http_port``, ``self.https_port``)."""
        done = self.ctl_ok("init", "--role", role)
        self.http_port, self.https_port = free_port(), free_port()
        self.configure(http_port=self.http_port, https_port=self.https_port)
        return done

    def configure(self, **options):
        """Append options to etc/xapi.conf (``watchdog_timeout=3`` -> ``watchdog-timeout = 3``)."""
        lines = "".join(f"{k.replace('_', '-')} = {v}\n" for k, v in options.items())
        with open(self.paths.xapi_conf, "a") as f:
            f.write("\n# set by the system tests\n" + lines)

    def up(self, timeout_s=CTL_TIMEOUT_S):
        self.up_result = self.ctl("up", "--timeout", str(timeout_s - 10), timeout_s=timeout_s)
        return self.up_result

    def db_get(self, cls, ref_or_uuid):
        """One record as `xapi-ctl db get CLASS REF|UUID` prints it (a dict, with its ref)."""
        return json.loads(self.ctl_ok("db", "get", cls, ref_or_uuid).stdout)

    def db_dump(self):
        """The pool database as `xapi-ctl db dump --file` writes it: table -> rows (columns)."""
        from daemons.db import xmlfile
        path = f"{self.root}/dump.db"
        self.ctl_ok("db", "dump", "--file", path)
        return xmlfile.read_file(path).tables

    def status(self):
        """`xapi-ctl status --json` as a dict (exit 0 healthy, 3 not healthy, 4 unreachable)."""
        done = self.ctl("status", "--json", timeout_s=30)
        assert done.returncode in (0, 3, 4), describe(done)
        data = json.loads(done.stdout)
        data["_exit"] = done.returncode
        self.last_status = data
        return data

    def wait_status(self, condition, timeout_s, what):
        """Poll `xapi-ctl status --json` until ``condition(status)`` holds; returns that status.
        On a timeout the message shows a summary of the last status seen."""
        self.last_status = None
        try:
            return wait_until(lambda: (s := self.status()) and condition(s) and s,
                              timeout_s, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast status: {summary(self.last_status)}") from None

    # other views ----------------------------------------------------------------------------
    @property
    def supervisor(self):
        return Supervisor(self.paths.supervisor_socket, timeout_s=30)

    def health(self, name, timeout_s=5.0):
        with RpcClient(self.paths.rpc_endpoint(name), timeout_s=timeout_s) as client:
            return client.call("sys.health")

    def call(self, name, method, *args, timeout_s=5.0):
        with RpcClient(self.paths.rpc_endpoint(name), timeout_s=timeout_s) as client:
            return client.call(method, *args)

    def log_lines(self, program):
        return self.paths.log_file(program).read_text(errors="replace").splitlines()

    def processes(self):
        return processes_of(self.root)

    # teardown -------------------------------------------------------------------------------
    def cleanup(self):
        """Stop everything of this ROOT whatever state it is in, and remove the ROOT."""
        for proc in self.processes():     # a SIGSTOPped daemon would stall the ordered stop
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.ctl("down", timeout_s=60)
        kill_processes_of(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def describe(done):
    return (f"`{' '.join(done.args)}` exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"--- stderr\n{done.stderr}")


def summary(status):
    """A status in a few lines, for failure messages."""
    if not status:
        return repr(status)
    keys = ("name", "state", "ready", "pid", "restarts", "watchdog_kills", "fatal_retries",
            "next_retry_in_s", "operator_stopped", "last_error")
    lines = [f"host={status.get('host')} init={status.get('init')} error={status.get('error')}"]
    lines += [str({k: d.get(k) for k in keys if k in d}) for d in status.get("daemons", [])]
    return "\n  ".join(lines)


def daemon(status, name):
    """The entry of ``name`` in a status' daemons[]."""
    for entry in status["daemons"]:
        if entry["name"] == name:
            return entry
    raise KeyError(f"{name} not in status daemons {[d['name'] for d in status['daemons']]}")


def all_ready(status, names=PROGRAMS):
    return all(daemon(status, name)["ready"] for name in names)


@contextlib.contextmanager
def running_tree(**options):
    """A tree initialised as master with ``options`` in its xapi.conf, up; always cleaned up."""
    tree = Tree()
    try:
        tree.init()
        if options:
            tree.configure(**options)
        done = tree.up()
        assert done.returncode == 0, describe(done)
        yield tree
    finally:
        tree.cleanup()


@pytest.fixture
def make_tree():
    """A factory of trees for tests that break theirs; every tree is cleaned up afterwards."""
    trees = []

    def make():
        tree = Tree()
        trees.append(tree)
        return tree

    yield make
    for tree in trees:
        tree.cleanup()


__all__ = ["BIN", "LOG_TASK_RE", "MANAGED_PROGRAMS", "PROGRAMS", "Tree", "all_ready", "daemon",
           "describe", "summary", "hold_for", "kill_processes_of", "make_tree", "processes_of",
           "running_tree", "wait_until", "clean_env"]
