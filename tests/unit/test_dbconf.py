"""db.conf: connection blocks, defaults, unknown keys kept, the missing-file default."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.dbconf import Connection, parse_db_conf, read_db_conf, render_db_conf
from common.errors import ConfigError
from common.paths import Paths

XAPI_DB_CONF = """[/var/lib/xcp/state.db]
mode:write_limit
format:xml
compress:false
is_on_remote_storage:false
write_limit_period:21600
write_limit_write_cycles:10

[/var/lib/xcp/remote.db]
mode:no_limit
compress:TRUE
is_on_remote_storage:true
"""


def test_parse_xapi_db_conf():
    first, second = parse_db_conf(XAPI_DB_CONF)
    assert first == Connection(Path("/var/lib/xcp/state.db"), mode="write_limit",
                               other=(("format", "xml"),))
    assert second == Connection(Path("/var/lib/xcp/remote.db"), compress=True,
                                is_on_remote_storage=True)


def test_header_only_gives_defaults():
    [conn] = parse_db_conf("[/var/lib/xcp/state.db]\n")
    assert conn == Connection(Path("/var/lib/xcp/state.db"))
    assert (conn.mode, conn.compress, conn.is_on_remote_storage, conn.write_limit_period_s,
            conn.write_limit_write_cycles, conn.other) == ("no_limit", False, False, 21600, 10, ())


def test_paths_are_taken_under_root(tmp_path):
    paths = Paths(tmp_path)
    [conn] = parse_db_conf("[/var/lib/xcp/state.db]\n", paths=paths)
    assert conn.path == paths.state_db
    assert conn.generation_path == tmp_path / "var/lib/xcp/state.db.generation"


def test_value_split_at_first_colon_and_trimmed_comments_skipped():
    text = ("# the pool database\n[ /a.db ]\n  Mode : Write_Limit \n"
            "# comment inside\nurl: http://x:80/y \n")
    [conn] = parse_db_conf(text)
    assert conn.path == Path("/a.db")
    assert conn.mode == "write_limit"
    assert conn.other == (("url", "http://x:80/y"),)


def test_unknown_keys_kept_in_order_with_case():
    [conn] = parse_db_conf("[/a]\nZeta:1\nalpha:\nZeta:2\n")
    assert conn.other == (("Zeta", "1"), ("alpha", ""), ("Zeta", "2"))


def test_several_blank_lines_and_header_without_blank_line():
    conns = parse_db_conf("\n\n[/a]\nmode:write_limit\n\n\n\n[/b]\n[/c]\ncompress:true\n\n")
    assert [c.path for c in conns] == [Path("/a"), Path("/b"), Path("/c")]
    assert conns[2].compress and not conns[1].compress


@pytest.mark.parametrize("text, line, key, expected", [
    ("[/a]\nmode:fast\n", 2, "mode", "expected write_limit or no_limit, got 'fast'"),
    ("[/a]\n\n[/b]\ncompress:yes\n", 4, "compress", "expected true or false"),
    ("[/a]\nis_on_remote_storage:1\n", 2, "is_on_remote_storage", "expected true or false"),
    ("[/a]\nwrite_limit_period:often\n", 2, "write_limit_period", "expected a positive integer"),
    ("[/a]\nwrite_limit_write_cycles:0\n", 2, "write_limit_write_cycles",
     "expected a positive integer"),
    ("[/a]\nmode write_limit\n", 2, None, "expected 'key:value'"),
    ("mode:no_limit\n", 1, None, "expected a '[<database path>]' header"),
    ("[/a]\n\nmode:no_limit\n", 3, None, "expected a '[<database path>]' header"),
    ("[ ]\n", 1, None, "empty database path"),
    ("[/a]\n\n[/a]\n", 3, None, "listed twice"),
])
def test_errors_name_file_line_key(text, line, key, expected):
    with pytest.raises(ConfigError) as err:
        parse_db_conf(text, path="/etc/xensource/db.conf")
    assert (err.value.path, err.value.line, err.value.key) == ("/etc/xensource/db.conf", line, key)
    assert expected in str(err.value)
    assert str(err.value).startswith(f"/etc/xensource/db.conf:{line}: ")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_no_connection_is_an_error(text):
    with pytest.raises(ConfigError, match="no database connection"):
        parse_db_conf(text, path="db.conf")


def test_read_missing_db_conf_is_state_db_no_limit(tmp_path):
    paths = Paths(tmp_path)
    assert read_db_conf(paths) == [Connection(paths.state_db)]


def test_read_db_conf_under_root(tmp_path):
    paths = Paths(tmp_path)
    paths.db_conf.parent.mkdir(parents=True)
    paths.db_conf.write_text(XAPI_DB_CONF)
    conns = read_db_conf(paths)
    assert [c.path for c in conns] == [paths.state_db, paths.var_lib_xcp / "remote.db"]


def test_read_bad_db_conf_names_the_file(tmp_path):
    paths = Paths(tmp_path)
    paths.db_conf.parent.mkdir(parents=True)
    paths.db_conf.write_text("[/a]\nmode:x\n")
    with pytest.raises(ConfigError, match=f"^{paths.db_conf}:2: key 'mode'"):
        read_db_conf(paths)


def test_render_parses_back(tmp_path):
    paths = Paths(tmp_path)
    conns = parse_db_conf(XAPI_DB_CONF, paths=paths)
    text = render_db_conf(conns, paths)
    assert text.startswith("[/var/lib/xcp/state.db]\nmode:write_limit\n")
    assert parse_db_conf(text, paths=paths) == conns
    assert parse_db_conf(render_db_conf([Connection("/x.db")])) == [Connection(Path("/x.db"))]


def test_render_refuses_what_cannot_be_read_back(tmp_path):
    with pytest.raises(ConfigError, match="not under ROOT"):
        render_db_conf([Connection("/elsewhere/state.db")], Paths(tmp_path))
    with pytest.raises(ConfigError, match="known db.conf key"):
        render_db_conf([Connection("/a", other=(("MODE", "x"),))])
    with pytest.raises(ConfigError, match="could not be read back"):
        render_db_conf([Connection("/a", other=(("a:b", "x"),))])
    with pytest.raises(ConfigError, match="could not be read back"):
        render_db_conf([Connection("/a", other=(("k", "x\ny"),))])


def test_connection_checks_mode():
    with pytest.raises(ValueError):
        Connection("/a", mode="fast")


_segment = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True).filter(
    lambda s: s not in (".", ".."))
_other_key = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: k not in ("mode", "compress", "is_on_remote_storage", "write_limit_period",
                        "write_limit_write_cycles"))
_other_value = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                       max_size=12).map(str.strip)
_connections = st.builds(
    Connection,
    path=st.lists(_segment, min_size=1, max_size=4).map(lambda s: Path("/", *s)),
    mode=st.sampled_from(["write_limit", "no_limit"]),
    compress=st.booleans(), is_on_remote_storage=st.booleans(),
    write_limit_period_s=st.integers(1, 10**6), write_limit_write_cycles=st.integers(1, 1000),
    other=st.lists(st.tuples(_other_key, _other_value), max_size=3).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_connections, min_size=1, max_size=4, unique_by=lambda c: c.path))
def test_property_render_then_parse_round_trips(connections):
    assert parse_db_conf(render_db_conf(connections)) == connections
    paths = Paths("/tmp/xroot")
    under = [Connection(paths.under(c.path), c.mode, c.compress, c.is_on_remote_storage,
                        c.write_limit_period_s, c.write_limit_write_cycles, c.other)
             for c in connections]
    assert parse_db_conf(render_db_conf(under, paths), paths=paths) == under
