"""`xapi-ctl status`: one object with the host, init, every program and every step, from
xapi-init when it answers, else from supervisord and the start-up record."""

from common import inventory
from common.errors import XapiError
from common.paths import MANAGED_PROGRAMS
from common.rpc import RpcClient
from common.supervisor import BACKOFF, EXITED, FATAL, STOPPED, Supervisor

EXIT_OK, EXIT_NOT_HEALTHY, EXIT_UNREACHABLE = 0, 3, 4
STATUS_TIMEOUT_S = 5.0


def gather(paths, read_progress):
    """Returns (status dict, exit code)."""
    supervisor = Supervisor(paths.supervisor_socket, timeout_s=STATUS_TIMEOUT_S)
    if not supervisor.alive():
        status = _from_files(paths, read_progress(paths), None)
        status["error"] = (f"the tree is not running: no supervisord answers on "
                           f"{paths.supervisor_socket} (start it with `xapi-ctl up`)")
        return status, EXIT_UNREACHABLE
    try:
        init_state = supervisor.info("xapi-init")["statename"]
    except XapiError:
        init_state = None
    if init_state in (STOPPED, EXITED, FATAL, BACKOFF):
        # Nobody to ask: do not wait out the RPC timeout for a program that is not running.
        status = _from_files(paths, read_progress(paths), supervisor)
        status["error"] = (f"xapi-init is not running ({init_state} in supervisord); showing "
                           "supervisord's view")
        return status, EXIT_NOT_HEALTHY
    try:
        with RpcClient(paths.rpc_endpoint("xapi-init"), timeout_s=STATUS_TIMEOUT_S) as client:
            status = client.call("init.status")
    except XapiError as exc:
        status = _from_files(paths, read_progress(paths), supervisor)
        status["error"] = f"xapi-init does not answer ({exc}); showing supervisord's view"
        return status, EXIT_NOT_HEALTHY
    status["daemons"].insert(0, _init_entry(supervisor, status))
    status["api"] = {"unix_socket": None, "http_url": None}
    healthy = status["init"]["complete"] and all(d["ready"] for d in status["daemons"])
    return status, EXIT_OK if healthy else EXIT_NOT_HEALTHY


def _init_entry(supervisor, status):
    try:
        info = supervisor.info("xapi-init")
        state, pid = info["statename"], info["pid"] or None
    except XapiError:
        state, pid = "UNKNOWN", status["init"].get("pid")
    return {"name": "xapi-init", "state": state, "ready": bool(status["init"]["complete"]),
            "pid": pid, "restarts": status["init"].get("restarts", 0),
            "watchdog_age_s": None, "last_status": status["init"].get("state")}


def _from_files(paths, progress, supervisor):
    infos = {}
    if supervisor is not None:
        try:
            infos = supervisor.all_info()
        except XapiError:
            infos = {}
    daemons = []
    for name in ("xapi-init",) + MANAGED_PROGRAMS:
        info = infos.get(name, {})
        daemons.append({"name": name, "state": info.get("statename", "STOPPED"),
                        "ready": False, "pid": info.get("pid") or None, "restarts": None,
                        "watchdog_age_s": None})
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
        "api": {"unix_socket": None, "http_url": None},
    }


def _host_uuid(paths):
    """The host's uuid from its inventory, when xapi-init is not there to say it."""
    try:
        return inventory.read_inventory(paths.inventory).get(inventory.INSTALLATION_UUID)
    except (OSError, XapiError):
        return None


def render(status):
    """The human form of a status object."""
    host, init = status["host"], status["init"]
    lines = [
        f"host      {host.get('uuid') or '?'}  role {host.get('role') or '?'}"
        + (f" (master {host['master_address']})" if host.get("master_address") else ""),
        f"start-up  {init.get('state') or 'unknown'}; ready file "
        f"{'yes' if init.get('ready') else 'no'}; init complete "
        f"{'yes' if init.get('complete') else 'no'}"
        + ("; EMERGENCY MODE" if init.get("emergency") else ""),
    ]
    if init.get("error"):
        lines.append(f"error     {init.get('failed_step') or ''}: {init['error']}")
    if status.get("error"):
        lines.append(f"note      {status['error']}")
    lines.append("")
    lines.append(f"{'program':<15}{'state':<10}{'ready':<7}{'pid':>8}{'restarts':>10}"
                 f"{'watchdog':>10}  notes")
    for d in status["daemons"]:
        age = d.get("watchdog_age_s")
        notes = []
        if d.get("operator_stopped"):
            notes.append("stopped by operator")
        if d.get("next_retry_in_s") is not None:
            notes.append(f"FATAL: retry {d.get('fatal_retries', 0) + 1} in "
                         f"{d['next_retry_in_s']:.0f} s")
        elif d.get("fatal_retries"):
            notes.append(f"{d['fatal_retries']} FATAL retries")
        if d.get("watchdog_kills"):
            notes.append(f"{d['watchdog_kills']} watchdog kill(s)")
        if d.get("last_error"):
            notes.append(d["last_error"])
        lines.append(
            f"{d['name']:<15}{d['state']:<10}{'yes' if d['ready'] else 'no':<7}"
            f"{d['pid'] or '-':>8}{d['restarts'] if d['restarts'] is not None else '-':>10}"
            f"{f'{age:.1f}s' if age is not None else '-':>10}  {'; '.join(notes)}")
        for tail_line in d.get("log_tail") or []:
            lines.append(f"{'':<15}| {tail_line}")
    counts = {}
    for step in status["steps"]:
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    lines.append("")
    lines.append("steps     " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def render_steps(steps, format_step):
    return "\n".join(format_step(step) for step in steps) or "no start-up recorded"
