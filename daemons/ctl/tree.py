"""The tree of one host: making a ROOT into a host, starting and stopping its supervisord,
and following start-up as it runs."""

import json
import os
import subprocess
import time

from common import config as config_mod
from common import inventory, poolconf
from common.errors import XapiError
from common.fileutil import atomic_write
from common.paths import bin_dir, supervisord_conf_d
from common.rpc import RpcClient
from common.supervisor import FATAL, Supervisor

SUPERVISORD_START_TIMEOUT_S = 20.0
SUPERVISORD_STOP_TIMEOUT_S = 180.0
FOLLOW_POLL_S = 0.01         # a stat of startup.json
REREAD_S = 0.25
SUPERVISOR_CHECK_S = 0.5     # xapi-init's state in supervisord (FATAL), an XML-RPC call


class CtlError(XapiError):
    """An error xapi-ctl reports, with its exit code."""

    def __init__(self, message, exit_code=1):
        super().__init__("CTL_ERROR", message)
        self.message, self.exit_code = message, exit_code

    def __str__(self):
        return self.message


def call_program(paths, program, method, *args, timeout_s):
    """One call to a program of the tree, its failure as a CtlError: a timeout says what to
    check (exit 4, cannot reach the tree), any other error names the method and the code."""
    if not paths.rpc_socket(program).exists():
        raise CtlError(f"{program} is not running at {paths.root} (no {paths.rpc_socket(program)}): "
                       "start the tree with `xapi-ctl up`", 4)
    try:
        with RpcClient(paths.rpc_endpoint(program), timeout_s=timeout_s) as client:
            return client.call(method, *args)
    except XapiError as exc:
        if exc.code == "RPC_TIMEOUT":
            raise CtlError(f"{program} did not answer {method} within {timeout_s:g} s: is the "
                           f"tree up? check `xapi-ctl status` and "
                           f"{paths.log_file(program)}", 4) from None
        raise CtlError(f"{method}: {' '.join(exc.description)}") from None


def is_initialised(paths):
    return paths.inventory.exists()


def init_host(paths, role_token):
    """Make a ROOT that was never initialised into a host, as an installer would."""
    role = poolconf.parse_pool_conf(role_token)
    if role.is_broken:
        raise CtlError(f"--role must be 'master' or 'slave:ADDRESS', not '{role_token}'")
    if is_initialised(paths):
        raise CtlError(f"{paths.root} is already a host ({paths.inventory} exists): "
                       "its files are kept as they are")
    paths.make_dirs()
    values, _ = inventory.ensure_inventory(paths.inventory)
    if not paths.xapi_conf.exists():
        atomic_write(paths.xapi_conf, config_mod.render_default_config())
    poolconf.write_role(paths.pool_conf, role)
    if not paths.ptoken.exists():
        import secrets
        atomic_write(paths.ptoken, secrets.token_hex(32) + "\n", mode=0o600)
    return values[inventory.INSTALLATION_UUID], role


def render_supervisord_conf(paths):
    conf_d = supervisord_conf_d()
    return f"""; written by xapi-ctl for the host at {paths.root}; rewritten at every start
[unix_http_server]
file={paths.supervisor_socket}
chmod=0700

[supervisord]
logfile={paths.supervisord_log}
logfile_maxbytes=1MB
logfile_backups=2
pidfile={paths.supervisor_pid}
childlogdir={paths.log_dir}
identifier=xapi-py:{paths.root}
nodaemon=false
minfds=1024

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{paths.supervisor_socket}

[include]
files = {conf_d}/*.conf
"""


def write_supervisord_conf(paths):
    paths.make_dirs()
    atomic_write(paths.supervisor_conf, render_supervisord_conf(paths), mode=0o600)
    return paths.supervisor_conf


def start_supervisord(paths):
    """Start supervisord for ROOT, detached from our stdin/stdout/stderr; return once its
    XML-RPC socket answers."""
    supervisor = Supervisor(paths.supervisor_socket)
    if supervisor.alive():
        return supervisor, False
    write_supervisord_conf(paths)
    env = dict(os.environ, XAPI_ROOT=str(paths.root), XAPI_BIN=str(bin_dir()))
    env.pop("NOTIFY_SOCKET", None)
    # The programs start often (every restart): let Python cache their bytecode, as an
    # installed package has it compiled, even where the caller's shell turned that off.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with open(os.devnull, "r+b") as devnull:
        done = subprocess.run(
            [str(bin_dir() / "supervisord"), "-c", str(paths.supervisor_conf)],
            stdin=devnull, stdout=devnull, stderr=subprocess.PIPE, env=env,
            start_new_session=True, timeout=SUPERVISORD_START_TIMEOUT_S)
    if done.returncode != 0:
        raise CtlError(f"supervisord did not start (exit {done.returncode}): "
                       f"{done.stderr.decode(errors='replace').strip()}")
    deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT_S
    while not supervisor.alive():
        if time.monotonic() > deadline:
            raise CtlError(f"supervisord did not answer on {paths.supervisor_socket} within "
                           f"{SUPERVISORD_START_TIMEOUT_S:g} s; see {paths.supervisord_log}", 4)
        time.sleep(0.01)
    return supervisor, True


def stop_tree(paths):
    """Ordered stop: xapi-init stops the programs in reverse order, then supervisord goes."""
    supervisor = Supervisor(paths.supervisor_socket, timeout_s=SUPERVISORD_STOP_TIMEOUT_S)
    if not supervisor.alive():
        return False
    pid = supervisor.pid()
    supervisor.stop("xapi-init", True)
    for name, info in supervisor.all_info().items():
        if info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            supervisor.stop(name, True)
    supervisor.shutdown()
    deadline = time.monotonic() + SUPERVISORD_STOP_TIMEOUT_S
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise CtlError(f"supervisord (pid {pid}) did not exit within "
                           f"{SUPERVISORD_STOP_TIMEOUT_S:g} s", 1)
        time.sleep(0.05)
    return True


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie we are not the parent of still answers kill(0); /proc tells
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def read_progress(paths):
    try:
        return json.loads(paths.startup_json.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def follow_startup(paths, supervisor, since, out, timeout_s):
    """Print each step as it completes until init is complete; returns the exit code.

    startup.json is read again when it was replaced (a stat every FOLLOW_POLL_S; read anyway
    every REREAD_S, as a file system may reuse an inode within one mtime tick), and
    supervisord is asked about xapi-init every SUPERVISOR_CHECK_S: a start-up shares two
    cores with this loop, and a tighter one would slow what it watches."""
    sv_pid = supervisor.pid()
    printed, run = 0, None
    seen, data = (), {}
    deadline = time.monotonic() + timeout_s
    next_sv_check = next_read = 0.0
    record, cookie = paths.startup_json, paths.init_complete_cookie
    while True:
        stamp = _file_stamp(record)
        if stamp != seen or time.monotonic() >= next_read:
            seen, data = stamp, read_progress(paths)
            next_read = time.monotonic() + REREAD_S
        # A run of this supervisord that was stopped (SIGTERM, down) or is being restarted is
        # over: its steps are not the ones this `up` is waiting for.
        current = ((data.get("supervisor_pid") == sv_pid
                    and data.get("state") not in ("stopped", "restarting"))
                   or data.get("at", 0) >= since)
        if current:
            if data.get("started_at") != run:      # a new run: follow it from its first step
                printed, run = 0, data.get("started_at")
            steps = data.get("steps", [])
            while printed < len(steps) and steps[printed]["status"] not in ("waiting", "running"):
                out(format_step(steps[printed]))
                printed += 1
            state = data.get("state")
            if state == "complete" and cookie.exists():
                return 0, data
            if state in ("failed", "emergency"):
                return 1, data
        now = time.monotonic()
        if now >= next_sv_check:
            next_sv_check = now + SUPERVISOR_CHECK_S
            info = supervisor.info("xapi-init")
            if info["statename"] == FATAL:
                return 1, dict(data, state="failed", error=(
                    "xapi-init exited at every start (FATAL in supervisord): "
                    + tail_text(paths.err_file("xapi-init"))))
        if now > deadline:
            return 1, dict(data, state="timeout", error=(
                f"start-up did not complete within {timeout_s:g} s; check "
                f"`xapi-ctl status` and {paths.log_file('xapi-init')}"))
        time.sleep(FOLLOW_POLL_S)


def _file_stamp(path):
    """What changes when a file is replaced (atomic_write renames a new inode over it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def format_step(step):
    duration = step.get("duration_s")
    took = f"{duration:8.3f}s" if isinstance(duration, (int, float)) else " " * 9
    line = f"  {step['status']:<8} {took}  {step['name']}"
    if step["status"] == "pending" and step.get("pending"):
        line += f"   [pending: {step['pending']}]"
    if step.get("error"):
        line += f"   ERROR: {step['error']}"
    return line


def tail_text(path, lines=5):
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no {path.name})"
    return " / ".join(text[-lines:])
