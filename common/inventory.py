"""The inventory file etc/xensource-inventory: ``KEY='value'`` lines, read, written, created.

As xapi's: a line splits at its first ``=``; the key is trimmed; the value is trimmed, loses one
pair of surrounding single quotes, and is trimmed again. The file is sourced by dom0 shell
scripts, so it is always written whole as ``KEY='value'`` lines, atomically.
"""

import re
from pathlib import Path

from common.config import read_config_text
from common.errors import ConfigError
from common.fileutil import atomic_write

INSTALLATION_UUID = "INSTALLATION_UUID"
CONTROL_DOMAIN_UUID = "CONTROL_DOMAIN_UUID"
MANAGEMENT_INTERFACE = "MANAGEMENT_INTERFACE"
MANAGEMENT_ADDRESS_TYPE = "MANAGEMENT_ADDRESS_TYPE"
BUILD_NUMBER = "BUILD_NUMBER"
PRODUCT_BRAND = "PRODUCT_BRAND"
PRODUCT_VERSION = "PRODUCT_VERSION"
PLATFORM_VERSION = "PLATFORM_VERSION"

REQUIRED_KEYS = (INSTALLATION_UUID, CONTROL_DOMAIN_UUID)
INVENTORY_MODE = 0o644
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # dom0 scripts source the inventory


def _strip_value(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
        value = value[1:-1]
    return value.strip()


def parse_inventory(text, path=None):
    """The ``{KEY: value}`` of an inventory text; a line without ``=`` is a ConfigError."""
    values = {}
    for line_no, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected KEY='value', got {stripped!r}", path=path, line=line_no)
        values[key] = _strip_value(value)
    return values


def read_inventory(path):
    """The inventory at ``path`` (FileNotFoundError propagates)."""
    return parse_inventory(read_config_text(path), path=path)


def _render_line(key, value, path):
    key, value = str(key), str(value)
    if not _SHELL_NAME.fullmatch(key):
        raise ConfigError("a key must be a shell variable name (letters, digits, '_')",
                          path=path, key=key)
    if "'" in value:
        raise ConfigError("a value cannot hold a single quote (it could not be read back)",
                          path=path, key=key)
    if any(c in value for c in "\n\r"):
        raise ConfigError("a value cannot hold a line break (it could not be read back)",
                          path=path, key=key)
    line = f"{key}='{value}'"
    if parse_inventory(line) != {key: value}:
        raise ConfigError(f"{value!r} could not be read back (leading or trailing "
                          "whitespace)", path=path, key=key)
    return line


def render_inventory(values, path=None):
    """The text of an inventory: ``KEY='value'`` lines in key order."""
    lines = [_render_line(key, values[key], path) for key in sorted(values, key=str)]
    return "".join(line + "\n" for line in lines)


def write_inventory(path, values):
    """Replace the inventory at ``path`` with ``values``, atomically (mode 0644)."""
    atomic_write(path, render_inventory(values, path), mode=INVENTORY_MODE)


def new_inventory():
    """The values of a fresh inventory, as xapi creates a missing one."""
    import uuid     # here: only a new host needs it, and every program reads the inventory
    return {
        INSTALLATION_UUID: str(uuid.uuid4()),
        CONTROL_DOMAIN_UUID: str(uuid.uuid4()),
        MANAGEMENT_INTERFACE: "",
        MANAGEMENT_ADDRESS_TYPE: "IPv4",
        BUILD_NUMBER: "0",
    }


def ensure_inventory(path):
    """``(values, created)``: the inventory at ``path``, created first if it is missing.
    A present inventory without INSTALLATION_UUID or CONTROL_DOMAIN_UUID is a ConfigError."""
    path = Path(path)
    try:
        values = read_inventory(path)
    except FileNotFoundError:
        values = new_inventory()
        write_inventory(path, values)
        return values, True
    for key in REQUIRED_KEYS:
        if not values.get(key):
            raise ConfigError("missing (or empty) in the inventory", path=path, key=key)
    return values, False
