"""xapi-liveness: guest liveness and hypervisor events (process skeleton; the xapi-liveness issue)."""

import sys

from common.daemon import Daemon


class LivenessDaemon(Daemon):
    """Guest liveness and the hypervisor events thread. Serves sys.health, sys.stats and sys.set_role; the watches come with the xapi-liveness issue."""

    program = "xapi-liveness"


def main(argv=None):
    return LivenessDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
