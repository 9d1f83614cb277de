"""The database connections of etc/xensource/db.conf: where the pool database is kept, and how.

As xapi's: blocks separated by a blank line, each a ``[<path>]`` header then ``key:value``
lines (split at the first colon). Known keys are matched case-insensitively; other keys are
kept as read. A missing db.conf means one connection, var/lib/xcp/state.db, no_limit.
"""

from dataclasses import dataclass, field
from pathlib import Path

from common.config import read_config_text
from common.errors import ConfigError

NO_LIMIT = "no_limit"
WRITE_LIMIT = "write_limit"
MODES = (WRITE_LIMIT, NO_LIMIT)
GENERATION_SUFFIX = ".generation"
_BOOL_KEYS = ("compress", "is_on_remote_storage")
_INT_KEYS = ("write_limit_period", "write_limit_write_cycles")
KNOWN_KEYS = ("mode", *_BOOL_KEYS, *_INT_KEYS)


@dataclass(frozen=True)
class Connection:
    """One database file and how it is written."""

    path: Path
    mode: str = NO_LIMIT
    compress: bool = False
    is_on_remote_storage: bool = False
    write_limit_period_s: int = 21600
    write_limit_write_cycles: int = 10
    other: tuple = field(default=())  # (key, value) pairs of unknown keys, kept as read

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "other", tuple(tuple(pair) for pair in self.other))
        if self.mode not in MODES:
            raise ValueError(f"mode must be {WRITE_LIMIT} or {NO_LIMIT}, not {self.mode!r}")

    @property
    def generation_path(self):
        """The sibling file holding the database's generation count."""
        return Path(str(self.path) + GENERATION_SUFFIX)


def _value_of(key, value, path, line_no):
    lowered = value.lower()
    if key == "mode":
        if lowered not in MODES:
            raise ConfigError(f"expected write_limit or no_limit, got {value!r}",
                              path=path, line=line_no, key=key)
        return lowered
    if key in _BOOL_KEYS:
        if lowered not in ("true", "false"):
            raise ConfigError(f"expected true or false, got {value!r}",
                              path=path, line=line_no, key=key)
        return lowered == "true"
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"expected a positive integer, got {value!r}",
                          path=path, line=line_no, key=key)
    return number


def _connection(db_path, settings, other):
    fields = {("write_limit_period_s" if k == "write_limit_period" else k): v
              for k, v in settings.items()}
    return Connection(db_path, other=tuple(other), **fields)


def parse_db_conf(text, path=None, paths=None):
    """The connections of a db.conf text; with ``paths``, each path is taken under its ROOT."""
    connections, seen = [], set()
    block = None  # (path, settings, other) of the block being read
    for line_no, raw in enumerate(text.split("\n") + [""], 1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line or (line.startswith("[") and line.endswith("]")):
            if block is not None:
                connections.append(_connection(*block))
                block = None
            if not line:
                continue
            header = line[1:-1].strip()
            if not header:
                raise ConfigError("empty database path in '[]'", path=path, line=line_no)
            db_path = paths.under(header) if paths is not None else Path(header)
            if db_path in seen:
                raise ConfigError(f"database {header} is listed twice", path=path, line=line_no)
            seen.add(db_path)
            block = (db_path, {}, [])
            continue
        if block is None:
            raise ConfigError(f"expected a '[<database path>]' header, got {line!r}",
                              path=path, line=line_no)
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"expected 'key:value', got {line!r}", path=path, line=line_no)
        if key.lower() in KNOWN_KEYS:
            block[1][key.lower()] = _value_of(key.lower(), value, path, line_no)
        else:
            block[2].append((key, value))
    if not connections:
        raise ConfigError("no database connection ('[<database path>]' block)", path=path)
    return connections


def read_db_conf(paths):
    """The connections of the host's db.conf; a missing db.conf means state.db, no_limit."""
    try:
        text = read_config_text(paths.db_conf)
    except FileNotFoundError:
        return [Connection(paths.state_db)]
    return parse_db_conf(text, path=paths.db_conf, paths=paths)


def _dom0_path(db_path, paths):
    if paths is None:
        return str(db_path)
    try:
        return "/" + str(Path(db_path).relative_to(paths.root))
    except ValueError:
        raise ConfigError(f"database {db_path} is not under ROOT {paths.root}") from None


def _check_written(what, text, forbidden=""):
    if text != text.strip() or not text or "\n" in text or "\r" in text or text[0] in "#[" \
            or any(c in text for c in forbidden):
        raise ConfigError(f"{what} {text!r} could not be read back from db.conf")


def render_db_conf(connections, paths=None):
    """The db.conf text of ``connections`` (paths as dom0 paths when ``paths`` is given)."""
    blocks = []
    for conn in connections:
        header = _dom0_path(conn.path, paths)
        _check_written("database path", header)
        lines = [f"[{header}]", f"mode:{conn.mode}",
                 f"compress:{str(conn.compress).lower()}",
                 f"is_on_remote_storage:{str(conn.is_on_remote_storage).lower()}",
                 f"write_limit_period:{conn.write_limit_period_s}",
                 f"write_limit_write_cycles:{conn.write_limit_write_cycles}"]
        for key, value in conn.other:
            _check_written("key", key, forbidden=":")
            if key.lower() in KNOWN_KEYS:
                raise ConfigError(f"other key {key!r} is a known db.conf key")
            if value != value.strip() or "\n" in value or "\r" in value:
                raise ConfigError(f"value {value!r} of {key!r} could not be read back")
            lines.append(f"{key}:{value}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
