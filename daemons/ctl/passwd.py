"""`xapi-ctl passwd USER`: set a XenAPI password (logins over TCP) in etc/xapi-users.

The password is one line of standard input when it is not a terminal (its trailing newline
stripped), else asked twice with getpass. The file is rewritten atomically (temp, fsync,
rename), mode 0600; xapi-api reads it at each login, so the password counts at once."""

import sys

from daemons.ctl.tree import CtlError

# getpass and daemons.api.users (hashlib, hmac) are imported by the command that uses them:
# every other call of xapi-ctl, `up` among them, would load them for nothing.


def read_password(stdin=None):
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        line = stdin.readline()
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        return line
    import getpass
    first = getpass.getpass("New XenAPI password: ")
    if getpass.getpass("Again: ") != first:
        raise CtlError("the two passwords differ; nothing changed")
    return first


def cmd_passwd(paths, args, out=print):
    """Set the XenAPI password of USER (read from standard input when it is not a terminal)."""
    from daemons.api import users
    try:
        users.check_user_name(args.user)
        password = read_password()
        users.set_password(paths.api_users, args.user, password)
    except ValueError as exc:
        raise CtlError(f"passwd: {exc}; nothing changed") from None
    except OSError as exc:
        raise CtlError(f"passwd: cannot write {paths.api_users}: {exc}") from None
    out(f"password of {args.user} set in {paths.api_users}")
    return 0


def add_parser(sub, add):
    p = add("passwd", cmd_passwd)
    p.add_argument("user", metavar="USER")
    return p
