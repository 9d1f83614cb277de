"""Fixtures shared by the unit tests."""

import shutil
import tempfile

import pytest

from db_harness import Env


@pytest.fixture
def env():
    """A temp ROOT for an xapi-db Engine, removed after the test."""
    env = Env()
    yield env
    env.close()


@pytest.fixture
def endpoint():
    """An ipc:// endpoint in a short temp dir (socket paths must stay under 107 bytes)."""
    tmp = tempfile.mkdtemp(prefix="x", dir="/tmp")
    try:
        yield f"ipc://{tmp}/t.rpc"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
