"""JSON-RPC 1.0 and 2.0 as xapi speaks them (xen-api wire-protocol.md): a request is an object
with ``method``, ``params`` (an array) and an ``id`` that is not null; ``"jsonrpc": "2.0"`` makes
it version 2. Replies: v1 ``{result, error, id}`` with ``error`` the ErrorDescription array (or
null); v2 ``{jsonrpc, result, id}`` or ``{jsonrpc, error: {code: 1, message: CODE, data:
[params]}, id}``."""

import json

from daemons.api.xmlrpc_wire import WireError

CONTENT_TYPE = "application/json"


class Request:
    __slots__ = ("method", "params", "id", "v2")

    def __init__(self, method, params, req_id, v2):
        self.method, self.params, self.id, self.v2 = method, params, req_id, v2


def parse(body):
    try:
        msg = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(f"JSON-RPC parse error: {exc}") from None
    if not isinstance(msg, dict):
        raise WireError("JSON-RPC: the request is not an object")
    method, params, req_id = msg.get("method"), msg.get("params", []), msg.get("id")
    version = msg.get("jsonrpc")
    if not isinstance(method, str) or not method:
        raise WireError("JSON-RPC: no method name")
    if not isinstance(params, list):
        raise WireError("JSON-RPC: params is not an array")
    if req_id is None or isinstance(req_id, bool) or not isinstance(req_id, (str, int)):
        raise WireError("JSON-RPC: the id must be a string or an integer (no notifications)")
    if version is not None and version != "2.0":
        raise WireError(f"JSON-RPC: unknown version {version!r}")
    return Request(method, params, req_id, version == "2.0")


def _encode(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def success(request, value):
    if request.v2:
        return _encode({"jsonrpc": "2.0", "result": value, "id": request.id})
    return _encode({"result": value, "error": None, "id": request.id})


def failure(request, description):
    description = [str(item) for item in description]
    if request.v2:
        return _encode({"jsonrpc": "2.0", "error": {"code": 1, "message": description[0],
                                                    "data": description[1:]},
                        "id": request.id})
    return _encode({"result": None, "error": description, "id": request.id})
