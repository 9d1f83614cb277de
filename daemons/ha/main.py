"""xapi-ha: the HA monitor (process skeleton; HA is built by a later issue)."""

import sys

from common.daemon import Daemon


class HaDaemon(Daemon):
    """The HA monitor. Serves sys.health, sys.stats and sys.set_role; heartbeats, statefile and fencing come with the HA issue."""

    program = "xapi-ha"


def main(argv=None):
    return HaDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
