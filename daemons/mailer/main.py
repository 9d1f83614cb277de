"""xapi-mailer: message e-mailing (process skeleton; the xapi-mailer issue)."""

from common.daemon import Daemon


class MailerDaemon(Daemon):
    """Message e-mailing. Serves sys.health, sys.stats and sys.set_role; SMTP delivery comes with the xapi-mailer issue."""

    program = "xapi-mailer"


main = MailerDaemon.main
