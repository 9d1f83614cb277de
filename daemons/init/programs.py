"""The programs xapi-init manages: starting them and waiting for READY, sending and replaying
commands, the watchdog, retries of programs supervisord left FATAL, operator stops."""

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field

from common import supervisor as sv
from common.errors import XapiError
from common.paths import MANAGED_PROGRAMS
from common.rpc import AsyncRpcClient

log = logging.getLogger("xapi-init")

MONITOR_PERIOD_S = 2.0   # supervisord asked for its processes; each pass costs it and us CPU on an idle host
COMMAND_RETRIES = 2
LOG_TAIL_LINES = 8
NUDGE_PERIOD_S = 0.005   # supervisord asked for a restarted program's pid, once the old one exited


@dataclass
class ProgramState:
    name: str
    pid: int | None = None            # supervisord's pid for it
    sv_state: str = sv.UNKNOWN
    ready: bool = False               # READY received and its commands replayed
    ready_pid: int | None = None
    pid_seen_at: float | None = None  # monotonic time the current pid was first seen
    last_status: str = ""
    last_watchdog: float | None = None
    managed: bool = False             # start-up has started it in this run
    operator_stopped: bool = False
    restarts: int = 0
    watchdog_kills: int = 0
    fatal_retries: int = 0
    backoff_exp: int = 0
    next_retry_at: float | None = None
    replays: int = 0
    replaying: bool = False
    last_error: str | None = None
    failed_replay_pid: int | None = None
    waiter: asyncio.Future | None = field(default=None, repr=False)

    def status(self, now, paths):
        info = {
            "name": self.name,
            "state": self.sv_state,
            "ready": self.ready,
            "pid": self.pid,
            "restarts": self.restarts,
            "watchdog_age_s": (round(now - self.last_watchdog, 3)
                               if self.last_watchdog is not None and self.pid else None),
            "watchdog_kills": self.watchdog_kills,
            "fatal_retries": self.fatal_retries,
            "next_retry_in_s": (round(max(0.0, self.next_retry_at - now), 1)
                                if self.next_retry_at is not None else None),
            "operator_stopped": self.operator_stopped,
            "managed": self.managed,
            "last_status": self.last_status,
            "replays": self.replays,
            "last_error": self.last_error,
        }
        if self.managed and not self.ready and not self.operator_stopped:
            info["log_tail"] = log_tail(paths, self.name)
        return info


def open_pidfd(pid):
    """A pidfd of ``pid`` (readable once the process has exited), or None where there is none
    to be had (an old kernel, the process already gone): the caller then polls."""
    try:
        return os.pidfd_open(pid) if pid else None
    except (AttributeError, OSError):
        return None


async def wait_readable(fd, timeout_s):
    """Return once ``fd`` is readable, or after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait([ready], timeout=timeout_s)
    finally:
        loop.remove_reader(fd)


def log_tail(paths, program, lines=LOG_TAIL_LINES):
    """The last lines of a program's log and of its stderr (tracebacks before logging is up)."""
    tail = []
    for path in (paths.log_file(program), paths.err_file(program)):
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        tail.extend(f"{path.name}: {line}" for line in text[-lines:])
    return tail


class ProgramManager:
    def __init__(self, paths, config, supervisor, commands, executor, persist):
        self.paths = paths
        self.config = config
        self.supervisor = supervisor
        self.commands = commands
        self.executor = executor
        self.persist = persist            # called when counters or operator stops change
        self.states = {name: ProgramState(name) for name in MANAGED_PROGRAMS}
        self.clients = {}
        self._tasks = set()
        self._ready_waiters = []

    # -- plumbing ----------------------------------------------------------------------
    async def sv(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def client(self, name):
        if name not in self.clients:
            self.clients[name] = AsyncRpcClient(self.paths.rpc_endpoint(name))
        return self.clients[name]

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def state(self, name):
        if name not in self.states:
            raise XapiError("UNKNOWN_PROGRAM", name, ", ".join(MANAGED_PROGRAMS))
        return self.states[name]

    # -- notifications ----------------------------------------------------------------
    def on_notify(self, pid, fields):
        name = fields.get("X_XAPI_NAME")
        st = self.states.get(name)
        if st is None:
            log.warning("notify: message from pid %d without a known program name (%r): dropped",
                        pid, name)
            return
        if pid == st.pid:
            self._apply_notification(st, pid, fields)
        else:
            self._spawn(self._verify_then_apply(st, pid, fields))

    async def _verify_then_apply(self, st, pid, fields):
        await self.refresh(st.name)
        if pid != st.pid:
            log.warning("notify: pid %d claims to be %s but supervisord runs it as pid %s: "
                        "dropped", pid, st.name, st.pid)
            return
        self._apply_notification(st, pid, fields)

    def _apply_notification(self, st, pid, fields):
        now = time.monotonic()
        if "STATUS" in fields:
            st.last_status = fields["STATUS"]
        if fields.get("WATCHDOG") == "1" or fields.get("READY") == "1":
            st.last_watchdog = now
        if fields.get("STOPPING") == "1":
            st.ready = False
        if fields.get("READY") == "1":
            self._on_ready(st, pid)

    def _on_ready(self, st, pid):
        st.backoff_exp = 0
        st.next_retry_at = None
        if st.waiter is not None and not st.waiter.done():
            self._mark_ready(st, pid)
            st.waiter.set_result(pid)
            log.info("%s is ready (pid %d)", st.name, pid)
            return
        if pid == st.ready_pid:
            return
        if st.ready_pid is not None:
            st.restarts += 1
            self.persist()
        log.info("%s announced READY with a new pid %d: replaying its commands", st.name, pid)
        st.ready = False
        self._spawn(self.replay(st.name, pid))

    # -- supervisord view ---------------------------------------------------------------
    async def refresh(self, name=None):
        try:
            infos = await self.sv(self.supervisor.all_info)
        except XapiError as exc:
            log.warning("supervisord did not answer: %s", exc)
            return
        for info in infos.values():
            self._take_info(info)

    def _take_info(self, info, now=None):
        """supervisord's view of one program: its pid and state."""
        st = self.states.get(info["name"])
        if st is None:
            return
        pid = info["pid"] or None
        if pid != st.pid:
            st.pid, st.pid_seen_at = pid, now or time.monotonic()
            if pid != st.ready_pid:
                st.ready = False
        st.sv_state = info["statename"]
        if st.sv_state not in sv.RUNNING_STATES:
            st.ready = False

    # -- actions ------------------------------------------------------------------------
    async def start_and_wait(self, name, timeout_s):
        """Start ``name`` and wait for its READY; fail naming the program and why."""
        st = self.state(name)
        if st.operator_stopped:
            raise XapiError("PROGRAM_STOPPED_BY_OPERATOR", name, f"run: xapi-ctl start {name}")
        st.managed = True
        st.ready = False
        loop = asyncio.get_running_loop()
        st.waiter = loop.create_future()
        try:
            await self.sv(self.supervisor.start, name, False)
            deadline = loop.time() + timeout_s
            while not st.waiter.done():
                left = deadline - loop.time()
                if left <= 0:
                    raise self._not_ready_error(st, f"did not report READY within {timeout_s:g} s")
                await asyncio.wait([st.waiter], timeout=min(left, MONITOR_PERIOD_S))
                if not st.waiter.done():
                    await self.refresh()
                    if st.sv_state == sv.FATAL:
                        raise self._not_ready_error(st, "exited at every start (FATAL)")
            return st.waiter.result()
        finally:
            st.waiter = None
            self.persist()

    def _not_ready_error(self, st, what):
        tail = log_tail(self.paths, st.name, 4)
        detail = f"{st.name} {what}; supervisord state {st.sv_state}"
        if st.last_status:
            detail += f", last STATUS '{st.last_status}'"
        if tail:
            detail += "; last log lines: " + " / ".join(tail)
        return XapiError("DAEMON_NOT_READY", st.name, detail)

    async def send(self, name, method, args=(), kwargs=None, timeout_s=None, record=True):
        """Send a command and record it for replay."""
        if record:
            self.commands.record(name, method, args, kwargs)
        timeout_s = timeout_s or self.config["command-timeout"]
        return await self.client(name).call(method, *args, timeout_s=timeout_s,
                                            retries=COMMAND_RETRIES, **(kwargs or {}))

    async def replay(self, name, pid):
        st = self.state(name)
        if st.replaying:
            return
        st.replaying = True
        try:
            for cmd in self.commands.for_program(name):
                await self.client(name).call(cmd["m"], *cmd["a"], retries=COMMAND_RETRIES,
                                             timeout_s=self.config["command-timeout"], **cmd["kw"])
            self._mark_ready(st, pid)
            st.last_error = None
            st.failed_replay_pid = None
            st.last_watchdog = time.monotonic()
            st.replays += 1
            log.info("%s is ready again (pid %d): %d command(s) replayed", name, pid,
                     len(self.commands.for_program(name)))
        except XapiError as exc:
            st.last_error = f"replay failed: {exc}"
            st.failed_replay_pid = pid
            log.error("%s: replay of its commands failed: %s", name, exc)
        finally:
            st.replaying = False

    async def adopt(self, names):
        """After xapi-init itself restarted: take over the programs that run and answer
        sys.health, without restarting them; replay what a program lacks."""
        await self.refresh()
        for name in names:
            st = self.state(name)
            st.managed = True
            # STARTING too: a program still inside supervisord's startsecs may well have
            # announced READY to the xapi-init that died; it will not announce it again.
            if st.operator_stopped or st.sv_state not in (sv.STARTING, sv.RUNNING) or not st.pid:
                continue
            try:
                health = await self.client(name).call("sys.health", timeout_s=3.0, retries=1)
            except XapiError as exc:
                log.warning("adopt: %s does not answer sys.health (%s)", name, exc)
                continue
            if health.get("pid") != st.pid:
                continue
            applied = {c["m"] for c in health.get("applied", [])}
            wanted = {c["m"] for c in self.commands.for_program(name)}
            st.last_watchdog = time.monotonic()
            if wanted - applied:
                log.info("adopt: %s lacks %s: replaying", name, ", ".join(sorted(wanted - applied)))
                st.ready_pid = None
                await self.replay(name, st.pid)
            else:
                self._mark_ready(st, st.pid)
                log.info("adopt: %s (pid %d) is running and configured", name, st.pid)

    async def restart(self, name, timeout_s):
        """Stop and start ``name``; return once it is ready again (READY and replay)."""
        st = self.state(name)
        if not st.managed:
            raise XapiError("PROGRAM_NOT_STARTED", name, "start-up has not reached it yet")
        old_pid = st.pid
        st.operator_stopped = False
        self.persist()
        # opened before the signal, so it is this process whose exit is awaited
        exit_fd = open_pidfd(old_pid) if st.sv_state == sv.RUNNING else None
        try:
            if st.sv_state == sv.RUNNING and await self._signal_quietly(name, "TERM"):
                # One hop: SIGTERM (an orderly exit) and supervisord's autorestart starts it
                # again at once, with no stop-then-start round trips through its XML-RPC waits.
                await self._nudge_until_respawned(name, old_pid, exit_fd)
            else:
                await self.sv(self.supervisor.stop, name, True)
                await self.sv(self.supervisor.start, name, False)
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
        return await self._wait_ready(st, old_pid, timeout_s)

    async def _nudge_until_respawned(self, name, old_pid, exit_fd=None, timeout_s=2.0):
        """supervisord reaps a child on its next loop turn, which may be up to a second away
        when the child's pipes closed a moment before it was gone; a request is such a turn.
        Wait for the old process to exit (its pidfd turns readable), then ask for the
        program's state every NUDGE_PERIOD_S until it runs with a new pid (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if exit_fd is not None:
            await wait_readable(exit_fd, timeout_s)
        while loop.time() < deadline:
            try:
                info = await self.sv(self.supervisor.info, name)
            except XapiError:
                return
            if info["pid"] and info["pid"] != old_pid:
                # known now: its READY is taken at once, with no other question to supervisord
                self._take_info(info)
                return
            await asyncio.sleep(NUDGE_PERIOD_S)

    async def _signal_quietly(self, name, signame):
        try:
            await self.sv(self.supervisor.signal, name, signame)
            return True
        except XapiError as exc:          # not running after all: the caller starts it
            log.info("signal %s to %s: %s", signame, name, exc)
            return False

    async def start(self, name, timeout_s):
        st = self.state(name)
        st.operator_stopped = False
        st.managed = True
        self.persist()
        await self.refresh()
        if st.ready:
            return st.pid
        old_pid = st.pid
        await self.sv(self.supervisor.start, name, False)
        return await self._wait_ready(st, old_pid, timeout_s)

    async def stop(self, name):
        """An operator stop: no watchdog action, no retry, no replay until ``start``."""
        st = self.state(name)
        st.operator_stopped = True
        st.ready = False
        st.next_retry_at = None
        self.persist()
        await self.sv(self.supervisor.stop, name, True)
        await self.refresh()
        log.info("%s stopped by the operator", name)

    async def _wait_ready(self, st, old_pid, timeout_s):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not (st.ready and st.ready_pid and st.ready_pid != old_pid):
            left = deadline - loop.time()
            if left <= 0:
                raise self._not_ready_error(st, f"was not ready again within {timeout_s:g} s")
            waiter = loop.create_future()
            self._ready_waiters.append(waiter)
            await asyncio.wait([waiter], timeout=min(left, MONITOR_PERIOD_S))
        return st.ready_pid

    def _mark_ready(self, st, pid):
        st.ready, st.ready_pid = True, pid
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def stop_all(self, order):
        # One question first: a fresh start-up finds them all stopped, and seven stop calls
        # (each a round trip through supervisord) would delay its first step for nothing.
        try:
            infos = await self.sv(self.supervisor.all_info)
        except XapiError:
            infos = {}
        for name in order:
            st = self.states[name]
            if infos.get(name, {}).get("statename") in (sv.STOPPED, sv.FATAL):
                st.ready = False      # neither is started again by supervisord on its own
                continue
            try:
                await self.sv(self.supervisor.stop, name, True)
                log.info("stopped %s", name)
            except XapiError as exc:
                log.error("stopping %s failed: %s", name, exc)
            st.ready = False

    # -- the monitor: watchdog and FATAL retries -----------------------------------------
    async def monitor(self):
        while True:
            await asyncio.sleep(MONITOR_PERIOD_S)
            try:
                await self.refresh()
                await self._check_all()
            except Exception:
                log.exception("monitor pass failed")

    async def _check_all(self):
        now = time.monotonic()
        timeout_s = self.config["watchdog-timeout"]
        ready_timeout_s = self.config["ready-timeout"]
        for st in self.states.values():
            if not st.managed or st.operator_stopped:
                continue
            if st.sv_state == sv.RUNNING and st.pid:
                silent_s = now - (st.last_watchdog or st.pid_seen_at or now)
                if st.ready and silent_s > timeout_s:
                    await self._watchdog_kill(st, f"no WATCHDOG=1 for {silent_s:.1f} s")
                elif (not st.ready and st.waiter is None and not st.replaying
                      and st.pid_seen_at and now - st.pid_seen_at > ready_timeout_s
                      and st.ready_pid != st.pid):
                    await self._watchdog_kill(st, f"no READY within {ready_timeout_s:g} s")
                elif not st.ready and not st.replaying and st.failed_replay_pid == st.pid:
                    self._spawn(self.replay(st.name, st.pid))
            elif st.sv_state == sv.FATAL:
                self._retry_fatal(st, now)

    async def _watchdog_kill(self, st, why):
        st.watchdog_kills += 1
        st.ready = False
        self.persist()
        log.error("watchdog: %s (pid %s) %s: killing it for a restart", st.name, st.pid, why)
        try:
            await self.sv(self.supervisor.signal, st.name, "KILL")
        except XapiError as exc:
            log.error("watchdog: could not kill %s: %s", st.name, exc)
        st.last_watchdog = None
        st.pid_seen_at = time.monotonic()

    def _retry_fatal(self, st, now):
        cap_s = self.config["restart-backoff-max"]
        if st.next_retry_at is None:
            delay_s = min(cap_s, 2.0 ** st.backoff_exp) * random.uniform(0.8, 1.2)
            st.next_retry_at = now + delay_s
            log.warning("%s is FATAL in supervisord: retry %d in %.1f s", st.name,
                        st.fatal_retries + 1, delay_s)
            return
        if now < st.next_retry_at:
            return
        st.fatal_retries += 1
        st.backoff_exp = min(st.backoff_exp + 1, 16)
        st.next_retry_at = None
        self.persist()
        log.info("%s: retry %d", st.name, st.fatal_retries)
        self._spawn(self._start_quietly(st.name))

    async def _start_quietly(self, name):
        try:
            await self.sv(self.supervisor.start, name, False)
        except XapiError as exc:
            log.warning("retry of %s: %s", name, exc)

    def status(self):
        now = time.monotonic()
        return [st.status(now, self.paths) for st in self.states.values()]

    # -- persistence of counters and operator stops ---------------------------------------
    def export(self):
        return {name: {"operator_stopped": st.operator_stopped, "restarts": st.restarts,
                       "watchdog_kills": st.watchdog_kills, "fatal_retries": st.fatal_retries,
                       "managed": st.managed}
                for name, st in self.states.items()}

    def import_(self, saved):
        for name, values in (saved or {}).items():
            st = self.states.get(name)
            if st is None:
                continue
            st.operator_stopped = bool(values.get("operator_stopped"))
            st.restarts = int(values.get("restarts", 0))
            st.watchdog_kills = int(values.get("watchdog_kills", 0))
            st.fatal_retries = int(values.get("fatal_retries", 0))
