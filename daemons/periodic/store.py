"""var/lib/xcp/periodic.db: the registered jobs and their state, so a restarted scheduler keeps
its jobs and their deadlines.

JSON, one object: ``{"format": FORMAT, "version": 1, "jobs": [{"spec": {...}, "state":
{...}}, ...]}``, written temp + fsync + rename (common.fileutil), mode 0600. A file that cannot
be read as that (bad JSON, a bad job) is renamed aside to ``periodic.db.corrupt-<time>`` with a
log line naming the file and the fault, and the scheduler starts without jobs: nothing is
deleted, and xapi-init's replayed command registers the start-up jobs again.
"""

import json
import logging
import math
import os
import time

from common.errors import XapiError
from common.fileutil import atomic_write, fsync_dir
from daemons.periodic.schedule import SPEC_FIELDS, STATE_FIELDS, check_spec

log = logging.getLogger("xapi-periodic")

FORMAT = "xapi-py periodic.db"
VERSION = 1


class StoreError(ValueError):
    """periodic.db cannot be used; the message names the job and the key."""


def encode(jobs):
    """The file's text for ``jobs`` (Job objects)."""
    entries = [{"spec": job.spec(), "state": job.state()}
               for job in sorted(jobs, key=lambda j: j.name)]
    return json.dumps({"format": FORMAT, "version": VERSION, "jobs": entries}, indent=1,
                      sort_keys=True, allow_nan=False) + "\n"


def _check_state(where, state):
    if not isinstance(state, dict) or set(state) != set(STATE_FIELDS):
        raise StoreError(f"{where}: 'state' must have exactly the keys {', '.join(STATE_FIELDS)}")

    def number(key, optional, integer=False):
        value = state[key]
        if value is None and optional:
            return
        kinds = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
                or value < 0:
            raise StoreError(f"{where}: key 'state.{key}': expected a non-negative "
                             f"{'integer' if integer else 'number'}, got {value!r}")

    number("anchor", False)
    for key in ("index", "runs", "failures", "skipped"):
        number(key, False, integer=True)
    for key in ("last_run", "last_duration_s", "last_lateness_s", "max_lateness_s"):
        number(key, True)
    if not isinstance(state["done"], bool):
        raise StoreError(f"{where}: key 'state.done': expected true or false")
    if state["last_error"] is not None and not isinstance(state["last_error"], str):
        raise StoreError(f"{where}: key 'state.last_error': expected a string or null")


def decode(text):
    """[(spec, state), ...] from the file's text; StoreError naming what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"not a {FORMAT} file (key 'format')")
    if data.get("version") != VERSION:
        raise StoreError(f"key 'version': {data.get('version')!r} is not {VERSION}")
    entries = data.get("jobs")
    if not isinstance(entries, list):
        raise StoreError("key 'jobs': expected a list")
    out, seen = [], set()
    for number, entry in enumerate(entries, 1):
        where = f"job {number}"
        if not isinstance(entry, dict) or set(entry) != {"spec", "state"}:
            raise StoreError(f"{where}: expected the keys spec and state")
        spec = entry["spec"]
        if not isinstance(spec, dict) or set(spec) != set(SPEC_FIELDS):
            raise StoreError(f"{where}: 'spec' must have exactly the keys "
                             f"{', '.join(SPEC_FIELDS)}")
        where = f"job {number} ({spec.get('name')!r})"
        try:
            checked = check_spec(**spec)
        except XapiError as exc:
            raise StoreError(f"{where}: {exc}") from None
        _check_state(where, entry["state"])
        if checked["name"] in seen:
            raise StoreError(f"{where}: a second job of that name")
        seen.add(checked["name"])
        out.append((checked, dict(entry["state"])))
    return out


class Store:
    """The file of one scheduler."""

    def __init__(self, path):
        self.path = path

    def load(self):
        """The saved jobs as [(spec, state)]; [] when there is no file. A file that cannot be
        used is renamed aside (logged), and [] returned."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            self._set_aside(f"cannot read: {exc}")
            return []
        try:
            return decode(text)
        except StoreError as exc:
            self._set_aside(str(exc))
            return []

    def _set_aside(self, why):
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
                                    f"-{os.getpid()}")
        os.rename(self.path, aside)
        fsync_dir(self.path.parent)
        log.error("%s: %s; renamed to %s, starting without saved jobs (xapi-init registers "
                  "the start-up jobs again)", self.path, why, aside)

    def save(self, text):
        """Write ``text`` (from ``encode``) durably: temp + fsync + rename."""
        atomic_write(self.path, text, mode=0o600)
