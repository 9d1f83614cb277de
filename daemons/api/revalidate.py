"""Session revalidation: ``api.revalidate_sessions``, the RPC of the periodic job
"session-revalidation" (master; xapi's "session_revalidation_func", every
session_revalidation_interval, first after 5 min).

xapi's rule (xen-api xapi_session.ml revalidate_all_sessions / revalidate_external_session):
only externally-authenticated sessions are revalidated, i.e. those with is_local_superuser false
(and not made from a client certificate); such a session is destroyed at once when the pool
master's external_auth_type is "" (external authentication disabled); otherwise, once its
validation_time is older than 30 min plus a random 0-10 min (spreading the directory queries),
its subject is checked against the external directory and the session is destroyed when the
subject is suspended, gone or has lost its access. xapi-py has no external directory plugin, so
a session due for revalidation cannot be confirmed: it is destroyed (fail closed, as xapi does
when the directory no longer resolves the subject). Sessions of local superusers (every login
with etc/xapi-users, and pool logins) are never touched here.

Inactive sessions (last_active older than 24 h) are not this job's: xapi-db's GC removes them
(xapi's Db_gc.timeout_sessions).
"""

import datetime
import random

from common.errors import XapiError

SESSION_LIFESPAN_S = 30 * 60.0      # xapi: allowed session lifespan before revalidation
RANDOM_LIFESPAN_S = 10 * 60.0       # xapi: up to this much more, at random


def _utc(value):
    if not isinstance(value, datetime.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def doomed_sessions(sessions, external_auth_type, now, rand=random.random):
    """[(ref, reason)] of the sessions of ``sessions`` ({ref: record}) that revalidation destroys
    at ``now`` (an aware datetime); ``rand()`` in [0, 1) draws each session's extra lifespan."""
    doomed = []
    for ref, record in sorted(sessions.items()):
        if record.get("is_local_superuser") or record.get("client_certificate"):
            continue
        if not external_auth_type:
            doomed.append((ref, "external authentication is disabled"))
            continue
        validated = _utc(record.get("validation_time"))
        age = (now - validated).total_seconds() if validated else float("inf")
        if age > SESSION_LIFESPAN_S + rand() * RANDOM_LIFESPAN_S:
            doomed.append((ref, f"due for revalidation (validated {age:.0f} s ago) and no "
                                f"external directory ({external_auth_type}) can confirm its "
                                "subject"))
    return doomed


async def master_external_auth_type(db):
    """The pool master's external_auth_type ("" when there is no pool record yet)."""
    pools = await db.call("db.read_records_where", "pool", ["true"])
    if not pools:
        return ""
    master = pools[sorted(pools)[0]]["master"]
    try:
        return await db.call("db.read_field", "host", master, "external_auth_type") or ""
    except XapiError as exc:
        if exc.code == "HANDLE_INVALID":
            return ""
        raise


async def revalidate_sessions(api, now=None, rand=random.random):
    """RPC: destroy the sessions revalidation fails (see the module); returns how many."""
    sessions = await api.db.call("db.read_records_where", "session", ["true"])
    auth_type = await master_external_auth_type(api.db)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    destroyed = 0
    for ref, reason in doomed_sessions(sessions, auth_type, now, rand):
        try:
            await api.db.call("db.delete_row", "session", ref)
        except XapiError as exc:
            if exc.code != "HANDLE_INVALID":        # gone meanwhile (a logout): fine
                raise
            continue
        api.sessions.checked.pop(ref, None)
        api.events.forget_session(ref)
        api.log.info("session %s (%s) destroyed by revalidation: %s",
                     sessions[ref].get("uuid", "?")[:8], sessions[ref].get("auth_user_name"),
                     reason)
        destroyed += 1
    return destroyed
