"""The start-up record (var/run/xapi/startup.json): the state of the run and of every step, read
by xapi-ctl and by a restarted xapi-init that resumes where this one stopped."""

import asyncio
import json
import time

from common.fileutil import atomic_write

WAITING, RUNNING, OK, FAILED, SKIPPED, PENDING = (
    "waiting", "running", "ok", "failed", "skipped", "pending")
DONE_STATUSES = (OK, SKIPPED, PENDING)

# run states
RUN_STARTING, RUN_COMPLETE, RUN_FAILED, RUN_EMERGENCY, RUN_STOPPED, RUN_RESTARTING = (
    "starting", "complete", "failed", "emergency", "stopped", "restarting")

# A step that starts is written down once it has run this long: most steps end sooner, and
# the write of their end carries it. (Each write is a rename over the file, ~1 ms of the
# orchestrator's loop, twice per step otherwise.)
RUNNING_SAVE_DELAY_S = 0.05


class Progress:
    def __init__(self, path):
        self.path = path
        self.data = {}
        self._dirty = False        # a change not written yet (a step that started)
        self._timer_armed = False

    @classmethod
    def load(cls, path):
        progress = cls(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        progress.data = data if isinstance(data, dict) else {}
        return progress

    def new_run(self, steps, role, supervisor_pid, host_uuid=None):
        self.data = {
            "state": RUN_STARTING,
            "role": role,
            "supervisor_pid": supervisor_pid,
            "host_uuid": host_uuid,
            "started_at": time.time(),
            "completed_at": None,
            "error": None,
            "failed_step": None,
            "programs_started": [],
            "notes": {},
            "steps": [
                {"name": step.name, "role": step.role, "status": WAITING,
                 "started_at": None, "duration_s": None, "error": None, "note": None,
                 "pending": step.pending}
                for step in steps
            ],
        }
        self.save()

    def can_resume(self, role, supervisor_pid):
        return (self.data.get("role") == role
                and self.data.get("supervisor_pid") == supervisor_pid
                and self.data.get("state") in (RUN_STARTING, RUN_COMPLETE, RUN_FAILED)
                and bool(self.data.get("steps")))

    def step(self, index):
        return self.data["steps"][index]

    def mark(self, index, status, **fields):
        entry = self.data["steps"][index]
        entry["status"] = status
        entry.update(fields)
        if status == RUNNING:
            self._save_soon()
        else:
            self.save()

    def set_state(self, state, **fields):
        self.data["state"] = state
        self.data.update(fields)
        self.save()

    def program_started(self, name):
        if name not in self.data["programs_started"]:
            self.data["programs_started"].append(name)
            self.save()

    def _save_soon(self):
        self._dirty = True
        if self._timer_armed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:       # no loop (a caller outside xapi-init's): write it now
            self.save()
            return
        self._timer_armed = True
        loop.call_later(RUNNING_SAVE_DELAY_S, self._save_if_dirty)

    def _save_if_dirty(self):
        self._timer_armed = False
        if self._dirty:
            self.save()

    def save(self):
        self._dirty = False
        # Once or twice per step: compact (the C encoder; indent would take the Python one)
        # and not fsynced (var/run: a run-time record, see common.fileutil.atomic_write).
        atomic_write(self.path, json.dumps(self.data, separators=(",", ":")), mode=0o644,
                     durable=False)
