"""xapi-db: the pool database engine (process skeleton; the engine is the xapi-db issue)."""

from common.daemon import Daemon


class DbDaemon(Daemon):
    """The pool database engine. Serves sys.health, sys.stats and sys.set_role; the engine itself is built by the xapi-db issue."""

    program = "xapi-db"


main = DbDaemon.main
