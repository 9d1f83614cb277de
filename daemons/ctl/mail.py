"""`xapi-ctl mail test|queue`: xapi-mailer from the command line."""

import json
import time

from daemons.ctl.tree import call_program

MAIL_CALL_TIMEOUT_S = 60.0


def cmd_mail(paths, args, out=print):
    """Send a test e-mail with the pool's mail settings, or list xapi-mailer's outbox."""
    if args.mail_command == "test":
        return _test(paths, args, out)
    return _queue(paths, args, out)


def _test(paths, args, out):
    """Send a test e-mail now (to the pool's mail-destination, or --to); fails saying why."""
    result = call_program(paths, "xapi-mailer", "mail.test", args.to,
                          timeout_s=MAIL_CALL_TIMEOUT_S)
    how = " with STARTTLS" if result["starttls"] else (" over TLS" if result["tls"] else "")
    if result["login"]:
        how += f", logged in as {result['login']}"
    out(f"test e-mail {result['message_id']} from {result['from']} to "
        f"{', '.join(result['to'])} accepted by {result['mailhub']}{how}")
    if result["refused"]:
        out(f"refused recipients: {', '.join(result['refused'])}")
        return 1
    return 0


def _queue(paths, args, out):
    """The outbox: what is waiting, since when, how often it was tried and the last error."""
    result = call_program(paths, "xapi-mailer", "mail.queue", timeout_s=MAIL_CALL_TIMEOUT_S)
    if args.json:
        out(json.dumps(result, indent=1, sort_keys=True))
        return 0
    state = "following new messages" if result["following"] else "not following (not started, "\
        "or not the master)"
    out(f"outbox: {result['count']} entr{'y' if result['count'] == 1 else 'ies'} (cap "
        f"{result['cap']}, {result['shed']} shed since start); {state}")
    if result["held_for_s"]:
        out(f"delivery held for {result['held_for_s']:.1f} s more after: {result['last_error']}")
    for item in result["entries"]:
        line = (f"  {item['seq']:>6} {item['kind']:<4} {item['name']} (priority "
                f"{item['priority']}) {item['cls']} {item['obj_uuid']} message "
                f"{item['message_uuid']}, queued {_age(item['age_s'])} ago")
        if item.get("repeats"):
            line += f", {item['repeats']} repeat(s)"
        if item["in_flight"]:
            line += ", being delivered"
        elif item["attempts"]:
            line += (f", {item['attempts']} attempt(s), next in "
                     f"{item['next_attempt_in_s']:.1f} s, last error: {item['last_error']}")
        elif item["next_attempt_in_s"]:
            line += f", due in {item['next_attempt_in_s']:.1f} s"
        out(line)
    return 0


def _age(seconds):
    if seconds < 120:
        return f"{seconds:.1f} s"
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def add_parser(sub, add):
    p = add("mail", cmd_mail)
    msub = p.add_subparsers(dest="mail_command", required=True, metavar="MAIL_COMMAND")
    t = msub.add_parser("test", help=_test.__doc__)
    t.add_argument("--to", help="send to this address instead of the pool's mail-destination")
    q = msub.add_parser("queue", help=_queue.__doc__)
    q.add_argument("--json", action="store_true")
    return p
