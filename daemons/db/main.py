"""xapi-db: the pool database engine (process skeleton; the engine is the xapi-db issue)."""

import sys

from common.daemon import Daemon


class DbDaemon(Daemon):
    """The pool database engine. Serves sys.health, sys.stats and sys.set_role; the engine itself is built by the xapi-db issue."""

    program = "xapi-db"


def main(argv=None):
    return DbDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
