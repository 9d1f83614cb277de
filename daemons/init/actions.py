"""The local actions of the step table: what xapi-init itself does at a step. Each takes the
HostContext and the runner and may return a short note for the step's status line."""

import os
import platform
import random
import secrets
import ssl
import subprocess

from common import dbconf, license as license_mod, localdb, logconf
from common import inventory as inventory_mod
from common.daemon import VERSION
from common.errors import XapiError
from common.fileutil import atomic_write, touch

SCRIPT_TIMEOUT_S = 300.0


def parse_arguments(ctx, runner):
    args = {k: v for k, v in vars(ctx.args).items()}
    ctx.log.info("arguments: %s", " ".join(f"{k}={v}" for k, v in sorted(args.items())))
    return f"root {ctx.paths.root}"


def read_config(ctx, runner):
    for path, line, key in ctx.config.unknown_keys:
        ctx.log.warning("%s:%s: unknown key '%s' ignored", path, line, key)
    from_files = sum(1 for name in ctx.config if ctx.config.source(name) not in
                     ("default", "command line"))
    return f"{from_files} option(s) set in {ctx.paths.xapi_conf.name}"


def init_stunnel_path(ctx, runner):
    # xapi looks for the stunnel binary; we terminate TLS in-process with Python's ssl.
    return f"TLS by {ssl.OPENSSL_VERSION}"


def read_log_config(ctx, runner):
    levels = logconf.read_log_levels(ctx.paths.log_conf)
    if not levels:
        return "no log.conf: every program logs at info"
    return ", ".join(f"{name}={level}" for name, level in sorted(levels.items()))


def print_starting_message(ctx, runner):
    ctx.log.info("XAPI SERVER STARTING: on_system_boot=%s pool_role=%s",
                 str(ctx.system_boot).lower(), ctx.role)
    return f"pool role {ctx.role}"


def parse_inventory(ctx, runner):
    ctx.inventory, created = inventory_mod.ensure_inventory(ctx.paths.inventory)
    uuid = ctx.inventory[inventory_mod.INSTALLATION_UUID]
    runner.progress.set_state(runner.progress.data.get("state"), host_uuid=uuid)
    return f"created, host {uuid}" if created else f"host {uuid}"


def init_local_database(ctx, runner):
    ctx.local_db = localdb.LocalDB(ctx.paths.local_db, ctx.log)
    if ctx.system_boot:
        # Flags that describe this boot only (xapi resets them when started on system boot).
        ctx.local_db.put(localdb.MASTER_SCRIPTS, False)
        ctx.local_db.put(localdb.HOST_DISABLED_UNTIL_REBOOT, False)
        return "system boot: master_scripts and host_disabled_until_reboot reset"
    return f"{len(ctx.local_db.items())} key(s)"


def read_pool_secret(ctx, runner):
    path = ctx.paths.ptoken
    if path.exists():
        secret = path.read_text(encoding="utf-8", errors="strict").strip()
        if not secret:
            raise XapiError("POOL_SECRET_INVALID", str(path), "the file is empty")
        ctx.pool_secret = secret
        return "read"
    ctx.pool_secret = secrets.token_hex(32)
    atomic_write(path, ctx.pool_secret + "\n", mode=0o600)
    return "created (mode 0600)"


def init_licensing(ctx, runner):
    ctx.license = license_mod.read_license(ctx.paths.license)
    lic = ctx.license
    ctx.notes["license"] = {
        "edition": lic.edition,
        "expiry": lic.expiry.isoformat() if lic.expiry else None,
        "expired": lic.expired,
        "restrict_pooling": lic.restrict_pooling,
        "source": lic.source,
    }
    expiry = lic.expiry.isoformat() if lic.expiry else "never"
    state = " (expired)" if lic.expired else ""
    return f"{lic.edition} edition, expires {expiry}{state}, pooling " + (
        "restricted" if lic.restrict_pooling else "allowed")


def log_version_info(ctx, runner):
    # os.uname, not platform.platform(): that one runs `uname -p` in a subprocess
    system = os.uname()
    ctx.log.info("xapi-py %s on Python %s (%s-%s-%s)", VERSION, platform.python_version(),
                 system.sysname, system.release, system.machine)
    for name in sorted(ctx.config):
        ctx.log.info("config %s = %r (%s)", name, ctx.config[name], ctx.config.source(name))
    return f"xapi-py {VERSION}, Python {platform.python_version()}"


def set_signal_handlers(ctx, runner):
    runner.install_signal_handlers()
    return "SIGTERM/SIGINT: ordered stop; SIGHUP: ignored"


def init_random(ctx, runner):
    random.seed(os.urandom(32))
    return "seeded from the kernel"


def setup_db_conf(ctx, runner):
    ctx.db_connections = dbconf.read_db_conf(ctx.paths)
    return ", ".join(
        f"{conn.path.relative_to(ctx.paths.root)} ({conn.mode}"
        f"{', gzip' if conn.compress else ''})" for conn in ctx.db_connections)


def touch_ready_file(ctx, runner):
    touch(ctx.paths.ready_cookie)
    return str(ctx.paths.ready_cookie.relative_to(ctx.paths.root))


def touch_init_complete_file(ctx, runner):
    touch(ctx.paths.init_complete_cookie)
    return str(ctx.paths.init_complete_cookie.relative_to(ctx.paths.root))


def _run_script(ctx, argv):
    """Run a hook with a bounded wait; returns (exit code, last lines of output)."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=SCRIPT_TIMEOUT_S, cwd=ctx.paths.root,
                              env={**os.environ, "XAPI_ROOT": str(ctx.paths.root)})
    except subprocess.TimeoutExpired:
        return None, f"killed after {SCRIPT_TIMEOUT_S:g} s"
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip().splitlines()
    return done.returncode, " | ".join(output[-3:])


def run_startup_script(ctx, runner):
    path = ctx.paths.under(ctx.config["startup-script-hook"])
    if not path.exists():
        return f"no startup script at {path.relative_to(ctx.paths.root)}"
    if not os.access(path, os.X_OK):
        return f"{path.relative_to(ctx.paths.root)} is not executable: not run"
    code, output = _run_script(ctx, [str(path)])
    ctx.log.info("startup script %s exited with %s%s", path, code, f": {output}" if output else "")
    if code != 0:
        raise XapiError("STARTUP_SCRIPT_FAILED", str(path), f"exit code {code}", output)
    return "exit code 0"


def run_master_scripts(ctx, runner):
    """master.d: ``start`` in name order when this host is master, ``stop`` in reverse order
    when it is a slave; only when local.db says they last ran for the other role."""
    becoming_master = ctx.role.is_master
    if ctx.local_db.get_bool(localdb.MASTER_SCRIPTS, False) == becoming_master:
        return "already run for this role: nothing to do"
    directory = ctx.paths.under(ctx.config["master-scripts-dir"])
    scripts = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    verb = "start" if becoming_master else "stop"
    if not becoming_master:
        scripts.reverse()
    results = []
    for script in scripts:
        if not os.access(script, os.X_OK):
            ctx.log.warning("master.d: %s is not executable: skipped", script)
            continue
        code, output = _run_script(ctx, [str(script), verb])
        level = ctx.log.info if code == 0 else ctx.log.warning
        level("master.d: %s %s exited with %s%s", script.name, verb, code,
              f": {output}" if output else "")
        results.append(f"{script.name}={code}")
    ctx.local_db.put(localdb.MASTER_SCRIPTS, becoming_master)
    return f"{verb}: " + (", ".join(results) if results else "no scripts")


def consider_master_transition_alert(ctx, runner):
    """If this host has just become master, say so with a POOL_MASTER_TRANSITION message
    (priority 4, class Host), then clear local.db's flag."""
    if not ctx.local_db.get_bool(localdb.THIS_NODE_JUST_BECAME_MASTER, False):
        return "this host did not just become master"
    host_uuid = ctx.inventory[inventory_mod.INSTALLATION_UUID]
    with ctx.rpc("xapi-db") as db:
        ref = db.call("message.create", "POOL_MASTER_TRANSITION", 4, "Host", host_uuid,
                      f"This host ({host_uuid}) is now the pool master.")
    ctx.local_db.put(localdb.THIS_NODE_JUST_BECAME_MASTER, False)
    return f"POOL_MASTER_TRANSITION message {ref}"
