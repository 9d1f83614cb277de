"""The inventory: xapi's parsing quirks, atomic rewrite, creation of a missing file."""

import os
import stat
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import inventory
from common.errors import ConfigError
from common.inventory import (ensure_inventory, parse_inventory, read_inventory,
                              write_inventory)


def test_split_at_first_equals_and_quote_whitespace_order():
    text = "\n".join([
        "A = ' x '",
        "B=''v''",
        "C='a=b=c'",
        "  D  =  plain  ",
        "E=''",
        "F=",
        "G='unterminated",
        "H=\"double\"",
        "I=' '",
        "J='",
    ])
    assert parse_inventory(text) == {
        "A": "x", "B": "'v'", "C": "a=b=c", "D": "plain", "E": "", "F": "",
        "G": "'unterminated", "H": '"double"', "I": "", "J": "'",
    }


def test_blank_and_comment_lines_skipped_crlf_tolerated():
    text = "# comment\n\n   \n  # indented comment\r\nK='v'\r\n"
    assert parse_inventory(text) == {"K": "v"}


def test_later_duplicate_wins():
    assert parse_inventory("K='1'\nK='2'\n") == {"K": "2"}


def test_line_without_equals_names_file_and_line():
    with pytest.raises(ConfigError) as err:
        parse_inventory("A='1'\n\nBROKEN LINE\n", path="/etc/xensource-inventory")
    assert (err.value.path, err.value.line) == ("/etc/xensource-inventory", 3)
    assert "expected KEY='value'" in str(err.value)
    assert str(err.value).startswith("/etc/xensource-inventory:3: ")


def test_write_sorted_quoted_atomic_mode(tmp_path):
    path = tmp_path / "etc" / "xensource-inventory"
    write_inventory(path, {"B": "2", "A": "one two", "C": ""})
    assert path.read_text() == "A='one two'\nB='2'\nC=''\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert read_inventory(path) == {"A": "one two", "B": "2", "C": ""}
    assert [p.name for p in path.parent.iterdir()] == ["xensource-inventory"]


def test_write_replaces_whole_file(tmp_path):
    path = tmp_path / "inv"
    write_inventory(path, {"A": "1", "B": "2"})
    write_inventory(path, {"A": "3"})
    assert read_inventory(path) == {"A": "3"}


@pytest.mark.parametrize("value, reason", [
    ("it's", "single quote"), ("a\nb", "line break"), ("a\rb", "line break"),
    (" x", "could not be read back"), ("x\t", "could not be read back"),
])
def test_write_refuses_values_that_cannot_be_read_back(tmp_path, value, reason):
    path = tmp_path / "inv"
    with pytest.raises(ConfigError, match=reason) as err:
        write_inventory(path, {"K": value})
    assert err.value.key == "K"
    assert not path.exists()


@pytest.mark.parametrize("key", ["A=B", "#A", "A B", "", "1A", "A-B"])
def test_write_refuses_keys_that_are_not_shell_names(tmp_path, key):
    with pytest.raises(ConfigError, match="shell variable name"):
        write_inventory(tmp_path / "inv", {key: "v"})


def test_read_missing_propagates(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_inventory(tmp_path / "missing")


def test_ensure_creates_missing_inventory(tmp_path):
    path = tmp_path / "etc" / "xensource-inventory"
    values, created = ensure_inventory(path)
    assert created
    assert set(values) == {"INSTALLATION_UUID", "CONTROL_DOMAIN_UUID", "MANAGEMENT_INTERFACE",
                           "MANAGEMENT_ADDRESS_TYPE", "BUILD_NUMBER"}
    uuid.UUID(values[inventory.INSTALLATION_UUID])
    uuid.UUID(values[inventory.CONTROL_DOMAIN_UUID])
    assert values[inventory.INSTALLATION_UUID] != values[inventory.CONTROL_DOMAIN_UUID]
    assert values[inventory.MANAGEMENT_INTERFACE] == ""
    assert values[inventory.MANAGEMENT_ADDRESS_TYPE] == "IPv4"
    assert values[inventory.BUILD_NUMBER] == "0"
    assert "MANAGEMENT_INTERFACE=''\n" in path.read_text()
    again, created_again = ensure_inventory(path)
    assert (again, created_again) == (values, False)


def test_ensure_reads_existing_inventory(tmp_path):
    path = tmp_path / "inv"
    path.write_text("INSTALLATION_UUID='i'\nCONTROL_DOMAIN_UUID='c'\nX='y'\n")
    assert ensure_inventory(path) == ({"INSTALLATION_UUID": "i", "CONTROL_DOMAIN_UUID": "c",
                                       "X": "y"}, False)
    assert path.read_text() == "INSTALLATION_UUID='i'\nCONTROL_DOMAIN_UUID='c'\nX='y'\n"


@pytest.mark.parametrize("text, missing", [
    ("CONTROL_DOMAIN_UUID='c'\n", "INSTALLATION_UUID"),
    ("INSTALLATION_UUID='i'\n", "CONTROL_DOMAIN_UUID"),
    ("INSTALLATION_UUID='i'\nCONTROL_DOMAIN_UUID=''\n", "CONTROL_DOMAIN_UUID"),
])
def test_ensure_refuses_inventory_without_uuids(tmp_path, text, missing):
    path = tmp_path / "inv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        ensure_inventory(path)
    assert err.value.key == missing and err.value.path == path
    assert str(path) in str(err.value) and missing in str(err.value)


_keys = st.from_regex(r"[A-Z_][A-Z0-9_]{0,20}", fullmatch=True)
_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="'\n\r"),
                  max_size=30).map(str.strip)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=8))
def test_property_write_then_read_round_trips(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("inv") / "xensource-inventory"
    write_inventory(path, values)
    assert read_inventory(path) == values


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_property_parse_gives_a_dict_or_a_config_error(text):
    try:
        values = parse_inventory(text)
    except ConfigError as err:
        assert err.line is not None
    else:
        assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in values.items())
