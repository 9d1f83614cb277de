"""mailer.state: the event token up to which xapi-mailer has taken messages in (all of them
are in the outbox or were not to be mailed) and the repeat windows. Written temp + fsync +
rename after each batch's outbox files, so a restart catches up from it and skips nothing."""

import json

from common.errors import ConfigError
from common.fileutil import atomic_write

VERSION = 1


class MailerState:
    def __init__(self, path):
        self.path = path
        self.token = None
        self.generation = 0
        self.windows = {}     # (name, cls, obj_uuid) -> time

    @property
    def exists(self):
        return self.path.exists()

    def load(self):
        """Read the file; a missing one leaves the state empty (False); a bad one is a
        ConfigError naming the file and what is wrong."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError(f"expected a JSON object with version {VERSION}")
            token = doc["token"]
            generation = doc["generation"]
            if not isinstance(token, str) or not isinstance(generation, int):
                raise ValueError("token must be a string and generation an integer")
            windows = {}
            for item in doc.get("windows", []):
                name, cls, obj_uuid, when = item
                windows[(str(name), str(cls), str(obj_uuid))] = float(when)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not a valid mailer state: {exc}", path=self.path) from None
        self.token, self.generation, self.windows = token, generation, windows
        return True

    def save(self):
        doc = {"version": VERSION, "token": self.token, "generation": self.generation,
               "windows": [[*key, when] for key, when in sorted(self.windows.items())]}
        atomic_write(self.path, json.dumps(doc, separators=(",", ":")), mode=0o600)


def message_generation(token):
    """The message half of an event token ``"%020d,%020d"``."""
    _, sep, half = str(token).partition(",")
    if not sep:
        raise ValueError(f"not an event token: {token!r}")
    return int(half)
