"""Request/reply between daemons: an asyncio ROUTER server with a method registry and DEALER
clients (asyncio and blocking) with deadlines and retries for idempotent calls."""

import asyncio
import inspect
import itertools
import logging
import time

import zmq
import zmq.asyncio

from common import protocol
from common.errors import RpcError, RpcTimeout, XapiError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


def _set_common_options(sock, linger_ms):
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.ZMQ_MAXMSGSIZE_BYTES)


class RpcServer:
    """A ROUTER socket serving registered methods. Each request runs as its own task, so a slow
    method does not hold up the others; the reply carries the request id."""

    def __init__(self, endpoint, context=None, max_concurrent=256):
        self.endpoint = endpoint
        self.context = context or zmq.asyncio.Context.instance()
        self.methods = {}
        self.calls = {}
        self.errors = {"decode": 0, "method": 0}
        self._sock = None
        self._reader = None
        self._tasks = set()
        self._slots = asyncio.Semaphore(max_concurrent)

    def register(self, name, fn):
        self.methods[name] = fn

    def bind(self):
        sock = self.context.socket(zmq.ROUTER)
        _set_common_options(sock, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        sock.bind(self.endpoint)
        self._sock = sock

    def start(self):
        if self._sock is None:
            self.bind()
        self._reader = asyncio.get_running_loop().create_task(self._serve())

    async def close(self):
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    async def _serve(self):
        while True:
            frames = await self._sock.recv_multipart(copy=True)
            if len(frames) != 2:
                self.errors["decode"] += 1
                log.warning("rpc %s: dropped a message of %d frames (expected 2)",
                            self.endpoint, len(frames))
                continue
            identity, payload = frames
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._handle(identity, payload))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task):
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, identity, payload):
        req_id = None
        try:
            msg = protocol.unpack(payload)
            if isinstance(msg, dict):
                req_id = msg.get("id")
            req_id, method, args, kwargs, deadline = protocol.check_request(msg)
        except ValueError as exc:
            self.errors["decode"] += 1
            log.warning("rpc %s: bad request: %s", self.endpoint, exc)
            await self._send(identity, protocol.reply_error(
                req_id, ["MESSAGE_DECODE_ERROR", str(exc)]))
            return
        fn = self.methods.get(method)
        if fn is None:
            self.errors["method"] += 1
            await self._send(identity, protocol.reply_error(
                req_id, ["MESSAGE_METHOD_UNKNOWN", method]))
            return
        self.calls[method] = self.calls.get(method, 0) + 1
        if deadline is not None and deadline < time.time():
            log.info("rpc %s: %s arrived after its deadline; dropped", self.endpoint, method)
            return
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            reply = protocol.reply_ok(req_id, result)
        except XapiError as exc:
            reply = protocol.reply_error(req_id, exc.description)
        except TypeError as exc:
            # Wrong arity or keyword: the caller's mistake, named like XenAPI does.
            if _is_call_signature_error(fn, args, kwargs):
                reply = protocol.reply_error(
                    req_id, ["MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(exc)])
            else:
                log.exception("rpc %s: %s failed", self.endpoint, method)
                reply = protocol.reply_error(req_id, ["INTERNAL_ERROR", f"{method}: {exc}"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("rpc %s: %s failed", self.endpoint, method)
            reply = protocol.reply_error(req_id, ["INTERNAL_ERROR", f"{method}: {exc}"])
        await self._send(identity, reply)

    async def _send(self, identity, reply):
        try:
            data = protocol.pack(reply)
        except (TypeError, ValueError) as exc:
            log.error("rpc %s: reply not encodable: %s", self.endpoint, exc)
            data = protocol.pack(protocol.reply_error(
                reply.get("id"), ["INTERNAL_ERROR", f"reply not encodable: {exc}"]))
        await self._sock.send_multipart([identity, data])


def _is_call_signature_error(fn, args, kwargs):
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return True
    except ValueError:
        return False
    return False


def _result(reply, endpoint, method):
    if not isinstance(reply, dict) or "ok" not in reply:
        raise RpcError("MESSAGE_DECODE_ERROR", f"bad reply from {endpoint} to {method}")
    if reply["ok"]:
        return reply.get("r")
    raise XapiError.from_description(reply.get("e") or [])


class AsyncRpcClient:
    """A DEALER client for one endpoint, used from one asyncio loop. Concurrent calls share the
    socket; replies are matched by id."""

    def __init__(self, endpoint, context=None, timeout_s=DEFAULT_TIMEOUT_S):
        self.endpoint = endpoint
        self.context = context or zmq.asyncio.Context.instance()
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._pending = {}
        self._sock = None
        self._reader = None

    def _connect(self):
        sock = self.context.socket(zmq.DEALER)
        _set_common_options(sock, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(self.endpoint)
        self._sock = sock
        self._reader = asyncio.get_running_loop().create_task(self._read(sock))

    async def _read(self, sock):
        while True:
            frames = await sock.recv_multipart()
            try:
                reply = protocol.unpack(frames[-1])
            except ValueError as exc:
                log.warning("rpc client %s: undecodable reply: %s", self.endpoint, exc)
                continue
            fut = self._pending.pop(reply.get("id") if isinstance(reply, dict) else None, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def _reset(self):
        if self._reader is not None:
            self._reader.cancel()
        if self._sock is not None:
            self._sock.close(0)
        self._sock = self._reader = None

    async def call(self, method, *args, timeout_s=None, retries=0, **kwargs):
        """Call ``method``; ``retries`` > 0 only for idempotent methods: on a timeout the
        request is sent again, within the same overall budget."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        attempts = retries + 1
        per_try_s = timeout_s / attempts
        for attempt in range(attempts):
            if self._sock is None:
                self._connect()
            req_id = next(self._ids)
            deadline = time.time() + per_try_s
            fut = asyncio.get_running_loop().create_future()
            self._pending[req_id] = fut
            data = protocol.pack(protocol.request(req_id, method, args, kwargs, deadline))
            try:
                await asyncio.wait_for(self._send_and_wait(data, fut), per_try_s)
            except asyncio.TimeoutError:
                # ZeroMQ reconnects to a restarted peer by itself; the socket is shared with
                # other calls in flight, so it is kept and the request simply sent again.
                self._pending.pop(req_id, None)
                if attempt + 1 < attempts:
                    continue
                raise RpcTimeout(self.endpoint, method, timeout_s) from None
            return _result(fut.result(), self.endpoint, method)

    async def _send_and_wait(self, data, fut):
        await self._sock.send(data)
        await fut

    def close(self):
        self._reset()
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()


class RpcClient:
    """A blocking DEALER client (xapi-ctl, tests): one call at a time, bounded by a deadline."""

    def __init__(self, endpoint, timeout_s=DEFAULT_TIMEOUT_S, context=None):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._sock = None

    def _connect(self):
        sock = self.context.socket(zmq.DEALER)
        _set_common_options(sock, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(self.endpoint)
        self._sock = sock

    def call(self, method, *args, timeout_s=None, retries=0, **kwargs):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        attempts = retries + 1
        per_try_s = timeout_s / attempts
        for attempt in range(attempts):
            if self._sock is None:
                self._connect()
            req_id = next(self._ids)
            deadline = time.time() + per_try_s
            data = protocol.pack(protocol.request(req_id, method, args, kwargs, deadline))
            # With IMMEDIATE a DEALER has no pipe until the peer is there, and a plain send
            # would block for ever (a server that never binds): wait for it within the budget.
            if not self._sock.poll(max(0, int(per_try_s * 1000)), zmq.POLLOUT):
                self.close()
                continue
            try:
                self._sock.send(data, zmq.NOBLOCK)
            except zmq.Again:
                self.close()
                continue
            while True:
                left_ms = int((deadline - time.time()) * 1000)
                if left_ms <= 0 or not self._sock.poll(left_ms):
                    break
                reply = protocol.unpack(self._sock.recv_multipart()[-1])
                if isinstance(reply, dict) and reply.get("id") == req_id:
                    return _result(reply, self.endpoint, method)
            self.close()
        raise RpcTimeout(self.endpoint, method, timeout_s)

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
