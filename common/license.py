"""The licence read at start-up from etc/xensource/license: edition, expiry, pooling rule.

Same syntax as xapi.conf: ``edition`` (free, express, standard, enterprise, platinum; default
free), ``expiry`` (YYYY-MM-DD; absent, empty or ``never``: no expiry), ``restrict_pooling``
(boolean; default true for express only). A licence is valid through its expiry day; after it,
the free edition's rules apply (edition "free", its default pooling rule).
"""

import datetime
import re
from dataclasses import dataclass

from common.config import BOOL_WORDS, iter_key_values, read_config_text
from common.errors import ConfigError

FREE = "free"
EDITIONS = (FREE, "express", "standard", "enterprise", "platinum")
RESTRICTED_POOLING_EDITIONS = ("express",)
NO_LICENCE_SOURCE = "default (no licence file)"
NEVER = "never"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class License:
    """The licence in force: for an expired licence, the free edition's."""

    edition: str
    expiry: datetime.date | None
    restrict_pooling: bool
    source: str  # the licence file, or "default (no licence file)"
    expired: bool


def default_restrict_pooling(edition):
    return edition in RESTRICTED_POOLING_EDITIONS


def _parse_fields(text, path):
    fields = {}
    for line_no, key, value in iter_key_values(text, path):
        value = value.strip()
        if key == "edition":
            if value.lower() not in EDITIONS:
                raise ConfigError(f"expected one of {', '.join(EDITIONS)}, got {value!r}",
                                  path=path, line=line_no, key=key)
            fields[key] = value.lower()
        elif key == "expiry":
            fields[key] = _parse_expiry(value, path, line_no)
        elif key == "restrict_pooling":
            if value.lower() not in BOOL_WORDS:
                raise ConfigError(f"expected true or false, got {value!r}",
                                  path=path, line=line_no, key=key)
            fields[key] = BOOL_WORDS[value.lower()]
        # Other keys are the licence issuer's business: ignored.
    return fields


def _parse_expiry(value, path, line_no):
    if value == "" or value.lower() == NEVER:
        return None
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"expected a date YYYY-MM-DD (or 'never'), got {value!r}",
                          path=path, line=line_no, key="expiry") from None


def parse_license(text, path=None, today=None):
    """The License of a licence text, as in force on ``today`` (default: today)."""
    today = today or datetime.date.today()
    fields = _parse_fields(text, path)
    edition = fields.get("edition", FREE)
    expiry = fields.get("expiry")
    expired = expiry is not None and expiry < today
    if expired:
        edition = FREE
        restrict_pooling = default_restrict_pooling(FREE)
    else:
        restrict_pooling = fields.get("restrict_pooling", default_restrict_pooling(edition))
    source = str(path) if path is not None else "licence text"
    return License(edition, expiry, restrict_pooling, source, expired)


def read_license(path, today=None):
    """The licence at ``path``; a missing file means the free edition."""
    try:
        text = read_config_text(path)
    except FileNotFoundError:
        return License(FREE, None, default_restrict_pooling(FREE), NO_LICENCE_SOURCE, False)
    return parse_license(text, path=path, today=today)
