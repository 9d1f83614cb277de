"""xapi-liveness: guest liveness and hypervisor events (process skeleton; the xapi-liveness issue)."""

from common.daemon import Daemon


class LivenessDaemon(Daemon):
    """Guest liveness and the hypervisor events thread. Serves sys.health, sys.stats and sys.set_role; the watches come with the xapi-liveness issue."""

    program = "xapi-liveness"


main = LivenessDaemon.main
