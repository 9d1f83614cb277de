"""xapi-api: the XenAPI front (process skeleton and boot state; the HTTP server is the API issue)."""

import sys

from common.daemon import Daemon
from common.errors import XapiError

BOOT_STATES = ("booting", "ready", "emergency")


class ApiDaemon(Daemon):
    """The XenAPI front. Holds the host's boot state, which xapi-init sends as a command; the
    listeners and methods come with the xapi-api issue."""

    program = "xapi-api"

    def __init__(self, argv=None):
        super().__init__(argv)
        self.boot_state = "booting"
        self.boot_error = ["HOST_STILL_BOOTING"]

    async def setup(self):
        self.register("api.set_boot_state", self.set_boot_state, command=True)

    def set_boot_state(self, state, error=None):
        """Command: ``booting``, ``ready`` or ``emergency`` with the XenAPI error that every call
        outside the emergency list answers with."""
        if state not in BOOT_STATES:
            raise XapiError("INVALID_VALUE", "boot_state", state)
        self.boot_state = state
        if state == "ready":
            self.boot_error = None
        else:
            self.boot_error = list(error) if error else ["HOST_STILL_BOOTING"]
        self.log.info("boot state is now %s%s", state,
                      f" ({' '.join(self.boot_error)})" if self.boot_error else "")
        return True

    def health(self):
        health = super().health()
        health["boot_state"] = self.boot_state
        health["boot_error"] = self.boot_error
        return health


def main(argv=None):
    return ApiDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
