"""xapi-init: the orchestrator. Reads the host's role, runs the start-up step table, brings the
other programs up in order through supervisord with readiness handshakes, keeps them configured
across restarts, and stops them in reverse order."""

import asyncio
import concurrent.futures
import json
import signal
import sys
import time
from pathlib import Path

from common import dbconf, inventory, license as license_mod, logconf, poolconf
from common.aio import wait_event
from common.daemon import EXIT_OK, Daemon
from common.errors import ConfigError, XapiError
from common.fileutil import atomic_write
from common.paths import MANAGED_PROGRAMS, Paths, root_from_env
from common.readiness import Notifier, NotifyReceiver
from common.supervisor import Supervisor
from daemons.init import progress as pr
from daemons.init.commands import CommandLog
from daemons.init.context import HostContext
from daemons.init.control import Control
from daemons.init.programs import ProgramManager
from daemons.init.runner import EXIT_RESTART_ME, Runner
from daemons.init.steps import STEPS, programs_in_start_order

EXIT_ADOPT_ME = 3   # not 0: supervisord restarts it, and the new xapi-init adopts the tree
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def stop_order(role):
    """Reverse start order, with xapi-db last: the others may write to it while they stop."""
    order = list(reversed(programs_in_start_order(role)))
    for name in ("xapi-db",):
        if name in order:
            order.remove(name)
            order.append(name)
    return order


class InitDaemon(Daemon):
    """The start-up orchestrator of the xapi-py tree."""

    program = "xapi-init"
    flags = ("--fresh",)
    ready_when_serving = False
    watchdog = False

    def __init__(self, argv=None):
        super().__init__(argv)
        self.supervisor = Supervisor(self.paths.supervisor_socket)
        self.executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="init")
        self.commands = CommandLog(self.paths.commands_json)
        self.programs = ProgramManager(self.paths, self.config, self.supervisor, self.commands,
                                       self.executor, self.save_state)
        self.role = poolconf.read_role(self.paths.pool_conf)
        self.progress = pr.Progress(self.paths.startup_json)
        self.ctx = None
        self.runner = None
        self.systemd = Notifier("xapi-init")   # whatever NOTIFY_SOCKET xapi-init inherited
        self.init_state = self._load_state()
        self.restart_requested = False

    # -- state that survives a restart of xapi-init ----------------------------------------
    def _load_state(self):
        try:
            return json.loads(self.paths.init_state_json.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def save_state(self):
        self.init_state["programs"] = self.programs.export()
        # var/run: a run-time record, not fsynced (see common.fileutil.atomic_write)
        atomic_write(self.paths.init_state_json, json.dumps(self.init_state, indent=1), 0o600,
                     durable=False)

    # -- preflight: every file checked before any step ------------------------------------
    def preflight(self):
        """Read every file the steps rely on; a bad one stops xapi-init with exit 1 before
        any step runs (pool.conf is never an error: unparsable means broken)."""
        if self.paths.inventory.exists():
            inventory.read_inventory(self.paths.inventory)
        logconf.read_log_levels(self.paths.log_conf)
        dbconf.read_db_conf(self.paths)
        license_mod.read_license(self.paths.license)

    def system_boot(self):
        """True on the first start since the machine booted (the kernel's boot id changed)."""
        try:
            boot_id = BOOT_ID_FILE.read_text().strip()
        except OSError:
            return False
        path = self.paths.run_dir / "boot_id"
        try:
            previous = path.read_text().strip()
        except OSError:
            previous = None
        if previous != boot_id:
            atomic_write(path, boot_id + "\n", mode=0o600)
            return True
        return False

    # -- the main task ----------------------------------------------------------------------
    async def setup(self):
        self.control = Control(self)
        self.control.register()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._exit_for_restart)

    def _exit_for_restart(self):
        """SIGUSR1 (`xapi-ctl restart xapi-init`): exit without stopping the tree; supervisord
        starts xapi-init again and the new one adopts the running programs."""
        self.log.info("SIGUSR1: exiting for a restart; the programs keep running")
        self.restart_requested = True
        self._stop.set()

    async def serve(self):
        loop = asyncio.get_running_loop()
        try:
            self.preflight()
        except ConfigError as exc:
            _record_fatal(self.paths, exc)
            raise
        self.ctx = HostContext(paths=self.paths, config=self.config, role=self.role,
                               args=self.args, log=self.log, system_boot=self.system_boot())
        receiver = NotifyReceiver(self.paths.notify_socket, self.programs.on_notify)
        receiver.start(loop)
        try:
            supervisor_pid = await self.programs.sv(self.supervisor.pid)
        except XapiError as exc:
            raise ConfigError(f"xapi-init must run under supervisord: {exc}")

        previous = pr.Progress.load(self.paths.startup_json)
        resume = (not self.args.fresh) and previous.can_resume(self.role.kind, supervisor_pid)
        self.commands.load()
        if resume:
            self.programs.import_(self.init_state.get("programs"))
            self.init_state["init_restarts"] = int(self.init_state.get("init_restarts", 0)) + 1
            self.save_state()
            self.log.info("xapi-init restarted under the same supervisord as %s: adopting the "
                          "running programs and resuming start-up", self.role)
            await self.programs.adopt(previous.data.get("programs_started", []))
            # Only now does init.status show the run's state: a caller waiting for "complete"
            # (`xapi-ctl restart xapi-init`) must not see it before the programs are adopted.
            self.progress = previous
        else:
            self.log.info("fresh start-up as %s: stopping any managed program first", self.role)
            await self.programs.stop_all(list(reversed(MANAGED_PROGRAMS)))
            self.commands.clear()
            self.init_state = {}
            for cookie in (self.paths.ready_cookie, self.paths.init_complete_cookie):
                cookie.unlink(missing_ok=True)
            self.progress.new_run(STEPS, self.role.kind, supervisor_pid)
            self.save_state()

        await self._delay_after_failures()
        monitor = loop.create_task(self.programs.monitor())
        self.runner = Runner(self.ctx, self.programs, self.progress)
        self.ctx.notes = self.progress.data.setdefault("notes", {})
        run_task = loop.create_task(self.runner.run(resume))
        stop_task = loop.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({run_task, stop_task},
                                         return_when=asyncio.FIRST_COMPLETED)
            if run_task in done:
                code = run_task.result()
                if code is not None:
                    self._count_failure(code)
                    return code
                self._reset_failures()
                self.systemd.ready("start-up complete")
                await stop_task
            else:
                run_task.cancel()
                await asyncio.gather(run_task, return_exceptions=True)
            if self.restart_requested:
                return EXIT_ADOPT_ME
            await self._ordered_stop()
            return EXIT_OK
        finally:
            monitor.cancel()
            receiver.close(loop)
            for client in self.programs.clients.values():
                client.close()

    async def _ordered_stop(self):
        order = stop_order(self.role.kind)
        self.log.info("stopping the tree in order: %s", ", ".join(order))
        self.progress.set_state(pr.RUN_STOPPED, stopped_at=time.time())
        await self.programs.stop_all(order)
        for cookie in (self.paths.ready_cookie, self.paths.init_complete_cookie):
            cookie.unlink(missing_ok=True)

    # -- repeated failures: capped exponential delay before running the table again --------
    async def _delay_after_failures(self):
        failures = int(self.init_state.get("failures", 0))
        if failures <= 0:
            return
        cap_s = self.config["restart-backoff-max"]
        delay_s = min(cap_s, 2.0 ** (failures - 1))
        self.log.warning("start-up failed %d time(s) in a row: waiting %.0f s before trying "
                         "again", failures, delay_s)
        self.progress.set_state(self.progress.data.get("state", pr.RUN_STARTING),
                                retry_in_s=delay_s)
        await wait_event(self._stop, delay_s)     # a stop ends the back-off at once

    def _count_failure(self, code):
        if code == EXIT_RESTART_ME:
            return
        self.init_state["failures"] = int(self.init_state.get("failures", 0)) + 1
        self.save_state()

    def _reset_failures(self):
        self.init_state["failures"] = 0
        self.save_state()

    @classmethod
    def arg_parser(cls):
        parser = super().arg_parser()
        parser.add_argument("--fresh", action="store_true",
                            help="do not resume an earlier run: stop every program and start over")
        return parser

    @classmethod
    def config_error_before_start(cls, argv, exc):
        """Exit codes: 0 stopped cleanly, 1 bad configuration, 2 a step failed, 123 restart me.
        A bad configuration is left in startup.json, where `xapi-ctl up` looks."""
        try:
            args = cls.arg_parser().parse_args(argv)
            _record_fatal(Paths(root_from_env(args.root)), exc)
        except XapiError:
            pass      # no usable ROOT (the error says why): nowhere to record it


def _record_fatal(paths, exc):
    """Leave the configuration error where xapi-ctl looks for start-up results."""
    try:
        data = {"state": pr.RUN_FAILED, "error": str(exc), "failed_step": "configuration",
                "steps": [], "at": time.time()}
        atomic_write(paths.startup_json, json.dumps(data, indent=1), mode=0o644)
    except OSError as write_error:    # the error itself is on stderr already
        print(f"xapi-init: could not record it in {paths.startup_json}: {write_error}",
              file=sys.stderr)


def main(argv=None):
    return InitDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
