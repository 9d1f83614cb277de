"""xapi-periodic: the periodic scheduler (process skeleton; jobs are the xapi-periodic issue)."""

from common.daemon import Daemon


class PeriodicDaemon(Daemon):
    """The periodic scheduler. Serves sys.health, sys.stats and sys.set_role; the jobs come with the xapi-periodic issue."""

    program = "xapi-periodic"


main = PeriodicDaemon.main
