"""The mail settings: keys of the pool's other_config, read as xapi's mail-alarm reads them.

``mail-destination`` (needed to mail at all), ``mail-sender`` (default ``noreply@<fqdn>``),
``mail-min-priority`` (default 3: priorities 1..3 are mailed), ``mail-charset`` (default
utf-8), ``mail-inhibit-period`` (seconds, default 3600: repeats of a name for one object are
folded), ``ssmtp-mailhub`` (``host[:port]``, port 25 by default), ``ssmtp-usestarttls``,
``ssmtp-usetls`` (TLS from the first byte), ``ssmtp-authuser``, ``ssmtp-authpass``,
``ssmtp-tls_ca_file`` (a dom0 path: the CA that signs the server's certificate; default: the
system's). A bad value is reported naming the key and the value, and its default is used.
"""

import codecs
import email.utils
import re
from dataclasses import dataclass, field

DEFAULT_MIN_PRIORITY = 3
DEFAULT_INHIBIT_S = 3600.0
DEFAULT_CHARSET = "utf-8"
SMTP_PORT = 25
YES = {"yes", "true", "on", "1"}
NO = {"no", "false", "off", "0", ""}

_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+@[A-Za-z0-9.\-\[\]:]+$")
_HOST = re.compile(r"^[A-Za-z0-9.\-_]+$|^\[[0-9A-Fa-f:.]+\]$")
_CONTROL = re.compile("[\x00-\x1f\x7f]")

PRIORITY_NAMES = {1: "critical", 2: "major", 3: "warning", 4: "minor", 5: "info"}


@dataclass(frozen=True)
class MailSettings:
    destination: tuple = ()
    sender: str = ""
    min_priority: int = DEFAULT_MIN_PRIORITY
    charset: str = DEFAULT_CHARSET
    inhibit_s: float = DEFAULT_INHIBIT_S
    mailhub: tuple | None = None          # (host, port)
    starttls: bool = False
    tls: bool = False
    auth_user: str | None = None
    auth_pass: str | None = field(default=None, repr=False)
    ca_file: str | None = None            # dom0 path
    pool_name: str = ""
    problems: tuple = ()                  # (key, text), for the log

    @property
    def transport_key(self):
        """What an open SMTP connection depends on: a change means a new connection."""
        return (self.mailhub, self.starttls, self.tls, self.auth_user, self.auth_pass,
                self.ca_file)


def parse_addresses(value):
    """-> (addresses, bad): ``a@b, Name <c@d>`` as a list of bare addresses."""
    if _CONTROL.search(value):
        return [], [value]
    good, bad = [], []
    for _name, addr in email.utils.getaddresses([value]):
        if addr and _ADDRESS.match(addr):
            good.append(addr)
        else:
            bad.append(addr or value)
    return good, bad


def parse_mailhub(value):
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); ValueError saying why."""
    text = value.strip()
    if not text:
        raise ValueError("empty")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("expected [address]:port")
        port_text = rest[1:] if rest else ""
        host_ok = bool(_HOST.match(f"[{host}]"))
    else:
        host, _, port_text = text.partition(":")
        host_ok = bool(_HOST.match(host))
    if not host or not host_ok:
        raise ValueError(f"bad host {host!r}")
    if not port_text:
        return host, SMTP_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r}")
    return host, int(port_text)


def _bool(other_config, key, problems):
    value = str(other_config.get(key, "")).strip().lower()
    if value in YES:
        return True
    if value not in NO:
        problems.append((key, f"expected yes or no, got {other_config[key]!r}; using no"))
    return False


def parse(other_config, pool_name="", fqdn="localhost"):
    """The MailSettings of a pool's other_config (a dict of str)."""
    oc = {str(k): str(v) for k, v in (other_config or {}).items()}
    problems = []

    destination, bad = parse_addresses(oc.get("mail-destination", ""))
    if bad:
        problems.append(("mail-destination",
                         f"not an e-mail address: {', '.join(map(repr, bad))}"))

    sender = f"noreply@{fqdn}"
    if "mail-sender" in oc:
        senders, bad = parse_addresses(oc["mail-sender"])
        if len(senders) == 1 and not bad:
            sender = senders[0]
        else:
            problems.append(("mail-sender", f"expected one e-mail address, got "
                                            f"{oc['mail-sender']!r}; using {sender}"))

    min_priority = DEFAULT_MIN_PRIORITY
    if "mail-min-priority" in oc:
        try:
            min_priority = int(oc["mail-min-priority"].strip())
        except ValueError:
            problems.append(("mail-min-priority", f"expected an integer, got "
                                                  f"{oc['mail-min-priority']!r}; using "
                                                  f"{DEFAULT_MIN_PRIORITY}"))

    charset = DEFAULT_CHARSET
    if oc.get("mail-charset", "").strip():
        try:
            charset = codecs.lookup(oc["mail-charset"].strip()).name
        except LookupError:
            problems.append(("mail-charset", f"unknown charset {oc['mail-charset']!r}; "
                                             f"using {DEFAULT_CHARSET}"))

    inhibit_s = DEFAULT_INHIBIT_S
    if "mail-inhibit-period" in oc:
        try:
            inhibit_s = float(oc["mail-inhibit-period"])
            if not 0 <= inhibit_s < 10 ** 9:
                raise ValueError
        except ValueError:
            inhibit_s = DEFAULT_INHIBIT_S
            problems.append(("mail-inhibit-period", f"expected seconds (0 or more), got "
                                                    f"{oc['mail-inhibit-period']!r}; using "
                                                    f"{DEFAULT_INHIBIT_S:g}"))

    mailhub = None
    if oc.get("ssmtp-mailhub", "").strip():
        try:
            mailhub = parse_mailhub(oc["ssmtp-mailhub"])
        except ValueError as exc:
            problems.append(("ssmtp-mailhub", f"expected host[:port], got "
                                              f"{oc['ssmtp-mailhub']!r} ({exc})"))

    return MailSettings(
        destination=tuple(destination), sender=sender, min_priority=min_priority,
        charset=charset, inhibit_s=inhibit_s, mailhub=mailhub,
        starttls=_bool(oc, "ssmtp-usestarttls", problems),
        tls=_bool(oc, "ssmtp-usetls", problems),
        auth_user=oc.get("ssmtp-authuser") or None,
        auth_pass=oc.get("ssmtp-authpass") or None,
        ca_file=oc.get("ssmtp-tls_ca_file") or None,
        pool_name=pool_name, problems=tuple(problems))
