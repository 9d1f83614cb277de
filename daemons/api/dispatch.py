"""One XenAPI call from the wire to a reply: the boot-state gate, the method table, the arity,
the session, the typed parameters, the call and the typed result.

Order of the checks (as xapi): a host not ready (booting, or in emergency mode) answers every
call outside the emergency list with its stored error; then an unknown method is
``MESSAGE_METHOD_UNKNOWN [method]``; a wrong number of parameters
``MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, given]`` (the session counted); an unknown
session ``SESSION_INVALID [ref]``; a parameter of the wrong type ``FIELD_TYPE_ERROR [param]``.
Errors from xapi-db travel unchanged (HANDLE_INVALID, UUID_INVALID, MAP_DUPLICATE_KEY...).
"""

import logging
from dataclasses import dataclass

from common.errors import XapiError
from daemons.api import marshal as m
from daemons.api.methods import EMERGENCY_CALLS

log = logging.getLogger("xapi-api")


@dataclass
class Call:
    api: object
    transport: str       # "unix" | "tcp"
    wire: str            # marshal.XML | marshal.JSON
    session: str | None = None


class Dispatcher:
    def __init__(self, api):
        self.api = api
        self.table = {}          # filled by the command api.register_methods
        self.calls = 0
        self.failures = {}

    async def dispatch(self, name, params, transport, wire, encode=None):
        """-> (True, value in wire form) or (False, ErrorDescription list). With ``encode``
        (``fn(type, typed value)``, e.g. xmlrpc_wire.success_typed), the result is passed
        through it instead of marshal.to_wire, and what it returns is the value."""
        self.calls += 1
        try:
            return True, await self._dispatch(name, params, transport, wire, encode)
        except XapiError as exc:
            description = exc.description
        except Exception as exc:     # a bug: said in the log, the client gets INTERNAL_ERROR
            log.exception("%s failed", name)
            description = ["INTERNAL_ERROR", f"{name}: {type(exc).__name__}: {exc}"]
        self.failures[description[0]] = self.failures.get(description[0], 0) + 1
        return False, description

    async def _dispatch(self, name, params, transport, wire, encode):
        api = self.api
        if api.boot_error and name not in EMERGENCY_CALLS:
            raise XapiError(*api.boot_error)
        method = self.table.get(name)
        if method is None:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", name)
        given, expected = len(params), method.arity
        if not expected - method.optional <= given <= expected:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", name, str(expected), str(given))
        call = Call(api, transport, wire)
        if method.session:
            call.session = params[0]
            await api.sessions.check(params[0])
            params = params[1:]
        args = [m.from_wire(ptype, value, pname)
                for (pname, ptype), value in zip(method.params, params)]
        result = await method.fn(call, *args)
        if encode is not None:
            return encode(method.result, result)
        return m.to_wire(method.result, result, wire)
