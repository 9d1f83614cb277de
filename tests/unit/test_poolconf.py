"""pool.conf: the role token, IPv6 masters, broken on anything unexpected."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from common.poolconf import Role, parse_pool_conf, read_role, write_role


@pytest.mark.parametrize("text, role", [
    ("master", Role("master")),
    ("  master\n\n", Role("master")),
    ("broken\n", Role("broken")),
    ("slave:10.0.0.1\n", Role("slave", "10.0.0.1")),
    ("slave: 10.0.0.1 ", Role("slave", "10.0.0.1")),
    ("slave:fe80::1", Role("slave", "fe80::1")),
    ("slave:[fe80::1%eth0]", Role("slave", "[fe80::1%eth0]")),
    ("slave:host.example:443", Role("slave", "host.example:443")),
])
def test_parse_tokens(text, role):
    assert parse_pool_conf(text) == role


def test_role_properties_and_token():
    master, slave, broken = Role("master"), Role("slave", "fe80::1"), Role("broken", reason="r")
    assert (master.is_master, master.is_slave, master.is_broken) == (True, False, False)
    assert (slave.is_master, slave.is_slave, slave.is_broken) == (False, True, False)
    assert (broken.is_master, broken.is_slave, broken.is_broken) == (False, False, True)
    assert [str(master), str(slave), str(broken)] == ["master", "slave:fe80::1", "broken"]


def test_role_refuses_inconsistent_fields():
    for bad in (lambda: Role("primary"), lambda: Role("slave"), lambda: Role("master", "x")):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize("text", ["", "Master", "slave", "primary", "master\nslave:1.2.3.4"])
def test_anything_else_is_broken_with_a_reason(text):
    role = parse_pool_conf(text, path="/etc/xensource/pool.conf")
    assert role.is_broken
    assert role.reason == ("/etc/xensource/pool.conf: expected 'master', 'slave:<address>' or "
                           f"'broken', got '{text.strip()}'")


def test_slave_without_address_is_broken():
    role = parse_pool_conf("slave:  \n", path="p")
    assert role.is_broken and "without a master address" in role.reason


def test_long_garbage_is_truncated_in_the_reason():
    role = parse_pool_conf("x" * 10000)
    assert role.is_broken and len(role.reason) < 300


def test_read_missing_is_broken(tmp_path):
    path = tmp_path / "pool.conf"
    assert read_role(path) == Role("broken", reason=f"{path} is missing")


def test_read_undecodable_is_broken(tmp_path):
    path = tmp_path / "pool.conf"
    path.write_bytes(b"slave:\xff\xfe\n")
    role = read_role(path)
    assert role.is_broken and "not UTF-8" in role.reason and str(path) in role.reason


def test_read_unreadable_is_broken(tmp_path):
    path = tmp_path / "pool.conf"
    path.mkdir()
    role = read_role(path)
    assert role.is_broken and "cannot read" in role.reason


def test_write_and_read(tmp_path):
    path = tmp_path / "etc" / "xensource" / "pool.conf"
    write_role(path, Role("slave", "fe80::1"))
    assert path.read_text() == "slave:fe80::1\n"
    assert read_role(path) == Role("slave", "fe80::1")
    write_role(path, "master")
    assert path.read_text() == "master\n"
    write_role(path, Role("broken", reason="not persisted"))
    assert read_role(path) == Role("broken")


@pytest.mark.parametrize("role", ["slave:", "primary", "", Role("slave", " 10.0.0.1")])
def test_write_refuses_what_cannot_be_read_back(tmp_path, role):
    path = tmp_path / "pool.conf"
    with pytest.raises(ConfigError):
        write_role(path, role)
    assert not path.exists()


def test_write_refuses_other_types(tmp_path):
    with pytest.raises(TypeError):
        write_role(tmp_path / "pool.conf", 1)


_addresses = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                     max_size=40).map(str.strip).filter(bool)
_roles = st.one_of(st.just(Role("master")), st.just(Role("broken")),
                   _addresses.map(lambda a: Role("slave", a)))


@settings(max_examples=80, deadline=None)
@given(_roles)
def test_property_write_then_read_round_trips(tmp_path_factory, role):
    path = tmp_path_factory.mktemp("pool") / "pool.conf"
    write_role(path, role)
    assert read_role(path) == role
    assert parse_pool_conf(str(role)) == role


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_property_parse_never_raises(text):
    role = parse_pool_conf(text)
    assert role.is_broken == (role.reason is not None) or text.strip() == "broken"
