"""XenAPI sessions: logins, logouts and the check every call makes.

- ``login_with_password``: on the unix socket the caller is root already (xapi's
  pre-authenticated socket): no password check. Over TCP the password is checked against
  ``etc/xapi-users`` (read afresh each time); a slave answers ``HOST_IS_SLAVE [master]``.
- ``slave_local_login(pool_secret)`` and ``slave_local_login_with_password``: local sessions,
  kept in this process only (as xapi's Xapi_local_session), so they work while the pool DB is
  out of reach (emergency mode); ``local_logout`` ends them.
- Other sessions are rows of xapi-db's non-persistent ``session`` table. A call checks its
  session with ``db.touch_session`` (which also sets ``last_active``, in memory, no fsync) at
  most once per ``api-session-check-interval`` per session; in between the check is trusted.
  An unknown session is ``SESSION_INVALID [ref]``.
"""

import asyncio
import hmac
import logging
import time
import uuid as uuid_mod
from datetime import datetime, timezone

from common import inventory, schema
from common.errors import ConfigError, XapiError
from daemons.api import users

log = logging.getLogger("xapi-api")
AUTH_FAILURE = "Authentication failure"


def _now():
    return datetime.now(timezone.utc)


class Sessions:
    def __init__(self, api):
        self.api = api                 # the daemon: db, paths, config, role
        self.local = {}                # ref -> record of a local session
        self.checked = {}              # ref -> monotonic time of its last DB check
        self._host_ref = None

    @property
    def interval_s(self):
        return self.api.config["api-session-check-interval"]

    # -- the check of every call --------------------------------------------------------------
    async def check(self, ref):
        if not isinstance(ref, str):
            raise XapiError("SESSION_INVALID", repr(ref))
        if ref in self.local:
            return
        now = time.monotonic()
        last = self.checked.get(ref)
        if last is not None and now - last < self.interval_s:
            return
        try:
            await self.api.db.call("db.touch_session", ref)
        except XapiError as exc:
            if exc.code == "HANDLE_INVALID":
                self.checked.pop(ref, None)
                raise XapiError("SESSION_INVALID", ref) from None
            raise
        self.checked[ref] = now
        if len(self.checked) > 10000:    # forget the oldest: they are checked again if used
            for old in sorted(self.checked, key=self.checked.get)[:5000]:
                del self.checked[old]

    # -- logins ----------------------------------------------------------------------------------
    async def host_ref(self):
        if self._host_ref is None:
            values = inventory.read_inventory(self.api.paths.inventory)
            host_uuid = values.get(inventory.INSTALLATION_UUID)
            try:
                self._host_ref = await self.api.db.call("db.get_by_uuid", "host", host_uuid)
            except XapiError as exc:
                if exc.code != "UUID_INVALID":
                    raise
                return schema.NULL_REF      # not created yet (before dbsync): not cached
        return self._host_ref

    async def _check_password(self, user, password):
        path = self.api.paths.api_users
        try:
            stored = users.read_users(path).get(user)
        except ConfigError as exc:
            log.error("login of %r refused: %s", user, exc)
            stored = None
        if stored is None:
            log.info("login of %r refused: no such user in %s", user, path)
            raise XapiError("SESSION_AUTHENTICATION_FAILED", user, AUTH_FAILURE)
        ok = await asyncio.get_running_loop().run_in_executor(
            None, users.verify_password, password, stored)
        if not ok:
            log.info("login of %r refused: wrong password", user)
            raise XapiError("SESSION_AUTHENTICATION_FAILED", user, AUTH_FAILURE)

    async def login_with_password(self, transport, user, password, version="", originator=""):
        if transport == "tcp":
            if self.api.role == "slave":
                raise XapiError("HOST_IS_SLAVE", self.api.master_address or "")
            await self._check_password(user, password)
        record = {"this_host": await self.host_ref(), "last_active": _now(), "pool": False,
                  "is_local_superuser": True, "validation_time": _now(),
                  "auth_user_name": user, "originator": originator}
        ref = await self.api.db.call("db.create_row", "session", record)
        self.checked[ref] = time.monotonic()
        log.info("session %s: %s logged in over %s%s", _short(ref), user, transport,
                 f" ({originator})" if originator else "")
        return ref

    def _local_session(self, user):
        ref = f"OpaqueRef:{uuid_mod.uuid4()}"
        self.local[ref] = {"uuid": str(uuid_mod.uuid4()), "auth_user_name": user,
                           "pool": True, "last_active": _now()}
        return ref

    async def slave_local_login(self, pool_secret):
        try:
            secret = self.api.paths.ptoken.read_text().strip()
        except OSError as exc:
            log.error("slave_local_login: cannot read the pool secret: %s", exc)
            raise XapiError("SESSION_AUTHENTICATION_FAILED", "", AUTH_FAILURE) from None
        if not isinstance(pool_secret, str) or not secret or not hmac.compare_digest(
                pool_secret.encode(), secret.encode()):
            log.info("slave_local_login refused: wrong pool secret")
            raise XapiError("SESSION_AUTHENTICATION_FAILED", "", AUTH_FAILURE)
        return self._local_session("pool")

    async def slave_local_login_with_password(self, transport, user, password):
        if transport == "tcp":
            await self._check_password(user, password)
        return self._local_session(user)

    # -- logouts ---------------------------------------------------------------------------------
    async def logout(self, ref):
        if self.local.pop(ref, None) is not None:
            return
        self.checked.pop(ref, None)
        try:
            await self.api.db.call("db.delete_row", "session", ref)
        except XapiError as exc:
            if exc.code != "HANDLE_INVALID":
                raise
        log.info("session %s: logged out", _short(ref))

    async def local_logout(self, ref):
        if self.local.pop(ref, None) is None:
            raise XapiError("SESSION_INVALID", ref)


def _short(ref):
    return ref[len("OpaqueRef:"):][:8] if ref.startswith("OpaqueRef:") else ref[:8]
