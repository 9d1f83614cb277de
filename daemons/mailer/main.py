"""xapi-mailer: message e-mailing (process skeleton; the xapi-mailer issue)."""

import sys

from common.daemon import Daemon


class MailerDaemon(Daemon):
    """Message e-mailing. Serves sys.health, sys.stats and sys.set_role; SMTP delivery comes with the xapi-mailer issue."""

    program = "xapi-mailer"


def main(argv=None):
    return MailerDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
