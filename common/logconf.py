"""Per-program log levels from etc/xensource/log.conf: ``<program> = <level>``, ``*`` for all.

Same syntax as xapi.conf (``#`` comments, ``key = value``). Levels: debug, info, warning (or
warn), error, critical. A program without a line of its own takes ``*``'s level, else INFO.
"""

import logging

from common.config import iter_key_values, read_config_text
from common.errors import ConfigError

ALL_PROGRAMS = "*"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
DEFAULT_LEVEL = logging.INFO


def parse_log_levels(text, path=None):
    """``{program: logging level}`` of a log.conf text; a bad level is a ConfigError."""
    levels = {}
    for line_no, program, value in iter_key_values(text, path):
        level = LEVELS.get(value.strip().lower())
        if level is None:
            raise ConfigError(f"expected one of {', '.join(LEVELS)}, got {value!r}",
                              path=path, line=line_no, key=program)
        levels[program] = level
    return levels


def read_log_levels(path):
    """The levels of the log.conf at ``path``; ``{}`` if there is none."""
    try:
        text = read_config_text(path)
    except FileNotFoundError:
        return {}
    return parse_log_levels(text, path)


def level_for(levels, program):
    """The level of ``program``: its own, else ``*``'s, else INFO."""
    return levels.get(program, levels.get(ALL_PROGRAMS, DEFAULT_LEVEL))
