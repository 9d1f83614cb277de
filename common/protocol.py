"""The bus envelope: msgpack options, request/reply shapes and size limits.

Imports nothing of ours, so every module can use it without cycles.

Request  {"v": 1, "id": n, "m": "db.read_field", "a": [...], "kw": {...}, "dl": deadline}
Reply    {"id": n, "ok": true, "r": value}  or  {"id": n, "ok": false, "e": [code, param, ...]}

``dl`` is an absolute deadline in seconds since the epoch (a server drops work whose deadline
has passed). Datetimes travel as msgpack Timestamps in UTC.
"""

import datetime
import threading

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
# ZeroMQ drops a peer that sends more than this; frames between MAX_FRAME_BYTES and this get an
# error reply instead, so the sender learns why.
ZMQ_MAXMSGSIZE_BYTES = 2 * MAX_FRAME_BYTES


def _default(obj):
    if isinstance(obj, datetime.datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=datetime.timezone.utc)
        return msgpack.Timestamp.from_datetime(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot send a value of type {type(obj).__name__} on the bus")


_local = threading.local()


def new_packer():
    """A Packer with the bus's options. It is not thread-safe: ``pack`` keeps one per thread,
    and an owner used from one thread only (a socket's server or client) may keep its own and
    call its ``pack`` directly (no Python frame on the hot path). It resets its buffer after
    each message, or on an error."""
    return msgpack.Packer(use_bin_type=True, default=_default, datetime=False)


def pack(value):
    # One Packer per thread, kept: msgpack.packb builds a Packer (and its buffer) on every
    # call, several times the cost of packing a small message.
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = new_packer()
    return packer.pack(value)


def unpack(frame):
    """Decode one frame; raises ValueError for anything that is not valid msgpack."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(frame)} bytes is over the limit of {MAX_FRAME_BYTES}")
    try:
        return msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=False,
            timestamp=3,  # msgpack Timestamp -> aware datetime in UTC
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"undecodable frame: {exc}") from None


def request(req_id, method, args=(), kwargs=None, deadline=None):
    return {"v": PROTOCOL_VERSION, "id": req_id, "m": method, "a": list(args),
            "kw": kwargs or {}, "dl": deadline}


def reply_ok(req_id, result):
    return {"id": req_id, "ok": True, "r": result}


def reply_error(req_id, description):
    return {"id": req_id, "ok": False, "e": list(description)}


_EMPTY = {}        # compared with, never handed out


def check_request(msg):
    """Validate a decoded request; returns (id, method, args, kwargs, deadline) or raises
    ValueError naming what is wrong."""
    if type(msg) is not dict:
        raise ValueError("request is not a map")
    # The shape every client of ours sends (no keyword arguments, a float deadline) told in
    # one pass; this runs for every request a daemon serves. Anything else is checked below,
    # step by step, to name what is wrong.
    version, method, args, deadline = msg.get("v"), msg.get("m"), msg.get("a"), msg.get("dl")
    if type(version) is int and version == PROTOCOL_VERSION and type(method) is str and method \
            and type(args) is list and msg.get("kw", _EMPTY) == _EMPTY \
            and type(deadline) is float:
        return msg.get("id"), method, args, {}, deadline
    if type(msg.get("v")) is not int or msg["v"] != PROTOCOL_VERSION:
        raise ValueError(f"unsupported protocol version {msg.get('v')!r}")
    req_id, method = msg.get("id"), msg.get("m")
    args, kwargs, deadline = msg.get("a", []), msg.get("kw", {}), msg.get("dl")
    if not isinstance(method, str) or not method:
        raise ValueError("request has no method name")
    if not isinstance(args, list):
        raise ValueError("request arguments are not a list")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError("request keyword arguments are not a map of names")
    if deadline is not None and (isinstance(deadline, bool)
                                 or not isinstance(deadline, (int, float))):
        raise ValueError("request deadline is not a number")
    return req_id, method, args, kwargs, deadline


def _as_on_the_bus(value):
    """A value as it comes back from the bus: tuples are lists, datetimes are aware (UTC)."""
    if isinstance(value, (list, tuple)):
        return [_as_on_the_bus(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_on_the_bus(v) for k, v in value.items()}
    if isinstance(value, datetime.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value


def same(a, b):
    """Whether a value read back from a daemon equals one about to be written: a write of an
    equal value is skipped (it would bump the generation and fire events for nothing)."""
    return _as_on_the_bus(a) == _as_on_the_bus(b)
