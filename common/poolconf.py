"""The host's role in its pool, as held in etc/xensource/pool.conf: master, slave:<addr>, broken.

As xapi's: the whole file, whitespace trimmed, is one token; ``slave:`` takes everything after
the first colon (so ``slave:fe80::1`` works). A missing or unparsable file means ``broken``:
reading never raises for the file's content.
"""

from dataclasses import dataclass

from common.config import read_config_text
from common.errors import ConfigError
from common.fileutil import atomic_write

MASTER = "master"
SLAVE = "slave"
BROKEN = "broken"
ROLE_KINDS = (MASTER, SLAVE, BROKEN)
_SLAVE_PREFIX = SLAVE + ":"
_MAX_TOKEN_IN_REASON = 80


@dataclass(frozen=True)
class Role:
    """A role; ``reason`` says why a role is broken (not written to pool.conf)."""

    kind: str  # "master" | "slave" | "broken"
    master_address: str | None = None
    reason: str | None = None

    def __post_init__(self):
        if self.kind not in ROLE_KINDS:
            raise ValueError(f"role kind must be one of {', '.join(ROLE_KINDS)}, "
                             f"not {self.kind!r}")
        if (self.kind == SLAVE) != bool(self.master_address):
            raise ValueError("a slave, and only a slave, has a master address")

    @property
    def is_master(self):
        return self.kind == MASTER

    @property
    def is_slave(self):
        return self.kind == SLAVE

    @property
    def is_broken(self):
        return self.kind == BROKEN

    def __str__(self):
        return f"{_SLAVE_PREFIX}{self.master_address}" if self.is_slave else self.kind


def parse_pool_conf(text, path=None):
    """The Role a pool.conf text holds; anything unparsable is a broken Role with a reason."""
    where = path if path is not None else "pool.conf"
    token = text.strip()
    if token in (MASTER, BROKEN):
        return Role(token)
    if token.startswith(_SLAVE_PREFIX):
        address = token[len(_SLAVE_PREFIX):].strip()
        if address:
            return Role(SLAVE, address)
        return Role(BROKEN, reason=f"{where}: 'slave:' without a master address")
    shown = token if len(token) <= _MAX_TOKEN_IN_REASON else token[:_MAX_TOKEN_IN_REASON] + "..."
    return Role(BROKEN, reason=f"{where}: expected 'master', 'slave:<address>' or 'broken', "
                               f"got '{shown}'")


def read_role(path):
    """The Role in pool.conf at ``path``: missing, unreadable or unparsable -> broken."""
    try:
        text = read_config_text(path)
    except FileNotFoundError:
        return Role(BROKEN, reason=f"{path} is missing")
    except ConfigError as err:
        return Role(BROKEN, reason=str(err))
    return parse_pool_conf(text, path=path)


def write_role(path, role):
    """Write ``role`` (a Role or its token, e.g. ``slave:10.0.0.1``) to pool.conf, atomically."""
    if isinstance(role, str):
        parsed = parse_pool_conf(role, path="role")
        if parsed.reason:
            raise ConfigError(parsed.reason.removeprefix("role: "), path=path)
        role = parsed
    elif not isinstance(role, Role):
        raise TypeError(f"expected a Role or a pool.conf token, got {role!r}")
    token = str(role)
    back = parse_pool_conf(token)
    if (back.kind, back.master_address) != (role.kind, role.master_address):
        raise ConfigError(f"role {token!r} could not be read back (address with surrounding "
                          "whitespace?)", path=path)
    atomic_write(path, token + "\n", mode=0o644)
