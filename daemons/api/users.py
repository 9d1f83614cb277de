"""The XenAPI password file ``etc/xapi-users``: one ``USER:scrypt$N$r$p$SALT$HASH`` line per user
(salt and hash in base64), mode 0600. ``xapi-ctl passwd`` writes it (temp, fsync, rename, under
a lock); xapi-api reads it afresh at each login over TCP, so a new password counts at once.

Real xapi checks passwords through PAM; a file of scrypt hashes is our stand-in."""

import base64
import fcntl
import hashlib
import hmac
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

from common.errors import ConfigError
from common.fileutil import atomic_write

SCRYPT_N, SCRYPT_R, SCRYPT_P, DKLEN = 2 ** 14, 8, 1, 32
MAX_SCRYPT_N = 2 ** 20
FILE_MODE = 0o600
_USER = re.compile(r"^[A-Za-z0-9._@-][A-Za-z0-9._@\\-]{0,63}$")


def check_user_name(user):
    """A user name the file can hold: 1-64 of letters, digits, ``._@-`` (and ``\\``)."""
    if not isinstance(user, str) or not _USER.match(user):
        raise ValueError(f"invalid user name {user!r}: use 1-64 letters, digits and ._@-")
    return user


def hash_password(password, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P):
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=DKLEN,
                            maxmem=256 * n * r)
    return "$".join(("scrypt", str(n), str(r), str(p),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def verify_password(password, stored):
    """True when ``password`` matches the stored hash; a malformed hash matches nothing."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        n, r, p = int(n), int(r), int(p)
        salt, digest = base64.b64decode(salt, validate=True), base64.b64decode(digest,
                                                                                validate=True)
    except ValueError:
        return False
    if scheme != "scrypt" or not (2 <= n <= MAX_SCRYPT_N) or not (1 <= r <= 32) \
            or not (1 <= p <= 16):
        return False
    try:
        got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                             dklen=len(digest), maxmem=256 * n * r)
    except ValueError:
        return False
    return hmac.compare_digest(got, digest)


def parse_users(text, path):
    users = {}
    for line_no, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not _USER.match(user) or not stored.startswith("scrypt$"):
            raise ConfigError("expected 'USER:scrypt$N$r$p$SALT$HASH'", path=path, line=line_no)
        users[user] = stored
    return users


def read_users(path):
    """{user: stored hash}; a missing file is no users; a bad line is a ConfigError naming
    the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=path) from None
    return parse_users(text, path)


@contextmanager
def _locked(path):
    lock_path = Path(path).with_name(f".{Path(path).name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def set_password(path, user, password):
    """Add or replace ``user``'s line; the rest of the file is kept as it is."""
    check_user_name(user)
    if not password:
        raise ValueError("empty password refused")
    stored = hash_password(password)
    with _locked(path):
        read_users(path)      # refuse to rewrite a file we cannot parse
        try:
            lines = Path(path).read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            lines = []
        kept = [line for line in lines
                if line.strip() and line.strip().partition(":")[0] != user]
        kept.append(f"{user}:{stored}")
        atomic_write(path, "\n".join(kept) + "\n", mode=FILE_MODE)
