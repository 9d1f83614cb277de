"""The start-up record (var/run/xapi/startup.json): the state of the run and of every step, read
by xapi-ctl and by a restarted xapi-init that resumes where this one stopped."""

import json
import time

from common.fileutil import atomic_write

WAITING, RUNNING, OK, FAILED, SKIPPED, PENDING = (
    "waiting", "running", "ok", "failed", "skipped", "pending")
DONE_STATUSES = (OK, SKIPPED, PENDING)

# run states
RUN_STARTING, RUN_COMPLETE, RUN_FAILED, RUN_EMERGENCY, RUN_STOPPED, RUN_RESTARTING = (
    "starting", "complete", "failed", "emergency", "stopped", "restarting")


class Progress:
    def __init__(self, path):
        self.path = path
        self.data = {}

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
        self.save()

    def set_state(self, state, **fields):
        self.data["state"] = state
        self.data.update(fields)
        self.save()

    def program_started(self, name):
        if name not in self.data["programs_started"]:
            self.data["programs_started"].append(name)
            self.save()

    def save(self):
        atomic_write(self.path, json.dumps(self.data, indent=1), mode=0o644)
