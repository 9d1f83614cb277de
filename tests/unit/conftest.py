"""Fixtures shared by the unit tests."""

import pytest

from db_harness import Env


@pytest.fixture
def env():
    """A temp ROOT for an xapi-db Engine, removed after the test."""
    env = Env()
    yield env
    env.close()
