"""xapi-ha: the HA monitor (process skeleton; HA is built by a later issue)."""

from common.daemon import Daemon


class HaDaemon(Daemon):
    """The HA monitor. Serves sys.health, sys.stats and sys.set_role; heartbeats, statefile and fencing come with the HA issue."""

    program = "xapi-ha"


main = HaDaemon.main
