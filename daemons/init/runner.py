"""The step runner: runs the table for the host's role, in order, records each step's result,
resumes after a crash of xapi-init, and enters emergency mode on a broken host."""

import asyncio
import contextvars
import logging
import random
import signal
import time

from common.daemon import current_task
from common.errors import StepFailed, XapiError
from daemons.init import actions, dbsync, platform_steps
from daemons.init import network_steps, storage_steps, template_steps
from daemons.init import progress as pr
from daemons.init.steps import STEPS, Command, Local, StartProgram, steps_for

log = logging.getLogger("xapi-init")

EXIT_STEP_FAILED = 2
EXIT_RESTART_ME = 123

# The modules whose functions a Local(name) of the step table may name.
LOCAL_ACTION_MODULES = (actions, platform_steps, dbsync, network_steps, storage_steps,
                        template_steps)


def local_action(name):
    """The function a ``Local(name)`` runs: the one defined under that name in one of
    LOCAL_ACTION_MODULES (a name imported into a module, or defined in two, is refused)."""
    found = [fn for module in LOCAL_ACTION_MODULES
             if callable(fn := getattr(module, name, None))
             and getattr(fn, "__module__", None) == module.__name__]
    if len(found) != 1:
        where = ", ".join(module.__name__ for module in LOCAL_ACTION_MODULES)
        raise LookupError(f"local action {name!r}: defined {len(found)} time(s) in {where}")
    return found[0]


class Runner:
    def __init__(self, ctx, programs, progress):
        self.ctx = ctx
        self.programs = programs
        self.progress = progress
        self.background = set()
        self.loop = None

    # -- what steps call back -------------------------------------------------------------
    def install_signal_handlers(self):
        """Called from a step's worker thread: the handlers go in from the loop's thread."""
        def install():
            self.loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored"))
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.loop.call_soon_threadsafe(install)

    # -- actions --------------------------------------------------------------------------
    async def perform(self, action):
        ctx = self.ctx
        if isinstance(action, Local):
            fn = local_action(action.fn)
            # in the step's context, so its log lines name the step ([task] in the log)
            return await asyncio.get_running_loop().run_in_executor(
                self.programs.executor, contextvars.copy_context().run, fn, ctx, self)
        if isinstance(action, StartProgram):
            pid = await self.programs.start_and_wait(action.program, ctx.config["ready-timeout"])
            self.progress.program_started(action.program)
            role = ctx.role
            await self.programs.send(action.program, "sys.set_role",
                                     (role.kind, role.master_address))
            return f"{action.program} ready (pid {pid})"
        if isinstance(action, Command):
            if action.only_if and not getattr(actions, action.only_if)(ctx):
                return f"{action.program} {action.method}: not needed"
            result = await self.programs.send(action.program, action.method, action.args,
                                              timeout_s=action.timeout_s, record=action.replay)
            return describe_result(action, result)
        raise TypeError(f"unknown action {action!r}")

    async def run_step(self, index, step):
        token = current_task.set(step.name)
        started = time.time()
        self.progress.mark(index, pr.RUNNING, started_at=started, error=None)
        log.info("task [%s] started", step.name)
        try:
            notes = []
            for action in step.actions:
                note = await self.perform(action)
                if note:
                    notes.append(note)
            status = pr.PENDING if step.pending else pr.OK
            duration = time.time() - started
            note = "; ".join(notes) or None
            self.progress.mark(index, status, duration_s=round(duration, 4), note=note)
            log.info("task [%s] %s in %.3f s%s", step.name, status, duration,
                     f": {note}" if note else "")
            if step.pending:
                log.info("task [%s] pending: %s", step.name, step.pending)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            duration = time.time() - started
            error = str(exc) if isinstance(exc, XapiError) else f"{type(exc).__name__}: {exc}"
            self.progress.mark(index, pr.FAILED, duration_s=round(duration, 4), error=error)
            if step.no_exn:
                log.warning("task [%s] failed (ignored, no_exn) in %.3f s: %s", step.name,
                            duration, error)
                return True
            log.error("task [%s] failed in %.3f s: %s", step.name, duration, error)
            raise StepFailed(step.name, error) from None
        finally:
            current_task.reset(token)

    # -- the table ------------------------------------------------------------------------
    async def run(self, resume):
        """Run (or resume) the table. Returns None once start-up is complete, or an exit code."""
        self.loop = asyncio.get_running_loop()
        role = self.ctx.role.kind
        selected = {step.name for step in steps_for(role)}
        for index, step in enumerate(STEPS):
            entry = self.progress.step(index)
            if step.name not in selected:
                if entry["status"] != pr.SKIPPED:
                    reason = "emergency mode" if role == "broken" else f"not run on a {role}"
                    self.progress.mark(index, pr.SKIPPED, note=reason)
                continue
            if resume and entry["status"] in pr.DONE_STATUSES and not step.rerun_on_resume:
                continue
            if step.on_thread:
                task = asyncio.get_running_loop().create_task(self._background(index, step))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
                continue
            try:
                await self.run_step(index, step)
            except StepFailed as exc:
                self.progress.set_state(pr.RUN_FAILED, error=exc.params[1],
                                        failed_step=step.name)
                return EXIT_STEP_FAILED
        if role == "broken":
            return await self.emergency(self.ctx.role.reason or "pool.conf says broken")
        self.progress.set_state(pr.RUN_COMPLETE, completed_at=time.time(), error=None,
                                failed_step=None)
        log.info("start-up complete")
        return None

    async def _background(self, index, step):
        try:
            await self.run_step(index, step)
        except StepFailed as exc:
            log.error("background task [%s] failed: %s", step.name, exc)

    async def emergency(self, reason):
        """xapi's emergency mode: the API refuses all but the emergency calls, the ready file is
        touched so init scripts go on, and after a delay xapi-init restarts to try again."""
        error = ["HOST_BROKEN"] if self.ctx.role.is_broken else ["HOST_STILL_BOOTING"]
        log.error("entering emergency mode: %s", reason)
        try:
            await self.programs.send("xapi-api", "api.set_boot_state", ("emergency", error))
        except XapiError as exc:
            log.error("could not tell xapi-api about emergency mode: %s", exc)
        actions.touch_ready_file(self.ctx, self)
        delay_s = self.ctx.config["emergency-restart-delay"] + random.uniform(0, 120)
        self.progress.set_state(pr.RUN_EMERGENCY, error=f"{' '.join(error)}: {reason}",
                                restart_in_s=round(delay_s, 1))
        await asyncio.sleep(delay_s)
        self.progress.set_state(pr.RUN_RESTARTING)
        return EXIT_RESTART_ME


def describe_result(action, result):
    """A command's result for the step's status line: a dict as key=value pairs."""
    if isinstance(result, dict):
        shown = ", ".join(f"{k}={v}" for k, v in sorted(result.items()) if not isinstance(v, (dict, list)))
        return f"{action.program} {action.method}: {shown}" if shown else f"{action.program} {action.method}"
    return f"{action.program} {action.method}"
