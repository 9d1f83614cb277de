"""The XenAPI password file (daemons/api/users.py) and `xapi-ctl passwd` (daemons/ctl/passwd.py),
the latter run as the real command with the password on standard input."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from common.errors import ConfigError
from daemons.api import users

BIN = Path(sys.executable).parent


@pytest.fixture
def root():
    tmp = tempfile.mkdtemp(prefix="x", dir="/tmp")
    yield Path(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def passwd(root, user, stdin):
    return subprocess.run([str(BIN / "xapi-ctl"), "--root", str(root), "passwd", user],
                          input=stdin, capture_output=True, text=True, timeout=30)


def test_hash_and_verify():
    stored = users.hash_password("pa ss")
    assert stored.startswith("scrypt$16384$8$1$")
    assert users.verify_password("pa ss", stored)
    assert not users.verify_password("pa ss ", stored)
    assert users.hash_password("pa ss") != stored           # salted
    for bad in ("", "scrypt$x", "md5$1$2$3$4$5", stored.replace("16384", "3")):
        assert not users.verify_password("pa ss", bad)


def test_set_password_keeps_the_others_and_is_private(root):
    path = root / "etc" / "xapi-users"
    users.set_password(path, "root", "one")
    users.set_password(path, "alice", "two")
    users.set_password(path, "root", "three")
    table = users.read_users(path)
    assert set(table) == {"root", "alice"}
    assert users.verify_password("three", table["root"])
    assert users.verify_password("two", table["alice"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_bad_file_names_file_and_line(root):
    path = root / "xapi-users"
    path.write_text("root:scrypt$1$2$3$4$5\nnot a line\n")
    with pytest.raises(ConfigError) as err:
        users.read_users(path)
    assert f"{path}:2" in str(err.value)
    with pytest.raises(ConfigError):         # and is not rewritten over
        users.set_password(path, "root", "x")
    assert users.read_users(root / "missing") == {}


@pytest.mark.parametrize("name", ["", "a:b", "a b", "x" * 65, "\n"])
def test_bad_user_names(name):
    with pytest.raises(ValueError):
        users.check_user_name(name)


def test_xapi_ctl_passwd_reads_one_line_of_stdin(root):
    done = passwd(root, "root", "s3cret\nignored\n")
    assert done.returncode == 0, done.stderr
    stored = users.read_users(root / "etc" / "xapi-users")["root"]
    assert users.verify_password("s3cret", stored)
    done = passwd(root, "root", "with space\r\n")
    assert done.returncode == 0, done.stderr
    assert users.verify_password("with space",
                                 users.read_users(root / "etc" / "xapi-users")["root"])


def test_xapi_ctl_passwd_refuses_bad_input(root):
    done = passwd(root, "root", "\n")
    assert done.returncode == 1 and "empty password" in done.stderr
    done = passwd(root, "ro:ot", "x\n")
    assert done.returncode == 1 and "invalid user name" in done.stderr
    assert not (root / "etc" / "xapi-users").exists()
