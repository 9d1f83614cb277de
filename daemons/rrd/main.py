"""xapi-rrd: the metrics monitor (process skeleton; RRDs are the xapi-rrd issue)."""

from common.daemon import Daemon


class RrdDaemon(Daemon):
    """The metrics monitor. Serves sys.health, sys.stats and sys.set_role; the RRD engine comes with the xapi-rrd issue."""

    program = "xapi-rrd"


main = RrdDaemon.main
