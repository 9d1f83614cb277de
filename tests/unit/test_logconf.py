"""log.conf: per-program levels, the ``*`` fallback, bad levels."""

import logging

import pytest

from common.errors import ConfigError
from common.logconf import level_for, read_log_levels


def test_missing_file_means_info_everywhere(tmp_path):
    levels = read_log_levels(tmp_path / "log.conf")
    assert levels == {}
    assert level_for(levels, "xapi-db") == logging.INFO


def test_levels_and_fallback(tmp_path):
    path = tmp_path / "log.conf"
    path.write_text("# levels\n* = warning\nxapi-db = DEBUG  # chatty\nxapi-ha = warn\n"
                    "xapi-rrd = 'error'\nxapi-api = critical\nxapi-init = info\n")
    levels = read_log_levels(path)
    assert levels == {"*": logging.WARNING, "xapi-db": logging.DEBUG, "xapi-ha": logging.WARNING,
                      "xapi-rrd": logging.ERROR, "xapi-api": logging.CRITICAL,
                      "xapi-init": logging.INFO}
    assert level_for(levels, "xapi-db") == logging.DEBUG
    assert level_for(levels, "xapi-mailer") == logging.WARNING
    assert level_for({"xapi-db": logging.DEBUG}, "xapi-mailer") == logging.INFO


def test_bad_level_names_file_line_key_and_allowed_values(tmp_path):
    path = tmp_path / "log.conf"
    path.write_text("* = info\n\nxapi-db = loud\n")
    with pytest.raises(ConfigError) as err:
        read_log_levels(path)
    assert (err.value.path, err.value.line, err.value.key) == (path, 3, "xapi-db")
    message = str(err.value)
    assert message.startswith(f"{path}:3: key 'xapi-db': expected one of debug, info, warning")
    assert "critical" in message and "'loud'" in message


def test_line_without_equals(tmp_path):
    path = tmp_path / "log.conf"
    path.write_text("xapi-db debug\n")
    with pytest.raises(ConfigError, match=":1: expected 'key = value'"):
        read_log_levels(path)
