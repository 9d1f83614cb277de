"""A host's status as one object: the host, xapi-init's start-up state, every program (state,
pid, uptime, restarts...), every start-up step and where the XenAPI listens. Asked of xapi-init
when it answers, else read from supervisord and the start-up record.

Two readers: `xapi-ctl status` (daemons/ctl/status.py renders it as text) and xapi-api's
``/status`` and ``/status.json`` pages. Blocking (supervisord's XML-RPC and a synchronous RPC
client): xapi-api calls it in an executor thread.
"""

import json
import time

from common import inventory
from common.errors import XapiError
from common.paths import MANAGED_PROGRAMS
from common.rpc import RpcClient
from common.supervisor import BACKOFF, EXITED, FATAL, RUNNING_STATES, STOPPED, Supervisor

EXIT_OK, EXIT_NOT_HEALTHY, EXIT_UNREACHABLE = 0, 3, 4
STATUS_TIMEOUT_S = 5.0
NO_API = {"unix_socket": None, "http_url": None, "https_url": None}


def read_startup_record(paths):
    """xapi-init's start-up record (var/run/xapi/startup.json); {} when missing or unreadable."""
    try:
        return json.loads(paths.startup_json.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def gather(paths, read_progress=read_startup_record, api_endpoints=None):
    """Returns (status dict, exit code: 0 healthy, 3 not healthy, 4 the tree is not running).
    ``api_endpoints``: where the XenAPI listens, when the caller knows (xapi-api itself);
    else xapi-api is asked."""
    supervisor = Supervisor(paths.supervisor_socket, timeout_s=STATUS_TIMEOUT_S)
    if not supervisor.alive():
        status = _from_files(paths, read_progress(paths), {})
        status["error"] = (f"the tree is not running: no supervisord answers on "
                           f"{paths.supervisor_socket} (start it with `xapi-ctl up`)")
        return status, EXIT_UNREACHABLE
    infos = _all_info(supervisor)
    init_state = infos.get("xapi-init", {}).get("statename")
    if init_state in (STOPPED, EXITED, FATAL, BACKOFF):
        # Nobody to ask: do not wait out the RPC timeout for a program that is not running.
        status = _from_files(paths, read_progress(paths), infos)
        status["error"] = (f"xapi-init is not running ({init_state} in supervisord); showing "
                           "supervisord's view")
        return status, EXIT_NOT_HEALTHY
    try:
        with RpcClient(paths.rpc_endpoint("xapi-init"), timeout_s=STATUS_TIMEOUT_S) as client:
            status = client.call("init.status")
    except XapiError as exc:
        status = _from_files(paths, read_progress(paths), infos)
        status["error"] = f"xapi-init does not answer ({exc}); showing supervisord's view"
        return status, EXIT_NOT_HEALTHY
    status["daemons"].insert(0, _init_entry(infos, status))
    for entry in status["daemons"]:
        entry["uptime_s"] = _uptime(infos.get(entry["name"]))
    status["api"] = dict(api_endpoints) if api_endpoints is not None else _api_endpoints(paths)
    healthy = status["init"]["complete"] and all(d["ready"] for d in status["daemons"])
    return status, EXIT_OK if healthy else EXIT_NOT_HEALTHY


def _all_info(supervisor):
    try:
        return supervisor.all_info()
    except XapiError:
        return {}


def _uptime(info):
    """Seconds since supervisord started the process, for a process that runs; else None."""
    if not info or info.get("statename") not in RUNNING_STATES or not info.get("start"):
        return None
    now = info.get("now") or time.time()
    return max(0, now - info["start"])


def api_endpoints_of(listeners):
    """xapi-api's health ``listeners`` as the status' ``api`` object."""
    listeners = listeners or {}
    return {"unix_socket": listeners.get("unix"), "http_url": listeners.get("localhost"),
            "https_url": listeners.get("management")}


def _api_endpoints(paths):
    """Where the XenAPI listens, as xapi-api says (None for a listener not open)."""
    if not paths.rpc_socket("xapi-api").exists():
        return dict(NO_API)
    try:
        with RpcClient(paths.rpc_endpoint("xapi-api"), timeout_s=2.0) as client:
            listeners = client.call("sys.health").get("listeners")
    except XapiError:
        listeners = {}
    return api_endpoints_of(listeners)


def _init_entry(infos, status):
    info = infos.get("xapi-init")
    if info:
        state, pid = info["statename"], info["pid"] or None
    else:
        state, pid = "UNKNOWN", status["init"].get("pid")
    return {"name": "xapi-init", "state": state, "ready": bool(status["init"]["complete"]),
            "pid": pid, "restarts": status["init"].get("restarts", 0),
            "watchdog_age_s": None, "last_status": status["init"].get("state")}


def _from_files(paths, progress, infos):
    daemons = []
    for name in ("xapi-init",) + MANAGED_PROGRAMS:
        info = infos.get(name, {})
        daemons.append({"name": name, "state": info.get("statename", "STOPPED"),
                        "ready": False, "pid": info.get("pid") or None, "restarts": None,
                        "watchdog_age_s": None, "uptime_s": _uptime(info)})
    return {
        "host": {"uuid": progress.get("host_uuid") or _host_uuid(paths),
                 "role": progress.get("role"),
                 "master_address": None, "root": str(paths.root)},
        "init": {"state": progress.get("state"), "ready": paths.ready_cookie.exists(),
                 "complete": paths.init_complete_cookie.exists(),
                 "emergency": progress.get("state") == "emergency",
                 "error": progress.get("error"), "failed_step": progress.get("failed_step")},
        "daemons": daemons,
        "steps": progress.get("steps", []),
        "api": dict(NO_API),
    }


def _host_uuid(paths):
    """The host's uuid from its inventory, when xapi-init is not there to say it."""
    try:
        return inventory.read_inventory(paths.inventory).get(inventory.INSTALLATION_UUID)
    except (OSError, XapiError):
        return None
