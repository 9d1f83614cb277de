"""Request/reply between daemons: an asyncio ROUTER server with a method registry and DEALER
clients (asyncio and blocking) with deadlines and retries for idempotent calls."""

import asyncio
import collections
import inspect
import itertools
import logging
import time

import zmq

from common import protocol
from common.errors import RpcError, RpcTimeout, XapiError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


RECONNECT_IVL_MS = 10       # a restarted daemon is found again within 10 ms, not ZeroMQ's 100

# Plain ints for the per-message calls: pyzmq's enum constants cost an enum construction on
# every ``&`` / ``|`` and its sugar methods (recv_multipart...) add more; on the read path of
# a busy daemon that was a good part of the Python time per call.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_RCVTIMEO = int(zmq.RCVTIMEO)
_RCVTIMEO_SLACK_MS = 20
# The backend's send, called with positional arguments: the sugar layer's send is a Python
# frame that passes its arguments on by keyword (~0.5 us a message).
_send = zmq.backend.Socket.send
# Results that are surely not awaitable, told without inspect.isawaitable's isinstance checks.
_PLAIN_RESULTS = frozenset((type(None), bool, int, float, str, bytes, list, dict, tuple))


def _events(sock, wanted):
    """Which of ``wanted`` (POLLIN, POLLOUT) ``sock`` has now. Asking re-arms the socket's
    edge-triggered FD, as a ZMQ_EVENTS read does; zmq_poll with no wait is cheaper than
    Socket.get here (which builds a SocketOption enum per call)."""
    ready = zmq.zmq_poll(((sock, wanted),), 0)
    return ready[0][1] if ready else 0


def _set_common_options(sock, linger_ms):
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.ZMQ_MAXMSGSIZE_BYTES)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)


class RpcServer:
    """A ROUTER socket serving registered methods. A plain method is answered at once from the
    loop's reader callback (no task, no future: the common case of reads); a coroutine method
    runs as its own task, so a slow one does not hold up the others. Replies carry the
    request id."""

    MAX_BATCH = 64   # requests handled per wake-up before the loop gets a turn

    def __init__(self, endpoint, context=None, max_concurrent=256):
        self.endpoint = endpoint
        # A plain (not asyncio) socket driven by loop.add_reader on its FD.
        base = context or zmq.Context.instance()
        self.context = zmq.Context.shadow(base.underlying)
        self.methods = {}
        self.calls = {}
        self.errors = {"decode": 0, "method": 0, "dropped_replies": 0}
        self.max_concurrent = max_concurrent
        self._sock = None
        self._loop = None
        self._fd = None
        self._tasks = set()           # tasks and futures of calls in flight
        self._pack = protocol.new_packer().pack    # the loop's thread only
        self._recheck_pending = False

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
        self._loop = asyncio.get_running_loop()
        self._fd = self._sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._on_readable)
        self._loop.call_soon(self._on_readable)   # the FD is edge-triggered: drain first

    async def close(self):
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def _on_readable(self):
        """Serve the requests that wait (the FD fired). A request is read at once, without
        asking first whether one is there: the FD fired, so one almost always is, and a
        receive that finds none costs no more than the question. After each request the
        socket is asked, which re-arms its edge-triggered FD."""
        sock = self._sock
        if sock is None:
            return
        recv = sock.recv
        for _ in range(self.MAX_BATCH):
            try:
                # A ROUTER message is the sender's identity, then the request: the identity
                # always has more after it, so it is taken as plain bytes; the request as a
                # Frame, which tells whether more follows (a client's mistake).
                identity = recv(_NOBLOCK)
                frame = recv(_NOBLOCK, False)
                payload = frame.bytes
                if frame.more:
                    self._drop_rest(sock)
                    continue
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.error("rpc %s: receive failed: %s", self.endpoint, exc)
                return
            self._dispatch(identity, payload)
            if self._sock is None or not _events(sock, _POLLIN):
                return
        self._loop.call_soon(self._on_readable)

    def _drop_rest(self, sock):
        """A request of more than one frame: the rest of it read and dropped."""
        frames = 3
        while sock.recv(_NOBLOCK, False).more:
            frames += 1
        self.errors["decode"] += 1
        log.warning("rpc %s: dropped a message of %d frames (expected 2)", self.endpoint, frames)

    def _dispatch(self, identity, payload):
        req_id = None
        try:
            msg = protocol.unpack(payload)
            if type(msg) is dict:
                req_id = msg.get("id")       # for the error reply, should the check fail
            req_id, method, args, kwargs, deadline = protocol.check_request(msg)
        except ValueError as exc:
            self.errors["decode"] += 1
            log.warning("rpc %s: bad request: %s", self.endpoint, exc)
            self._send(identity, protocol.reply_error(
                req_id, ["MESSAGE_DECODE_ERROR", str(exc)]))
            return
        fn = self.methods.get(method)
        if fn is None:
            self.errors["method"] += 1
            self._send(identity, protocol.reply_error(
                req_id, ["MESSAGE_METHOD_UNKNOWN", method]))
            return
        calls = self.calls
        calls[method] = calls.get(method, 0) + 1
        if deadline is not None and deadline < time.time():
            log.info("rpc %s: %s arrived after its deadline; dropped", self.endpoint, method)
            return
        try:
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except Exception as exc:
            self._send(identity, self._error_reply(req_id, method, fn, args, kwargs, exc))
            return
        if type(result) in _PLAIN_RESULTS or not inspect.isawaitable(result):
            self._send(identity, protocol.reply_ok(req_id, result))
            return
        if len(self._tasks) >= self.max_concurrent:
            if inspect.iscoroutine(result):
                result.close()
            elif asyncio.isfuture(result):
                result.cancel()
            self._send(identity, protocol.reply_error(
                req_id, ["SERVER_BUSY", method, str(self.max_concurrent)]))
            return
        if asyncio.isfuture(result) and result.get_loop() is self._loop:
            # A method that hands back a future (xapi-db's writes): answered from the
            # future's done callback, without a task and a coroutine per call.
            self._tasks.add(result)
            result.add_done_callback(
                lambda done: self._future_done(identity, req_id, method, fn, args, kwargs, done))
            return
        task = self._loop.create_task(
            self._finish(identity, req_id, method, fn, args, kwargs, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, identity, req_id, method, fn, args, kwargs, awaitable):
        try:
            reply = protocol.reply_ok(req_id, await awaitable)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reply = self._error_reply(req_id, method, fn, args, kwargs, exc)
        self._send(identity, reply)
        self._recheck()

    def _future_done(self, identity, req_id, method, fn, args, kwargs, future):
        """The reply to a call whose method returned a future (as ``_finish`` for a task); a
        cancelled one gets none, like a cancelled task."""
        self._tasks.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            reply = protocol.reply_ok(req_id, future.result())
        else:
            reply = self._error_reply(req_id, method, fn, args, kwargs, exc)
        self._send(identity, reply)
        self._recheck()

    def _recheck(self):
        """A send can consume the FD's edge: look for requests that came meanwhile (once per
        loop turn, however many replies went out in it)."""
        if not self._recheck_pending and self._fd is not None:
            self._recheck_pending = True
            self._loop.call_soon(self._recheck_now)

    def _recheck_now(self):
        self._recheck_pending = False
        if self._sock is not None and _events(self._sock, _POLLIN):   # rarely: ask first
            self._on_readable()

    def _error_reply(self, req_id, method, fn, args, kwargs, exc):
        if isinstance(exc, XapiError):
            return protocol.reply_error(req_id, exc.description)
        if isinstance(exc, TypeError) and _is_call_signature_error(fn, args, kwargs):
            # Wrong arity or keyword: the caller's mistake, named like XenAPI does.
            return protocol.reply_error(
                req_id, ["MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(exc)])
        log.error("rpc %s: %s failed", self.endpoint, method,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return protocol.reply_error(req_id, ["INTERNAL_ERROR", f"{method}: {exc}"])

    def _send(self, identity, reply):
        try:
            data = self._pack(reply)
        except (TypeError, ValueError) as exc:
            log.error("rpc %s: reply not encodable: %s", self.endpoint, exc)
            data = self._pack(protocol.reply_error(
                reply.get("id"), ["INTERNAL_ERROR", f"reply not encodable: {exc}"]))
        if self._sock is None:
            return
        try:
            _send(self._sock, identity, _NOBLOCK | _SNDMORE)
            _send(self._sock, data, _NOBLOCK)
        except zmq.ZMQError as exc:      # the peer is gone or its queue is full
            self.errors["dropped_replies"] += 1
            log.warning("rpc %s: reply dropped: %s", self.endpoint, exc)


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
    socket; replies are matched by id.

    The machinery is lean because every daemon's bus calls go through it (xapi-api's DB round
    trip per XenAPI call above all): a plain ZeroMQ socket whose FD the loop watches
    (loop.add_reader), a send made at once (NOBLOCK), the reply handed to the caller's future
    from the reader callback, the deadline a timer on that future. No zmq.asyncio futures, no
    reader task, no task per call (~200 us less CPU per call than through zmq.asyncio)."""

    def __init__(self, endpoint, context=None, timeout_s=DEFAULT_TIMEOUT_S):
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._pending = {}           # request id -> future of the reply
        self._outbox = collections.deque()   # (data, future) of sends the socket did not take yet
        self._pack = protocol.new_packer().pack     # the loop's thread only
        self._sock = None
        self._loop = None
        self._fd = None

    def _connect(self):
        sock = zmq.Socket(self.context, zmq.DEALER)   # a plain socket, whatever the context
        _set_common_options(sock, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)       # no queue before the server is there
        sock.connect(self.endpoint)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self):
        """The socket's FD is edge-triggered: take every reply there is, and hand the socket
        the sends that wait for it to be writable."""
        sock, pending = self._sock, self._pending
        while sock is not None:
            try:
                events = _events(sock, _POLLIN | _POLLOUT)
                if events & _POLLOUT and self._outbox:
                    self._flush()
                if not events & _POLLIN:
                    return
                frame = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:          # closed under us
                return
            try:
                reply = protocol.unpack(frame)
            except ValueError as exc:     # the caller times out, as with a lost reply
                log.warning("rpc client %s: undecodable reply: %s", self.endpoint, exc)
                continue
            fut = pending.pop(reply.get("id") if type(reply) is dict else None, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def _flush(self):
        """Send what waits, oldest first (calls leave in the order they were made); a send
        whose caller gave up (its deadline) is dropped."""
        outbox = self._outbox
        while outbox:
            data, sent = outbox[0]
            if not sent.done():
                try:
                    _send(self._sock, data, _NOBLOCK)
                except zmq.Again:
                    return
                sent.set_result(None)
            outbox.popleft()

    def _send_now(self, data):
        if self._outbox:
            return False
        try:
            _send(self._sock, data, _NOBLOCK)
            return True
        except zmq.Again:
            return False

    async def call(self, method, *args, timeout_s=None, retries=0, **kwargs):
        """Call ``method``; ``retries`` > 0 only for idempotent methods: on a timeout the
        request is sent again, within the same overall budget (ZeroMQ reconnects to a
        restarted peer by itself; the socket is shared with other calls in flight, so it is
        kept)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        attempts = retries + 1
        per_try_s = timeout_s / attempts
        for attempt in range(attempts):
            if self._sock is None:
                self._connect()
            loop = self._loop
            req_id = next(self._ids)
            fut = loop.create_future()
            self._pending[req_id] = fut
            data = self._pack(protocol.request(req_id, method, args, kwargs,
                                               time.time() + per_try_s))
            deadline = loop.time() + per_try_s
            try:
                if not self._send_now(data):  # no peer yet (IMMEDIATE), its queue full, or
                    sent = loop.create_future()   # older sends waiting: queue behind them
                    self._outbox.append((data, sent))
                    self._on_readable()
                    async with asyncio.timeout_at(deadline):
                        await sent
                self._on_readable()       # a send can consume the FD's edge
                timer = loop.call_at(deadline, _expire, fut)
                try:
                    reply = await fut
                finally:
                    timer.cancel()
            except TimeoutError:
                if attempt + 1 < attempts:
                    continue
                raise RpcTimeout(self.endpoint, method, timeout_s) from None
            finally:
                self._pending.pop(req_id, None)
            return _result(reply, self.endpoint, method)

    def close(self):
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        for fut in [*self._pending.values(), *(sent for _, sent in self._outbox)]:
            fut.cancel()
        self._pending.clear()
        self._outbox.clear()


def _expire(fut):
    if not fut.done():
        fut.set_exception(TimeoutError())


class RpcClient:
    """A blocking DEALER client (xapi-ctl, tests): one call at a time, bounded by a deadline."""

    def __init__(self, endpoint, timeout_s=DEFAULT_TIMEOUT_S, context=None):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._sock = None
        self._pack = protocol.new_packer().pack    # one call at a time, like the socket

    def _connect(self):
        sock = self.context.socket(zmq.DEALER)
        _set_common_options(sock, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(self.endpoint)
        self._sock = sock
        self._rcvtimeo = -(1 << 30)    # not set yet (ZeroMQ's default, -1, waits for ever)

    def call(self, method, *args, timeout_s=None, retries=0, **kwargs):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        attempts = retries + 1
        per_try_s = timeout_s / attempts
        for attempt in range(attempts):
            if self._sock is None:
                self._connect()
            req_id = next(self._ids)
            deadline = time.time() + per_try_s
            data = self._pack(protocol.request(req_id, method, args, kwargs, deadline))
            # With IMMEDIATE a DEALER has no pipe until the peer is there, and a plain send
            # would block for ever (a server that never binds): wait for it within the budget.
            try:
                _send(self._sock, data, _NOBLOCK)
            except zmq.Again:
                if not self._sock.poll(max(0, int(per_try_s * 1000)), zmq.POLLOUT):
                    self.close()
                    continue
                try:
                    _send(self._sock, data, _NOBLOCK)
                except zmq.Again:
                    self.close()
                    continue
            while True:
                left_ms = int((deadline - time.time()) * 1000)
                if left_ms <= 0:
                    break
                # A blocking receive, bounded: RCVTIMEO is set only when the one set before
                # is over the time left or well under it (a setsockopt per call cost ~3 us);
                # a receive that times out early just goes round again.
                if not self._rcvtimeo <= left_ms <= self._rcvtimeo + _RCVTIMEO_SLACK_MS:
                    self._rcvtimeo = max(1, left_ms - _RCVTIMEO_SLACK_MS // 2)
                    self._sock.set(_RCVTIMEO, self._rcvtimeo)
                # Frame by frame, copied (a Frame object costs more than the copy of a small
                # reply): a reply is one frame, and any other frame (a stale reply, a stray
                # part) fails the id check below and is passed over.
                try:
                    frame = self._sock.recv(0)
                except zmq.Again:
                    continue
                reply = protocol.unpack(frame)
                if type(reply) is dict and reply.get("id") == req_id:
                    if reply.get("ok") is True:
                        return reply.get("r")
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
