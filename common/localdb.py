"""The per-host key/value flags in var/lib/xcp/local.db: ``<config><row key= value=/></config>``.

As xapi's: every change rewrites the whole file atomically; a file that does not parse is
renamed to ``local.db.corrupt`` and the host starts with an empty local database.
"""

import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from common.errors import ConfigError
from common.fileutil import atomic_write

HA_ARMED = "ha.armed"
MASTER_SCRIPTS = "master_scripts"
THIS_NODE_JUST_BECAME_MASTER = "this_node_just_became_master"
HOST_DISABLED_UNTIL_REBOOT = "host_disabled_until_reboot"

CORRUPT_SUFFIX = ".corrupt"
LOCAL_DB_MODE = 0o644
# Characters XML 1.0 cannot hold, even escaped.
_NOT_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                    "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


class CorruptLocalDB(Exception):
    """local.db is not XML, or not the XML we write."""


def _escape_attribute(text):
    # Tab, CR and LF are written as character references, which survive XML's
    # attribute-value normalisation.
    return text.translate(_ATTRIBUTE_ESCAPES)


def _check_text(what, text):
    if not isinstance(text, str):
        raise TypeError(f"local.db {what} must be a string, got {text!r}")
    bad = _NOT_XML_CHARS.search(text)
    if bad:
        raise ValueError(f"local.db {what} {text!r} holds {bad.group()!r}, which XML cannot hold")


def parse_local_db(data):
    """The rows of a local.db document (bytes or str); CorruptLocalDB if it is not one."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise CorruptLocalDB(f"not XML: {err}") from None
    if root.tag != "config":
        raise CorruptLocalDB(f"root element is <{root.tag}>, expected <config>")
    rows = {}
    for row in root:
        key, value = row.get("key"), row.get("value")
        if row.tag != "row" or key is None or value is None:
            raise CorruptLocalDB(f"expected <row key=... value=.../>, got <{row.tag}>")
        rows[key] = value
    return rows


def render_local_db(rows):
    """The text of a local.db holding ``rows``, in key order."""
    lines = [f'  <row key="{_escape_attribute(key)}" value="{_escape_attribute(rows[key])}"/>'
             for key in sorted(rows)]
    return "\n".join(["<config>", *lines, "</config>", ""])


def _text_of(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


class LocalDB:
    """The local database of a host, loaded once and written through on each change."""

    def __init__(self, path, logger=None):
        self.path = Path(path)
        self._logger = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._rows = self._load()

    @property
    def corrupt_path(self):
        return self.path.with_name(self.path.name + CORRUPT_SUFFIX)

    def _load(self):
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return parse_local_db(data)
        except CorruptLocalDB as err:
            os.replace(self.path, self.corrupt_path)
            self._logger.warning("local database %s is corrupt (%s): moved to %s, starting "
                                 "empty", self.path, err, self.corrupt_path)
            return {}

    def get(self, key, default=None):
        return self._rows.get(key, default)

    def get_bool(self, key, default=False):
        """The flag ``key`` ("true"/"false"); ``default`` if it is not set."""
        value = self._rows.get(key)
        if value is None:
            return default
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"expected true or false, got {value!r}", path=self.path, key=key)

    def put(self, key, value):
        """Set ``key`` (bools are stored as "true"/"false"); writes only if the value changed."""
        text = _text_of(value)
        _check_text("key", key)
        _check_text("value", text)
        with self._lock:
            if self._rows.get(key) == text:
                return
            self._write({**self._rows, key: text})

    def delete(self, key):
        """Remove ``key``; nothing happens (and nothing is written) if it is not set."""
        with self._lock:
            if key not in self._rows:
                return
            rows = dict(self._rows)
            del rows[key]
            self._write(rows)

    def items(self):
        """A copy of every row, ``{key: value}``."""
        return dict(self._rows)

    def _write(self, rows):
        atomic_write(self.path, render_local_db(rows), mode=LOCAL_DB_MODE)
        self._rows = rows
