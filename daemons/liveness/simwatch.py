"""The simulated hypervisor's change notification for xapi-liveness: its generation, followed
without busy polling. Every change of the sim ends by replacing ``var/lib/xensim/generation``
(common/platform/xensim.py), so an inotify watch on the directory wakes us for exactly that
file. One SimChanges serves every consumer of the daemon (the events thread now, guest liveness
later, which also needs a timer: the agents' heartbeats are computed on read).

Without the directory (before xapi-init created it) or without inotify, the generation file is
read every FALLBACK_POLL_S; with the watch, only every CHECK_S as a safeguard."""

import asyncio
import logging

from common.aio import wait_event
from common.errors import XapiError
from daemons.liveness import inotify

FALLBACK_POLL_S = 0.2
CHECK_S = 5.0
_WATCH_MASK = inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE | inotify.IN_CREATE | inotify.IN_ONLYDIR


class SimChanges:
    """The generation of ``sim`` (a XenSim) as last read; ``wait_beyond(seen)`` returns once it
    differs from ``seen`` (it can go down if the sim's files are replaced wholesale)."""

    def __init__(self, sim, log=None, fallback_poll_s=FALLBACK_POLL_S, check_s=CHECK_S):
        self.sim = sim
        self.log = log or logging.getLogger("xapi-liveness")
        self.fallback_poll_s = fallback_poll_s
        self.check_s = check_s
        self.generation = 0
        self.wakeups = 0            # times the generation was read (for sys.stats)
        self.mode = "starting"      # "inotify" or "polling"
        self.error = None           # the last error reading the generation file, if any
        self._inotify = None
        self._wd = None
        self._wake = None
        self._changed = None
        self._task = None
        self._loop = None

    def start(self):
        """Begin following (from a running loop); reads the generation once before returning."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        try:
            self._inotify = inotify.Inotify()
            self._loop.add_reader(self._inotify.fileno(), self._on_inotify)
        except OSError as exc:
            self.log.warning("hypervisor watch: inotify unavailable (%s): reading %s every "
                             "%.1f s", exc, self.sim.generation_file, self.fallback_poll_s)
            self._inotify = None
        self._add_watch()
        self._refresh()
        self._task = self._loop.create_task(self._run())

    async def close(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._inotify is not None:
            self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None

    async def wait_beyond(self, seen, timeout_s):
        """The generation once it is not ``seen``, or after ``timeout_s`` whatever it is."""
        if self.generation != seen:
            return self.generation
        changed = self._changed
        await wait_event(changed, timeout_s)
        return self.generation

    # -- inside ------------------------------------------------------------------------------
    def _add_watch(self):
        """Watch the directory if not yet watched; True when a watch was just added (a change
        made before it is found by reading the generation once more)."""
        if self._inotify is None or self._wd is not None:
            return False
        try:
            self._wd = self._inotify.add_watch(self.sim.directory, _WATCH_MASK)
        except OSError as exc:     # no directory yet: poll until it exists
            if self.mode != "polling":
                self.log.info("hypervisor watch: cannot watch %s yet (%s): reading %s every "
                              "%.1f s", self.sim.directory, exc.strerror,
                              self.sim.generation_file.name, self.fallback_poll_s)
            self.mode = "polling"
            return False
        self.mode = "inotify"
        self.log.info("hypervisor watch: inotify on %s", self.sim.directory)
        return True

    def _on_inotify(self):
        wake = False
        for wd, mask, name in self._inotify.read():
            if mask & inotify.IN_LOST:
                if wd == self._wd and mask & (inotify.IN_IGNORED | inotify.IN_DELETE_SELF
                                              | inotify.IN_MOVE_SELF):
                    self._wd = None            # the directory went: watch it again when back
                wake = True
            elif name == self.sim.generation_file.name:
                wake = True
        if wake:
            self._wake.set()

    async def _run(self):
        while True:
            if self._add_watch():
                self._refresh()
            timeout_s = self.check_s if self._wd is not None else self.fallback_poll_s
            await wait_event(self._wake, timeout_s)
            self._wake.clear()
            self._refresh()

    def _refresh(self):
        """Read the generation file (a few bytes, replaced atomically: no lock needed)."""
        self.wakeups += 1
        try:
            generation = self.sim.generation
        except XapiError as exc:       # SIM_STATE_CORRUPT naming the file: said once
            if str(exc) != self.error:
                self.log.error("hypervisor watch: %s", exc)
            self.error = str(exc)
            return
        if self.error is not None:
            self.log.info("hypervisor watch: %s readable again", self.sim.generation_file)
            self.error = None
        if generation != self.generation:
            self.generation = generation
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
