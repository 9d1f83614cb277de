"""local.db: the XML rows, write-through on change, a corrupt file set aside."""

import logging
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import localdb
from common.errors import ConfigError
from common.localdb import LocalDB


def test_missing_file_is_empty_and_not_created(tmp_path):
    db = LocalDB(tmp_path / "local.db")
    assert db.items() == {}
    assert db.get("x") is None and db.get("x", "d") == "d"
    assert db.get_bool(localdb.HA_ARMED) is False
    assert db.get_bool(localdb.HA_ARMED, default=True) is True
    assert not (tmp_path / "local.db").exists()


def test_put_writes_the_file_and_reloads(tmp_path):
    path = tmp_path / "var" / "lib" / "xcp" / "local.db"
    db = LocalDB(path)
    db.put(localdb.HA_ARMED, True)
    db.put(localdb.MASTER_SCRIPTS, "slave")
    db.put("count", 3)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert path.read_text() == ('<config>\n  <row key="count" value="3"/>\n'
                                '  <row key="ha.armed" value="true"/>\n'
                                '  <row key="master_scripts" value="slave"/>\n</config>\n')
    again = LocalDB(path)
    assert again.items() == {"ha.armed": "true", "master_scripts": "slave", "count": "3"}
    assert again.get_bool(localdb.HA_ARMED) is True
    db.put(localdb.HA_ARMED, False)
    assert LocalDB(path).get(localdb.HA_ARMED) == "false"


def test_reads_the_format_xapi_writes(tmp_path):
    path = tmp_path / "local.db"
    path.write_text("<?xml version=\"1.0\"?><config><row key=\"ha.armed\" value=\"false\"/>"
                    "<row key=\"a&amp;b\" value=\"&lt;&quot;&gt;\"/></config>")
    assert LocalDB(path).items() == {"ha.armed": "false", "a&b": '<">'}


def test_unchanged_put_does_not_write(tmp_path):
    path = tmp_path / "local.db"
    db = LocalDB(path)
    db.put("k", "v")
    os.utime(path, (0, 0))
    db.put("k", "v")
    assert os.stat(path).st_mtime == 0
    db.put("k", "w")
    assert os.stat(path).st_mtime != 0


def test_delete(tmp_path):
    path = tmp_path / "local.db"
    db = LocalDB(path)
    db.put("a", "1")
    db.put("b", "2")
    db.delete("a")
    db.delete("never-set")
    assert LocalDB(path).items() == {"b": "2"}


def test_items_is_a_copy(tmp_path):
    db = LocalDB(tmp_path / "local.db")
    db.put("a", "1")
    db.items()["a"] = "2"
    assert db.get("a") == "1"


def test_get_bool_values(tmp_path):
    db = LocalDB(tmp_path / "local.db")
    db.put(localdb.THIS_NODE_JUST_BECAME_MASTER, "true")
    db.put(localdb.HOST_DISABLED_UNTIL_REBOOT, "False")
    db.put("odd", "maybe")
    assert db.get_bool(localdb.THIS_NODE_JUST_BECAME_MASTER) is True
    assert db.get_bool(localdb.HOST_DISABLED_UNTIL_REBOOT, default=True) is False
    with pytest.raises(ConfigError, match="key 'odd': expected true or false, got 'maybe'"):
        db.get_bool("odd")


@pytest.mark.parametrize("content", [
    b"", b"not xml at all", b"<config><row key='a' value='b'></config>",
    b"<other><row key='a' value='b'/></other>", b"<config><row key='a'/></config>",
    b"<config><entry key='a' value='b'/></config>", b"\xff\xfe<config/>",
])
def test_corrupt_file_is_renamed_and_db_starts_empty(tmp_path, caplog, content):
    path = tmp_path / "local.db"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        db = LocalDB(path, logger=logging.getLogger("test.localdb"))
    assert db.items() == {}
    assert not path.exists()
    assert (tmp_path / "local.db.corrupt").read_bytes() == content
    assert any(str(path) in r.getMessage() and "corrupt" in r.getMessage()
               for r in caplog.records if r.name == "test.localdb")
    db.put("k", "v")
    assert LocalDB(path).items() == {"k": "v"}


@pytest.mark.parametrize("bad", ["nul\x00", "bell\x07", "\ud800", "\uffff"])
def test_put_refuses_text_xml_cannot_hold(tmp_path, bad):
    db = LocalDB(tmp_path / "local.db")
    with pytest.raises(ValueError):
        db.put("k", bad)
    with pytest.raises(ValueError):
        db.put(bad, "v")
    assert db.items() == {} and not (tmp_path / "local.db").exists()


_xml_text = st.text(st.characters(blacklist_categories=("Cs",),
                                  blacklist_characters="".join(
                                      map(chr, [*range(0, 9), 11, 12, *range(14, 32)]))
                                  + "\ufffe\uffff"),
                    max_size=20)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_xml_text, _xml_text, max_size=6))
def test_property_rows_round_trip(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("ldb") / "local.db"
    db = LocalDB(path)
    for key, value in rows.items():
        db.put(key, value)
    assert db.items() == rows
    assert LocalDB(path).items() == rows
