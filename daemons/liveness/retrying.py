"""What the two loops of xapi-liveness (the events thread and guest liveness) share when a pass
fails: a state for sys.health, counters, and log lines said once per outage or per distinct
error rather than at every retry."""

import time

from common.errors import XapiError


class Retrying:
    """A mixin. The class sets LABEL (the log prefix), OUTAGE_PLAN (what happens once xapi-db is
    back), ERROR_PLAN (what happens after an error) and RECOVERED (said when a pass succeeds
    after an error); the instance has ``log``, ``state``, ``counts`` (with "outages" and
    "errors"), ``last_error`` and ``_outage_since``."""

    LABEL = ""
    OUTAGE_PLAN = ""
    ERROR_PLAN = "retrying"
    RECOVERED = "checking again"

    def _outage(self, exc):
        self.state = "waiting for xapi-db"
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.counts["outages"] += 1
            self.log.warning("%s: xapi-db does not answer (%s): retrying until it does%s",
                             self.LABEL, exc, self.OUTAGE_PLAN)

    def _failed(self, exc):
        self.state = "retrying after an error"
        self.counts["errors"] += 1
        message = str(exc) if isinstance(exc, XapiError) else f"{type(exc).__name__}: {exc}"
        if message != self.last_error:
            if isinstance(exc, XapiError):
                self.log.error("%s: %s; %s", self.LABEL, message, self.ERROR_PLAN)
            else:
                self.log.exception("%s: unexpected error; %s", self.LABEL, self.ERROR_PLAN)
        self.last_error = message

    def _recovered(self):
        if self._outage_since is not None:
            self.log.info("%s: xapi-db answers again after %.1f s", self.LABEL,
                          time.monotonic() - self._outage_since)
            self._outage_since = None
        if self.last_error is not None:
            self.log.info("%s: %s after the error (%s)", self.LABEL, self.RECOVERED,
                          self.last_error)
            self.last_error = None
