"""xapi.conf: the option registry, value parsing, precedence and the default file."""

import pytest

from common.config import (OPTIONS, Config, Option, load_config, parse_value,
                           read_config_text, render_default_config)
from common.errors import ConfigError
from common.paths import Paths


@pytest.fixture
def paths(tmp_path):
    return Paths(tmp_path)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_registry_has_every_option_with_a_typed_default():
    expected = {
        "management-address": ("str", ""), "localhost-address": ("str", "127.0.0.1"),
        "http-port": ("int", 80), "https-port": ("int", 443), "db-port": ("int", 9480),
        "api-max-body-bytes": ("int", 16777216), "api-header-timeout": ("float", 10.0),
        "api-keepalive-timeout": ("float", 120.0), "api-max-connections": ("int", 512),
        "api-session-check-interval": ("float", 5.0),
        "ha-port": ("int", 694), "watchdog-timeout": ("float", 10.0),
        "ready-timeout": ("float", 30.0), "command-timeout": ("float", 10.0),
        "restart-backoff-max": ("float", 60.0),
        "startup-script-hook": ("path", "/opt/xensource/libexec/xapi-startup-script"),
        "master-scripts-dir": ("path", "/etc/xensource/master.d"),
        "required-processes": ("list", []), "disable-dbsync-for": ("list", []),
        "interface-reconfigure": ("path", ""),
        "guest_liveness_timeout": ("float", 300.0), "guest_liveness_interval": ("float", 0.0),
        "xapi-message-script": ("path", ""), "log-max-size-bytes": ("int", 10485760),
        "mail-outbox-max": ("int", 5000), "mail-retry-initial": ("float", 1.0),
        "mail-retry-max": ("float", 300.0), "mail-smtp-timeout": ("float", 30.0),
        "mail-smtp-connections": ("int", 4),
        "mail-hook-timeout": ("float", 60.0), "mail-events-wait": ("float", 5.0),
        "emergency-restart-delay": ("float", 60.0), "dom0-memory-target-mib": ("int", 0),
        "log-rotate-keep": ("int", 5), "periodic-job-timeout": ("float", 60.0),
        "periodic-flush-interval": ("float", 300.0), "rrd-backup-interval": ("float", 86400.0),
        "periodic-log-rotate-interval": ("float", 300.0),
        "periodic-heartbeat-interval": ("float", 3600.0),
        "sr-scan-interval": ("float", 30.0), "session-revalidation-interval": ("float", 300.0),
    }
    assert {n: (o.type, o.default) for n, o in OPTIONS.items()} == expected
    assert all(o.description for o in OPTIONS.values())


def test_option_refuses_unknown_type():
    with pytest.raises(ValueError):
        Option("x", "complex", 0, "no")


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("YES", True), ("On", True), ("1", True),
    ("false", False), ("no", False), ("OFF", False), ("0", False), (" true ", True),
])
def test_parse_bool_words(text, expected):
    assert parse_value(Option("b", "bool", False, "d"), text) is expected


@pytest.mark.parametrize("text, expected", [
    ("", []), ("a", ["a"]), ("a,b", ["a", "b"]), ("a b\tc", ["a", "b", "c"]),
    (" a , b ,, c ", ["a", "b", "c"]),
])
def test_parse_list(text, expected):
    assert parse_value(OPTIONS["required-processes"], text) == expected


def test_parse_int_float_path():
    assert parse_value(OPTIONS["http-port"], " 8080 ") == 8080
    assert parse_value(OPTIONS["ready-timeout"], "2.5") == 2.5
    assert parse_value(OPTIONS["ready-timeout"], "3") == 3.0
    assert parse_value(OPTIONS["startup-script-hook"], "/opt/x") == "/opt/x"


@pytest.mark.parametrize("name, text, expected", [
    ("http-port", "eighty", "expected an integer, got 'eighty'"),
    ("http-port", "8.0", "expected an integer"),
    ("ready-timeout", "soon", "expected a number, got 'soon'"),
    ("ready-timeout", "nan", "expected a number"),
    ("ready-timeout", "inf", "expected a number"),
    ("required-processes", "x", None),
])
def test_parse_bad_values_name_file_line_key(name, text, expected):
    if expected is None:
        assert parse_value(OPTIONS[name], text) == ["x"]
        return
    with pytest.raises(ConfigError) as err:
        parse_value(OPTIONS[name], text, path="/etc/xapi.conf", line=7)
    assert str(err.value).startswith(f"/etc/xapi.conf:7: key '{name}': {expected}")
    assert (err.value.path, err.value.line, err.value.key) == ("/etc/xapi.conf", 7, name)


def test_parse_bad_bool():
    with pytest.raises(ConfigError, match="expected a boolean.*got 'maybe'"):
        parse_value(Option("b", "bool", False, "d"), "maybe")


def test_missing_config_gives_defaults(paths):
    cfg = load_config(paths)
    assert dict(cfg) == {n: o.default for n, o in OPTIONS.items()}
    assert cfg.source("http-port") == "default"
    assert cfg.unknown_keys == []


def test_precedence_defaults_overrides_file_conf_d(paths):
    write(paths.xapi_conf, "http-port = 81\nhttps-port = 444\ndb-port = 9481\n")
    write(paths.xapi_conf_d / "20-b", "https-port = 446\n")
    write(paths.xapi_conf_d / "10-a", "https-port = 445\nha-port = 695\n")
    cfg = load_config(paths, {"http-port": "8080", "ready-timeout": "5", "ha-port": 700})
    assert cfg["ready-timeout"] == 5.0
    assert cfg.source("ready-timeout") == "command line"
    assert cfg["http-port"] == 81
    assert cfg.source("http-port") == f"{paths.xapi_conf}:1"
    assert cfg["https-port"] == 446
    assert cfg.source("https-port") == f"{paths.xapi_conf_d / '20-b'}:1"
    assert cfg["ha-port"] == 695
    assert cfg["db-port"] == 9481
    assert cfg["command-timeout"] == 10.0 and cfg.source("command-timeout") == "default"


def test_conf_d_reads_regular_files_only_in_name_order(paths):
    write(paths.xapi_conf_d / "b.conf", "http-port = 2\n")
    write(paths.xapi_conf_d / "a.conf", "http-port = 1\n")
    (paths.xapi_conf_d / "z-dir").mkdir()
    write(paths.xapi_conf_d / ".b.conf.tmp", "http-port = 3\n")
    cfg = load_config(paths)
    assert cfg["http-port"] == 2


def test_comments_quotes_and_whitespace(paths):
    write(paths.xapi_conf, "\n".join([
        "# a comment",
        "   ",
        "  http-port   =   8080   # trailing comment",
        "localhost-address = '127.0.0.2'",
        'management-address = "10.0.0.1"',
        "xapi-message-script = \"'/opt/s'\"",
        "startup-script-hook = ' /opt/with space '",
        "required-processes = a, b c",
        "disable-dbsync-for =",
        "guest_liveness_timeout=1e2",
        "",
    ]))
    cfg = load_config(paths)
    assert cfg["http-port"] == 8080
    assert cfg["localhost-address"] == "127.0.0.2"
    assert cfg["management-address"] == "10.0.0.1"
    assert cfg["xapi-message-script"] == "'/opt/s'"  # only one pair of quotes is removed
    assert cfg["startup-script-hook"] == " /opt/with space "
    assert cfg["required-processes"] == ["a", "b", "c"]
    assert cfg["disable-dbsync-for"] == []
    assert cfg["guest_liveness_timeout"] == 100.0
    assert cfg.source("http-port") == f"{paths.xapi_conf}:3"


def test_unmatched_quotes_are_kept(paths):
    write(paths.xapi_conf, "localhost-address = '127.0.0.2\"\n")
    assert load_config(paths)["localhost-address"] == "'127.0.0.2\""


def test_bad_int_names_file_line_and_key(paths):
    write(paths.xapi_conf_d / "50-ports", "# ports\n\nhttp-port = eighty\n")
    with pytest.raises(ConfigError) as err:
        load_config(paths)
    assert str(err.value) == (f"{paths.xapi_conf_d / '50-ports'}:3: key 'http-port': "
                              "expected an integer, got 'eighty'")


def test_line_without_equals_names_file_and_line(paths):
    write(paths.xapi_conf, "http-port = 80\nhttps-port 443\n")
    with pytest.raises(ConfigError, match=r"xapi.conf:2: expected 'key = value'") as err:
        load_config(paths)
    assert err.value.line == 2


def test_line_without_key_is_an_error(paths):
    write(paths.xapi_conf, "= 443\n")
    with pytest.raises(ConfigError, match=r"xapi.conf:1: expected 'key = value'"):
        load_config(paths)


def test_not_utf8_names_file_and_line(paths):
    paths.xapi_conf.parent.mkdir(parents=True)
    paths.xapi_conf.write_bytes(b"http-port = 80\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"xapi.conf:2: not UTF-8") as err:
        load_config(paths)
    assert err.value.line == 2


def test_unreadable_config_is_a_config_error(paths):
    paths.xapi_conf.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(paths)


def test_unknown_keys_are_reported_not_fatal(paths):
    write(paths.xapi_conf, "http-port = 81\nfrobnicate = yes\n")
    write(paths.xapi_conf_d / "x", "\n\nhttp_port = 82\n")
    cfg = load_config(paths)
    assert cfg["http-port"] == 81
    assert cfg.unknown_keys == [(paths.xapi_conf, 2, "frobnicate"),
                                (paths.xapi_conf_d / "x", 3, "http_port")]


def test_later_line_in_the_same_file_wins(paths):
    write(paths.xapi_conf, "http-port = 81\nhttp-port = 82\n")
    cfg = load_config(paths)
    assert (cfg["http-port"], cfg.source("http-port")) == (82, f"{paths.xapi_conf}:2")


def test_overrides_typed_checked_and_unknown_refused(paths):
    cfg = load_config(paths, {"watchdog-timeout": 3, "required-processes": ("a",),
                              "http-port": None, "startup-script-hook": paths.root / "x"})
    assert cfg["watchdog-timeout"] == 3.0 and isinstance(cfg["watchdog-timeout"], float)
    assert cfg["required-processes"] == ["a"]
    assert cfg.source("http-port") == "default"
    assert cfg["startup-script-hook"] == str(paths.root / "x")
    with pytest.raises(ConfigError, match="command line: key 'http-port': expected an integer"):
        load_config(paths, {"http-port": True})
    with pytest.raises(ConfigError, match="command line: key 'http-port': expected an integer"):
        load_config(paths, {"http-port": "x"})
    with pytest.raises(ConfigError, match="key 'no-such': unknown option"):
        load_config(paths, {"no-such": "1"})


def test_config_mapping_behaviour(paths):
    cfg = load_config(paths)
    with pytest.raises(KeyError):
        cfg["no-such-option"]
    with pytest.raises(KeyError):
        cfg.source("no-such-option")
    assert len(cfg) == len(OPTIONS) and set(cfg) == set(OPTIONS)
    cfg["required-processes"].append("mutated")
    assert cfg["required-processes"] == []
    assert OPTIONS["required-processes"].default == []


def test_config_built_directly():
    cfg = Config({"http-port": 8080})
    assert cfg["http-port"] == 8080 and cfg["https-port"] == 443
    assert cfg.source("https-port") == "default"
    with pytest.raises(KeyError):
        Config({"nope": 1})


def test_default_config_is_complete_and_loads_to_defaults(paths):
    text = render_default_config()
    for name, option in OPTIONS.items():
        assert f"# {name} = " in text
    write(paths.xapi_conf, text)
    cfg = load_config(paths)
    assert dict(cfg) == {n: o.default for n, o in OPTIONS.items()}
    assert cfg.unknown_keys == []
    # Uncommenting every option line gives the defaults too, now read from the file.
    uncommented = "\n".join(line[2:] if any(line.startswith(f"# {n} = ") for n in OPTIONS)
                            else line for line in text.split("\n"))
    write(paths.xapi_conf, uncommented)
    cfg = load_config(paths)
    assert dict(cfg) == {n: o.default for n, o in OPTIONS.items()}
    assert all(cfg.source(n).startswith(str(paths.xapi_conf)) for n in OPTIONS)


def test_read_config_text_strips_bom_and_propagates_missing(tmp_path):
    (tmp_path / "f").write_bytes(b"\xef\xbb\xbfa = 1\n")
    assert read_config_text(tmp_path / "f") == "a = 1\n"
    with pytest.raises(FileNotFoundError):
        read_config_text(tmp_path / "missing")
