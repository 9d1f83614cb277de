"""Session revalidation (daemons/api/revalidate.py) on a fake clock: xapi's rule for
externally-authenticated sessions, and api.revalidate_sessions against an in-memory session
table (rows destroyed, the count returned, local superusers kept)."""

import asyncio
import datetime as dt
import logging
from types import SimpleNamespace

from common.errors import XapiError
from daemons.api import revalidate

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def row(superuser, validated_s_ago, **extra):
    return {"uuid": "u" * 8, "auth_user_name": "someone", "is_local_superuser": superuser,
            "validation_time": NOW - dt.timedelta(seconds=validated_s_ago), **extra}


SESSIONS = {
    "OpaqueRef:root": row(True, 10 * 86400),
    "OpaqueRef:fresh": row(False, 60),
    "OpaqueRef:stale": row(False, 45 * 60),
    "OpaqueRef:edge": row(False, 35 * 60),
    "OpaqueRef:cert": row(False, 86400, client_certificate=True),
}


def test_external_auth_disabled_destroys_every_external_session():
    doomed = dict(revalidate.doomed_sessions(SESSIONS, "", NOW, rand=lambda: 0.0))
    assert set(doomed) == {"OpaqueRef:fresh", "OpaqueRef:stale", "OpaqueRef:edge"}
    assert all("disabled" in why for why in doomed.values())


def test_due_sessions_follow_30_min_plus_a_random_10():
    at_least = dict(revalidate.doomed_sessions(SESSIONS, "AD", NOW, rand=lambda: 0.0))
    assert set(at_least) == {"OpaqueRef:stale", "OpaqueRef:edge"}       # past 30 min
    at_most = dict(revalidate.doomed_sessions(SESSIONS, "AD", NOW, rand=lambda: 0.999))
    assert set(at_most) == {"OpaqueRef:stale"}                           # past 40 min only
    later = NOW + dt.timedelta(minutes=30)
    assert "OpaqueRef:fresh" in dict(revalidate.doomed_sessions(SESSIONS, "AD", later,
                                                                rand=lambda: 0.0))


class FakeDb:
    """xapi-db's session, pool and host tables, as the RPC reads and deletes them."""

    def __init__(self, sessions, auth_type):
        self.sessions = dict(sessions)
        self.auth_type = auth_type

    async def call(self, method, *args):
        if method == "db.read_records_where" and args[0] == "session":
            return dict(self.sessions)
        if method == "db.read_records_where" and args[0] == "pool":
            return {"OpaqueRef:pool": {"master": "OpaqueRef:host"}}
        if method == "db.read_field" and args[:2] == ("host", "OpaqueRef:host"):
            return self.auth_type
        if method == "db.delete_row" and args[0] == "session":
            if self.sessions.pop(args[1], None) is None:
                raise XapiError("HANDLE_INVALID", "session", args[1])
            return None
        raise AssertionError(f"unexpected call {method} {args}")


def fake_api(db):
    forgotten = []
    api = SimpleNamespace(db=db, log=logging.getLogger("test"),
                          sessions=SimpleNamespace(checked={r: 0 for r in db.sessions}),
                          events=SimpleNamespace(forget_session=forgotten.append))
    return api, forgotten


def test_the_rpc_destroys_the_rows_and_returns_the_count():
    db = FakeDb(SESSIONS, "")
    api, forgotten = fake_api(db)
    count = asyncio.run(revalidate.revalidate_sessions(api, now=NOW, rand=lambda: 0.0))
    assert count == 3
    assert set(db.sessions) == {"OpaqueRef:root", "OpaqueRef:cert"}
    assert set(forgotten) == {"OpaqueRef:fresh", "OpaqueRef:stale", "OpaqueRef:edge"}
    assert set(api.sessions.checked) == {"OpaqueRef:root", "OpaqueRef:cert"}
    assert asyncio.run(revalidate.revalidate_sessions(api, now=NOW)) == 0    # nothing left


def test_a_session_gone_meanwhile_is_not_counted():
    db = FakeDb(SESSIONS, "AD")
    real_call = db.call

    async def racing(method, *args):
        if method == "db.delete_row" and args[1] == "OpaqueRef:stale":
            db.sessions.pop("OpaqueRef:stale")        # a logout got there first
        return await real_call(method, *args)
    db.call = racing
    api, _ = fake_api(db)
    assert asyncio.run(revalidate.revalidate_sessions(api, now=NOW, rand=lambda: 0.0)) == 1
    assert "OpaqueRef:edge" not in db.sessions
