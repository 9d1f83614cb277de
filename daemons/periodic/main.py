"""xapi-periodic: the periodic scheduler (process skeleton; jobs are the xapi-periodic issue)."""

import sys

from common.daemon import Daemon


class PeriodicDaemon(Daemon):
    """The periodic scheduler. Serves sys.health, sys.stats and sys.set_role; the jobs come with the xapi-periodic issue."""

    program = "xapi-periodic"


def main(argv=None):
    return PeriodicDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
