"""event.from / inject / get_current_id and the legacy register / next / unregister, on top of
xapi-db's event machinery (db.events_since blocks in xapi-db until a write matches or the
timeout passes: no polling here).

Legacy events (xapi's event.register/next): each session has a set of class names and a
token; ``next`` blocks until something newer than the token matches, and returns those events.
A ``next`` without ``register`` is ``SESSION_NOT_REGISTERED [session]``."""

from common import schema
from common.errors import XapiError
from daemons.api import marshal as m
from daemons.api.methods import Method

MAX_FROM_TIMEOUT_S = 300.0     # xapi-db's own cap on one wait
NEXT_SLICE_S = 60.0            # event.next waits in slices, rechecking its registration
RPC_MARGIN_S = 10.0


class Events:
    def __init__(self, api):
        self.api = api
        self.registered = {}       # session ref -> {"classes": set, "token": str}

    async def _since(self, classes, token, timeout_s):
        return await self.api.db.call("db.events_since", list(classes), token, timeout_s,
                                      timeout_s=timeout_s + RPC_MARGIN_S)

    async def event_from(self, call, classes, token, timeout):
        timeout = max(0.0, min(float(timeout), MAX_FROM_TIMEOUT_S))
        return await self._since(classes, token, timeout)

    async def inject(self, call, cls_name, ref):
        try:
            cls = schema.get_class(cls_name)
        except KeyError:
            raise XapiError("HANDLE_INVALID", cls_name, ref) from None
        return await self.api.db.call("db.inject", cls.name, ref)

    async def get_current_id(self, call):
        token = await self.api.db.call("db.token")
        return int(token.partition(",")[0])

    async def register(self, call, classes):
        entry = self.registered.get(call.session)
        if entry is None:
            entry = {"classes": set(), "token": await self.api.db.call("db.token")}
            self.registered[call.session] = entry
        entry["classes"].update(classes)

    async def unregister(self, call, classes):
        entry = self.registered.get(call.session)
        if entry is None:
            return
        entry["classes"].difference_update(classes)
        if not entry["classes"]:
            del self.registered[call.session]

    async def next(self, call):
        while True:
            entry = self.registered.get(call.session)
            if entry is None:
                raise XapiError("SESSION_NOT_REGISTERED", call.session)
            result = await self._since(sorted(entry["classes"]), entry["token"], NEXT_SLICE_S)
            if self.registered.get(call.session) is entry:
                entry["token"] = result["token"]
            if result["events"]:
                return result["events"]
            await self.api.sessions.check(call.session)   # a logged-out session stops

    def forget_session(self, ref):
        self.registered.pop(ref, None)

    def methods(self):
        classes = ("classes", m.set_of(m.STRING))
        return [
            Method("event.from", (classes, ("token", m.STRING), ("timeout", m.FLOAT)),
                   m.EVENT_BATCH, self.event_from),
            Method("event.inject", (("class", m.STRING), ("ref", m.STRING)), m.STRING,
                   self.inject),
            Method("event.get_current_id", (), m.INT, self.get_current_id),
            Method("event.register", (classes,), m.VOID, self.register),
            Method("event.unregister", (classes,), m.VOID, self.unregister),
            Method("event.next", (), m.set_of(m.EVENT), self.next),
        ]
