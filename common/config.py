"""The one registry of xapi.conf options, and the loader of xapi.conf and xapi.conf.d/*.

Format (as xapi's): ``key = value``; ``#`` starts a comment anywhere on a line (even inside
quotes, as in xapi); whitespace around key and value is trimmed; one pair of surrounding
quotes (single or double) is removed from the value. Precedence, lowest first: the defaults
below < the command line < xapi.conf < xapi.conf.d/* in file-name order. Unknown keys are not
an error: ``Config.unknown_keys`` lists them for the caller to log.
"""

import collections.abc
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError

OPTION_TYPES = ("str", "int", "float", "bool", "list", "path")
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
              "false": False, "no": False, "off": False, "0": False}
_EXPECTED = {
    "str": "a string",
    "path": "a path",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false, yes/no, on/off, 1/0)",
    "list": "a list of names",
}
COMMAND_LINE = "command line"
DEFAULT = "default"


@dataclass(frozen=True)
class Option:
    """One option of xapi.conf: its name, type, default and what it is for."""

    name: str
    type: str  # "str" | "int" | "float" | "bool" | "list" | "path"
    default: object
    description: str

    def __post_init__(self):
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: unknown type {self.type!r}")


_OPTIONS = [
    Option("management-address", "str", "",
           "Address the API listens on and the pool uses to reach this host. Empty: the "
           "address of the inventory's MANAGEMENT_INTERFACE, else 127.0.0.1."),
    Option("localhost-address", "str", "127.0.0.1",
           "Loopback address of this host (each host of a one-machine pool has its own)."),
    Option("http-port", "int", 80, "TCP port of the HTTP API."),
    Option("https-port", "int", 443, "TCP port of the HTTPS API."),
    Option("api-max-body-bytes", "int", 16 * 1024 * 1024,
           "Largest request body the XenAPI accepts; a bigger one gets HTTP 413."),
    Option("api-header-timeout", "float", 10.0,
           "Seconds a client has to send a request's headers once it has started (slow "
           "clients are disconnected), and to send its body."),
    Option("api-keepalive-timeout", "float", 120.0,
           "Seconds an idle keep-alive connection to the XenAPI stays open."),
    Option("api-max-connections", "int", 512,
           "Connections the XenAPI serves at once (unix socket and TCP together); more are "
           "answered 503 and closed."),
    Option("api-session-check-interval", "float", 5.0,
           "Seconds a session checked with xapi-db is trusted before it is checked again; "
           "each check also updates its last_active (so at most once per interval)."),
    Option("db-port", "int", 9480, "TCP port of the pool database (master) for slaves."),
    Option("ha-port", "int", 694, "TCP port of the HA heartbeat between hosts."),
    Option("watchdog-timeout", "float", 10.0,
           "Seconds without a WATCHDOG=1 ping before xapi-init kills and restarts a daemon."),
    Option("ready-timeout", "float", 30.0,
           "Seconds a start-up step waits for a daemon's READY."),
    Option("command-timeout", "float", 10.0,
           "Default timeout in seconds of a command sent by a start-up step."),
    Option("restart-backoff-max", "float", 60.0,
           "Cap in seconds of xapi-init's exponential retry delay, for FATAL programs and "
           "for its own repeated failures."),
    Option("startup-script-hook", "path", "/opt/xensource/libexec/xapi-startup-script",
           "Script run at the end of start-up (dom0 path, under ROOT)."),
    Option("master-scripts-dir", "path", "/etc/xensource/master.d",
           "Directory of scripts run with start/stop when the role changes (dom0 path)."),
    Option("required-processes", "list", [],
           "Names of processes that must be running, checked by the start-up step \"Run "
           "startup check\" (psutil: a process name or the basename of its command); a missing "
           "one fails start-up with its name. Empty by default: xapi checks xenstored, "
           "xenconsoled and blktapctrl, which a host without Xen does not run."),
    Option("dom0-memory-target-mib", "int", 0,
           "Memory target of the control domain in MiB, written to xenstore "
           "(/local/domain/0/memory/target, in KiB) at start-up; 0: all of domain 0's memory."),
    Option("interface-reconfigure", "path", "",
           "Script that brings a physical NIC up at start-up (\"Bring up physical NICs\"), run "
           "as `<script> --device=<dev> up` (dom0 path, under ROOT); a non-zero exit leaves the "
           "PIF unplugged. Empty: none, the NIC's link (carrier) is checked instead."),
    Option("disable-dbsync-for", "list", [],
           "Names of dbsync steps to skip."),
    Option("guest_liveness_timeout", "float", 300.0,
           "Seconds without a guest heartbeat before the guest is reported dead."),
    Option("guest_liveness_interval", "float", 0.0,
           "Seconds between guest liveness checks; 0 means the timeout."),
    Option("xapi-message-script", "path", "",
           "Script run for each new message (dom0 path); empty: none."),
    Option("mail-outbox-max", "int", 5000,
           "Messages xapi-mailer keeps in its outbox (var/lib/xcp/mailer/) at most; past it "
           "the oldest of the lowest priority is shed, with a log line and a counter."),
    Option("mail-retry-initial", "float", 1.0,
           "Seconds xapi-mailer waits before the first retry of a failed delivery; doubled "
           "at each failure up to mail-retry-max."),
    Option("mail-retry-max", "float", 300.0,
           "Cap in seconds of xapi-mailer's exponential retry delay."),
    Option("mail-smtp-timeout", "float", 30.0,
           "Seconds an SMTP connection or command of xapi-mailer may take."),
    Option("mail-smtp-connections", "int", 4,
           "SMTP connections xapi-mailer delivers over at once, each a different e-mail (at "
           "least 1); a crash may send the e-mails in flight, at most this many, twice."),
    Option("mail-hook-timeout", "float", 60.0,
           "Seconds xapi-message-script may run for one message before it is killed (a "
           "failure, retried)."),
    Option("mail-events-wait", "float", 5.0,
           "Seconds one wait of xapi-mailer for new messages lasts (a long poll of xapi-db: a "
           "new message ends it at once); the longest a restarted xapi-db keeps it waiting."),
    Option("log-max-size-bytes", "int", 10485760,
           "Size past which the periodic job rotates a log file."),
    Option("log-rotate-keep", "int", 5,
           "Rotated copies kept of each log file (<program>.log.1 the newest); at least 1."),
    Option("periodic-job-timeout", "float", 60.0,
           "Seconds a run of a periodic job may take when its registration gives no timeout; "
           "a run past it is abandoned and counted as failed."),
    Option("periodic-flush-interval", "float", 300.0,
           "Seconds between the periodic jobs that flush files to disk: the pool database "
           "(xapi-db) and the RRD archives changed since their last save (xapi-rrd)."),
    Option("rrd-backup-interval", "float", 86400.0,
           "Seconds between the periodic job (master) that writes every RRD archive to disk."),
    Option("periodic-log-rotate-interval", "float", 300.0,
           "Seconds between the periodic job's checks of var/log/*.log sizes."),
    Option("periodic-heartbeat-interval", "float", 3600.0,
           "Seconds between the periodic scheduler's heartbeat log lines."),
    Option("sr-scan-interval", "float", 30.0,
           "Seconds between the background SR scans (master; xapi's SR scanning thread): the "
           "attached SRs whose other_config has auto-scan=true or a dirty key."),
    Option("session-revalidation-interval", "float", 300.0,
           "Seconds between the revalidations of externally-authenticated sessions (master)."),
    Option("emergency-restart-delay", "float", 60.0,
           "Seconds before a host in emergency mode restarts xapi-init, plus a random "
           "0..120 s, as xapi."),
]
OPTIONS = {option.name: option for option in _OPTIONS}


def parse_value(option, text, path=None, line=None):
    """The typed value of ``text`` for ``option``; a bad one is a ConfigError naming file,
    line, key and what was expected."""
    kind = option.type
    stripped = text.strip()
    try:
        if kind in ("str", "path"):
            return text
        if kind == "int":
            return int(stripped)
        if kind == "float":
            value = float(stripped)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if kind == "bool":
            return BOOL_WORDS[stripped.lower()]
        return [word for word in re.split(r"[\s,]+", stripped) if word]  # list
    except (ValueError, KeyError):
        raise ConfigError(f"expected {_EXPECTED[kind]}, got {text!r}",
                          path=path, line=line, key=option.name) from None


def _typed_override(option, value):
    """A typed (not text) command-line value, checked against the option's type."""
    kind = option.type
    if kind in ("str", "path") and isinstance(value, (str, Path)):
        return str(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "list" and isinstance(value, (list, tuple)) and all(
            isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"expected {_EXPECTED[kind]}, got {value!r}",
                      path=COMMAND_LINE, key=option.name)


class Config(collections.abc.Mapping):
    """The typed options of one process: ``cfg["http-port"]``, ``cfg.source(name)``."""

    def __init__(self, values=None, sources=None, unknown_keys=()):
        values, sources = dict(values or {}), dict(sources or {})
        for name in list(values) + list(sources):
            if name not in OPTIONS:
                raise KeyError(name)
        self._values = {name: values.get(name, option.default)
                        for name, option in OPTIONS.items()}
        self._sources = {name: sources.get(name, DEFAULT if name not in values else "given")
                         for name in OPTIONS}
        self.unknown_keys = list(unknown_keys)  # (path, line, key) for the caller to log

    def __getitem__(self, name):
        value = self._values[name]  # KeyError for a name not in OPTIONS
        return list(value) if isinstance(value, list) else value

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def source(self, name):
        """Where the value of ``name`` came from: "default", "command line" or "<file>:<line>"."""
        return self._sources[name]

    def __repr__(self):
        changed = {n: v for n, v in self._values.items() if self._sources[n] != DEFAULT}
        return f"Config({changed!r})"


def read_config_text(path):
    """The text of the config file ``path``. FileNotFoundError propagates; an unreadable file
    or bytes that are not UTF-8 are a ConfigError naming the file (and the line)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror or err}", path=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{data[err.start]:02x} ({err.reason})",
                          path=path, line=line) from None
    return text.removeprefix("\ufeff")


def _unquote(value):
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def iter_key_values(text, path=None):
    """The ``(line, key, value)`` of each ``key = value`` line of ``text`` (xapi.conf syntax,
    shared by log.conf and the licence file)."""
    for line_no, raw in enumerate(text.split("\n"), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected 'key = value', got {line!r}", path=path, line=line_no)
        yield line_no, key, _unquote(value.strip())


def _config_files(paths):
    files = [Path(paths.xapi_conf)]
    conf_d = Path(paths.xapi_conf_d)
    if conf_d.is_dir():
        # Dot files are editor or atomic-write leftovers, not configuration.
        files += sorted((p for p in conf_d.iterdir()
                         if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name)
    return files


def load_config(paths, overrides=None):
    """The Config of a host: defaults < ``overrides`` (the command line: name -> text or typed
    value; None means not given) < xapi.conf < xapi.conf.d/* in file-name order."""
    values, sources, unknown = {}, {}, []
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        option = OPTIONS.get(name)
        if option is None:
            raise ConfigError("unknown option", path=COMMAND_LINE, key=name)
        if isinstance(value, str):
            values[name] = parse_value(option, value, path=COMMAND_LINE)
        else:
            values[name] = _typed_override(option, value)
        sources[name] = COMMAND_LINE
    for path in _config_files(paths):
        try:
            text = read_config_text(path)
        except FileNotFoundError:
            continue
        for line_no, key, text_value in iter_key_values(text, path):
            option = OPTIONS.get(key)
            if option is None:
                unknown.append((path, line_no, key))
                continue
            values[key] = parse_value(option, text_value, path=path, line=line_no)
            sources[key] = f"{path}:{line_no}"
    return Config(values, sources, unknown)


def _render_value(option, value):
    if option.type == "bool":
        return "true" if value else "false"
    if option.type == "list":
        return ", ".join(value) if value else '""'
    if option.type in ("str", "path"):
        return f'"{value}"' if value == "" or value != value.strip() else value
    return repr(value)


def render_default_config():
    """A complete xapi.conf with every option commented out at its default."""
    out = ["# xapi.conf: every option at its default. Uncomment a line to change it.",
           "# Files in xapi.conf.d/ are read after this one, in file-name order.", ""]
    for option in _OPTIONS:
        text = f"{option.name} ({option.type}): {option.description}"
        out += textwrap.wrap(text, width=96, initial_indent="# ", subsequent_indent="#   ")
        out += [f"# {option.name} = {_render_value(option, option.default)}", ""]
    return "\n".join(out)


for _option in _OPTIONS:  # the registry is checked when it is imported
    _typed_override(_option, _option.default)
