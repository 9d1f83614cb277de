"""xapi-ctl: the operator's command line for one host's tree.

Exit codes: 0 ok, 1 error, 3 not running or not healthy, 4 cannot reach the tree.
"""

import argparse
import gc
import json
import signal
import sys
import time

from common.errors import ConfigError, XapiError
from common.paths import PROGRAMS, Paths, root_from_env
from common.supervisor import Supervisor
from daemons.ctl import db as db_ctl
from daemons.ctl import mail as mail_ctl
from daemons.ctl import passwd as passwd_ctl
from daemons.ctl import periodic as periodic_ctl
from daemons.ctl import sim as sim_ctl
from daemons.ctl import status as status_mod
from daemons.ctl import tree
from daemons.ctl.tree import CtlError

EXIT_OK, EXIT_ERROR = 0, 1
UP_TIMEOUT_S = 600.0
RESTART_MARGIN_S = 15.0


def _out(line=""):
    print(line, flush=True)


def cmd_init(paths, args):
    """Make a ROOT that was never initialised into a host (inventory, xapi.conf, pool.conf,
    pool secret), as an installer would."""
    uuid, role = tree.init_host(paths, args.role)
    _out(f"initialised {paths.root}: host {uuid}, role {role}")
    return EXIT_OK


def cmd_up(paths, args):
    """Start the tree (supervisord, then xapi-init, which starts the rest in order), show the
    steps as they complete, and wait for init complete."""
    if not tree.is_initialised(paths):
        uuid, role = tree.init_host(paths, "master")
        _out(f"initialised {paths.root}: host {uuid}, role {role}")
    since = time.time()
    supervisor, started = tree.start_supervisord(paths)
    _out(f"supervisord {'started' if started else 'already running'} "
         f"(pid {supervisor.pid()}) for {paths.root}")
    info = supervisor.info("xapi-init")
    if info["statename"] not in ("RUNNING", "STARTING", "BACKOFF"):
        supervisor.start("xapi-init", False)
    code, data = tree.follow_startup(paths, supervisor, since, _out, args.timeout)
    took = time.time() - since
    if code == 0:
        steps = data.get("steps", [])
        pending = sum(1 for s in steps if s["status"] == "pending")
        ok = sum(1 for s in steps if s["status"] == "ok")
        _out(f"init complete as {data.get('role')} in {took:.1f} s: {ok} step(s) ok, "
             f"{pending} pending (built by later work), "
             f"{sum(1 for s in steps if s['status'] == 'skipped')} skipped")
        return EXIT_OK
    where = f"{data['failed_step']}: " if data.get("failed_step") else ""
    _out(f"start-up did not complete ({data.get('state')}): {where}{data.get('error')}")
    return EXIT_ERROR


def cmd_down(paths, args):
    """Stop the tree in order (reverse of start, xapi-db last) and its supervisord; data kept."""
    if tree.stop_tree(paths):
        _out(f"stopped the tree at {paths.root}")
    else:
        _out(f"the tree at {paths.root} is not running")
    return EXIT_OK


def cmd_supervisord_conf(paths, args):
    """Write supervisord's config for ROOT and print its path (for a systemd unit that runs
    supervisord in the foreground)."""
    _out(str(tree.write_supervisord_conf(paths)))
    return EXIT_OK


def cmd_status(paths, args):
    """Show the host, start-up state, every program and the steps."""
    status, code = status_mod.gather(paths, tree.read_progress)
    if args.json:
        _out(json.dumps(status, indent=1, sort_keys=True))
    else:
        _out(status_mod.render(status))
    return code


def cmd_steps(paths, args):
    """The start-up timeline: each step with its status and duration."""
    data = tree.read_progress(paths)
    if args.json:
        _out(json.dumps(data.get("steps", []), indent=1))
    else:
        _out(status_mod.render_steps(data.get("steps", []), tree.format_step))
    return EXIT_OK if data.get("steps") else 3


def _init_call(paths, method, *params, timeout_s):
    return tree.call_program(paths, "xapi-init", method, *params, timeout_s=timeout_s)


def _name(name):
    if name not in PROGRAMS:
        raise CtlError(f"unknown program '{name}': one of {', '.join(PROGRAMS)}")
    return name


def _program_timeout(paths):
    from common.config import load_config
    return load_config(paths)["ready-timeout"] + RESTART_MARGIN_S


def cmd_start(paths, args):
    """Start a program stopped by the operator; returns once it is ready."""
    name = _name(args.name)
    if name == "xapi-init":
        return cmd_up(paths, args)
    pid = _init_call(paths, "init.start", name, timeout_s=_program_timeout(paths))
    _out(f"{name} is ready (pid {pid})")
    return EXIT_OK


def cmd_stop(paths, args):
    """Stop a program; the watchdog, retries and replays leave it alone until `start`."""
    name = _name(args.name)
    if name == "xapi-init":
        raise CtlError("xapi-init is the tree's orchestrator: use `xapi-ctl down`")
    _init_call(paths, "init.stop", name, timeout_s=_program_timeout(paths))
    _out(f"{name} stopped (by the operator)")
    return EXIT_OK


def cmd_restart(paths, args):
    """Restart a program; returns once it shows ready (READY received, commands replayed)."""
    name = _name(args.name)
    timeout_s = _program_timeout(paths)
    if name == "xapi-init":
        return _restart_init(paths, timeout_s)
    pid = _init_call(paths, "init.restart", name, timeout_s=timeout_s)
    _out(f"{name} is ready again (pid {pid})")
    return EXIT_OK


def _restart_init(paths, timeout_s):
    """xapi-init exits on SIGUSR1 without stopping the tree; supervisord starts it again and it
    adopts the running programs."""
    supervisor = Supervisor(paths.supervisor_socket)
    old_pid = supervisor.info("xapi-init")["pid"]
    supervisor.signal("xapi-init", "USR1")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = _init_call(paths, "init.status", timeout_s=2.0)
            if status["init"]["pid"] != old_pid and status["init"]["state"] == "complete":
                _out(f"xapi-init is back (pid {status['init']['pid']}) and adopted the tree")
                return EXIT_OK
        except CtlError:
            pass
        time.sleep(0.1)
    raise CtlError(f"xapi-init was not back within {timeout_s:g} s; check `xapi-ctl status`")


def cmd_logs(paths, args):
    """Print a program's log (var/log/NAME.log); -f follows it, across rotations."""
    name = _name(args.name)
    path = paths.log_file(name)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        raise CtlError(f"no log yet at {path}") from None
    for line in lines[-args.lines:]:
        _out(line)
    if not args.follow:
        return EXIT_OK
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    f = open(path, errors="replace")
    f.seek(0, 2)
    inode = path.stat().st_ino
    while True:
        line = f.readline()
        if line:
            print(line, end="", flush=True)
            continue
        try:
            if path.stat().st_ino != inode:   # rotated: reopen
                f.close()
                f = open(path, errors="replace")
                inode = path.stat().st_ino
                continue
        except FileNotFoundError:
            pass
        time.sleep(0.2)


def build_parser():
    parser = argparse.ArgumentParser(prog="xapi-ctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="the host's ROOT (default $XAPI_ROOT, else /)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn):
        summary = " ".join(fn.__doc__.split()).split(". ")[0].rstrip(".")
        p = sub.add_parser(name, help=summary, description=fn.__doc__)
        p.set_defaults(fn=fn)
        return p

    p = add("init", cmd_init)
    p.add_argument("--role", default="master", help="master (default) or slave:ADDRESS")
    p = add("up", cmd_up)
    p.add_argument("--timeout", type=float, default=UP_TIMEOUT_S,
                   help=f"seconds to wait for init complete (default {UP_TIMEOUT_S:g})")
    add("down", cmd_down)
    add("supervisord-conf", cmd_supervisord_conf)
    p = add("status", cmd_status)
    p.add_argument("--json", action="store_true")
    p = add("steps", cmd_steps)
    p.add_argument("--json", action="store_true")
    for name, fn in (("start", cmd_start), ("stop", cmd_stop), ("restart", cmd_restart)):
        p = add(name, fn)
        p.add_argument("name", metavar="NAME", help=" | ".join(PROGRAMS))
        if name == "start":
            p.add_argument("--timeout", type=float, default=UP_TIMEOUT_S, help=argparse.SUPPRESS)
    db_ctl.add_parser(sub, add)
    sim_ctl.add_parser(sub, add)
    mail_ctl.add_parser(sub, add)
    passwd_ctl.add_parser(sub, add)
    periodic_ctl.add_parser(sub, add)
    p = add("logs", cmd_logs)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=50)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        paths = Paths(root_from_env(args.root))
        code = args.fn(paths, args)
        # the interpreter's exit skips its full collection over the imports' objects (~40 ms
        # a call); what reference counting frees is finalised as before
        gc.freeze()
        return code
    except CtlError as exc:
        print(f"xapi-ctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"xapi-ctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except XapiError as exc:
        code = 4 if exc.code == "SUPERVISOR_UNREACHABLE" else EXIT_ERROR
        print(f"xapi-ctl: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
