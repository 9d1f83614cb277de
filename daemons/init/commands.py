"""The record of commands xapi-init has sent, per program, in order (var/run/xapi/commands.json),
so they can be replayed to a program that comes back with a new pid."""

import json

from common.fileutil import atomic_write


class CommandLog:
    def __init__(self, path):
        self.path = path
        self.by_program = {}

    def load(self):
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.by_program = data if isinstance(data, dict) else {}
        return self

    def clear(self):
        self.by_program = {}
        self._save()

    def record(self, program, method, args=(), kwargs=None):
        """Commands are "set" operations: a newer command of the same method replaces the older
        one, so a replay applies each setting once, newest last."""
        entries = [c for c in self.by_program.get(program, []) if c["m"] != method]
        entries.append({"m": method, "a": list(args), "kw": dict(kwargs or {})})
        self.by_program[program] = entries
        self._save()

    def for_program(self, program):
        return list(self.by_program.get(program, []))

    def _save(self):
        # var/run: a run-time record, not fsynced (see common.fileutil.atomic_write)
        atomic_write(self.path, json.dumps(self.by_program, indent=1, sort_keys=True), mode=0o600,
                     durable=False)
