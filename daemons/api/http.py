"""A small asyncio HTTP/1.1 server for the XenAPI: keep-alive, Content-Length bodies, and limits
so that no client can wedge or exhaust the daemon.

Limits (options of xapi.conf): a body over ``api-max-body-bytes`` gets 413 and the connection
is closed unread; headers must be complete within ``api-header-timeout`` of their first byte
(a slow-loris client gets 408 and is closed), and the body within the same time; an idle
keep-alive connection is closed after ``api-keepalive-timeout``; past ``api-max-connections``
open connections a new one gets 503 and is closed; request headers are limited to 64 KiB (431).
Chunked request bodies are not taken (501): XenAPI clients send Content-Length. A listener
may be TLS (the management interface): its handshake is bounded by the header timeout too.
A response body is bytes, or a stream (an async iterator of bytes, with its length known
beforehand) for large bodies such as the database dump.

Each connection is an asyncio Protocol (_Connection) buffering what arrives, and one task
serving its requests in turn: a request already buffered is taken without waiting, and a wait
(for the first byte, the rest of the head or the body) is one future with one timer: about
50 us of CPU less per request than asyncio streams with a timeout per read.
"""

import asyncio
import logging
import os
from dataclasses import dataclass, field

MAX_HEADER_BYTES = 64 * 1024
WRITE_TIMEOUT_S = 60.0
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
           413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}

log = logging.getLogger("xapi-api")


@dataclass
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 120.0
    max_connections: int = 512

    @classmethod
    def from_config(cls, config):
        return cls(max_body_bytes=config["api-max-body-bytes"],
                   header_timeout_s=config["api-header-timeout"],
                   keepalive_timeout_s=config["api-keepalive-timeout"],
                   max_connections=config["api-max-connections"])


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict
    body: bytes
    transport: str           # "unix" or "tcp": the unix socket is pre-authenticated
    peer: str
    listener: str = ""       # the listener's name: "unix", "localhost", "management"


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    close: bool = False
    headers: dict = field(default_factory=dict)
    stream: object = None    # an async iterator of bytes sent instead of body ...
    length: int = 0          # ... whose total length this is


class BadRequest(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _render(response, keep_alive):
    reason = REASONS.get(response.status, "Unknown")
    lines = [f"HTTP/1.1 {response.status} {reason}",
             f"Content-Type: {response.content_type}",
             f"Content-Length: {response.length if response.stream else len(response.body)}",
             f"Connection: {'keep-alive' if keep_alive else 'close'}",
             "Cache-Control: no-cache, no-store"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if response.stream else head + response.body


async def _drain(writer, timeout_s):
    """Wait for the write buffer to empty, at most ``timeout_s``; free when it is below the
    high-water mark (asyncio.timeout, unlike wait_for, makes no task per call)."""
    if writer.transport.get_write_buffer_size() == 0:
        return
    async with asyncio.timeout(timeout_s):
        await writer.drain()


def _error_response(status, text):
    return Response(status, (text + "\n").encode("utf-8", "replace"), close=True)


def parse_head(head):
    """Request line and headers -> (method, target, version, headers lower-cased)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:          # latin-1 decodes every byte; kept for clarity
        raise BadRequest(400, "undecodable request head") from None
    lines = text.split("\r\n")
    while lines and lines[0] == "":     # RFC 9112: ignore empty lines before a request line
        lines.pop(0)
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"bad request line {lines[0][:100]!r}")
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line[:100]!r}")
        key = name.lower()
        value = value.strip()
        if key in headers and key == "content-length" and headers[key] != value:
            raise BadRequest(400, "conflicting Content-Length headers")
        headers[key] = value
    return method, target, version, headers


class _Connection(asyncio.streams.FlowControlMixin, asyncio.Protocol):
    """One connection: what arrives is buffered in ``buf``; the serving task waits with
    ``wait_data``. Reading pauses while the buffer holds more than two heads' worth and nobody
    waits for it (pipelined requests behind a slow handler); a StreamWriter writes (drain)."""

    def __init__(self, server, transport_kind, listener):
        super().__init__()
        self.server, self.kind, self.listener = server, transport_kind, listener
        self.buf = bytearray()
        self.eof = False
        self.transport = None
        self.task = None             # the task serving the connection (kept referenced)
        self._waiter = None
        self._reading_paused = False
        self._over_ssl = False

    def connection_made(self, transport):
        self.transport = transport
        self._over_ssl = transport.get_extra_info("sslcontext") is not None
        writer = asyncio.StreamWriter(transport, self, None, self._loop)
        self.task = self._loop.create_task(self.server._serve(self, writer, self.kind,
                                                              self.listener))

    def data_received(self, data):
        self.buf += data
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif len(self.buf) > 2 * MAX_HEADER_BYTES and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self):
        self.eof = True
        self._wake()
        return not self._over_ssl     # keep the transport open to answer (as streams do)

    def connection_lost(self, exc):
        super().connection_lost(exc)
        self.eof = True
        self.task = None
        self._wake()

    def _wake(self):
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self, timeout_s):
        """Wait for more bytes or the end of the stream, at most ``timeout_s``
        (TimeoutError)."""
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    def take(self, n):
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def _expire(waiter):
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class HttpServer:
    """Serves ``handler(request) -> Response`` (a coroutine) on any number of listeners."""

    def __init__(self, handler, limits):
        self.handler = handler
        self.limits = limits
        self.listeners = {}          # name -> (asyncio Server, description)
        self._connections = set()
        self.stats = {"connections": 0, "requests": 0, "refused": 0, "header_timeouts": 0,
                      "body_too_large": 0, "bad_requests": 0, "handler_errors": 0}

    # -- listeners -----------------------------------------------------------------------------
    async def listen_unix(self, name, path):
        path = str(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o077)
        try:
            server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Connection(self, "unix", name), path=path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.listeners[name] = (server, path)
        return path

    async def listen_tcp(self, name, host, port, ssl_context=None):
        """Serve on host:port; with ``ssl_context``, TLS (https)."""
        server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self, "tcp", name), host=host, port=port,
            reuse_address=True, ssl=ssl_context,
            ssl_handshake_timeout=self.limits.header_timeout_s if ssl_context else None)
        sock_host, sock_port = server.sockets[0].getsockname()[:2]
        if ":" in sock_host:
            sock_host = f"[{sock_host}]"
        url = f"{'https' if ssl_context else 'http'}://{sock_host}:{sock_port}/"
        self.listeners[name] = (server, url)
        return url

    def endpoint(self, name):
        entry = self.listeners.get(name)
        return entry[1] if entry else None

    async def close(self):
        for server, _ in self.listeners.values():
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server, where in self.listeners.values():
            if where.startswith("/"):
                try:
                    os.unlink(where)
                except OSError:
                    pass
        self.listeners.clear()

    # -- one connection --------------------------------------------------------------------------
    async def _serve(self, conn, writer, transport, listener):
        self.stats["connections"] += 1
        if len(self._connections) >= self.limits.max_connections:
            self.stats["refused"] += 1
            await self._send_and_close(writer, _error_response(
                503, f"too many connections (limit {self.limits.max_connections})"))
            return
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer = "unix" if transport == "unix" else f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            while True:
                response, keep_alive = await self._one_request(conn, writer, transport, peer,
                                                               listener)
                if response is None:
                    break
                writer.write(_render(response, keep_alive))
                if response.stream is not None:
                    await self._send_stream(writer, response)
                await _drain(writer, WRITE_TIMEOUT_S)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()

    @staticmethod
    async def _send_stream(writer, response):
        """The body of a streamed response, each chunk drained before the next is read; a
        stream that ends short of its length is an error (the connection is closed)."""
        sent = 0
        try:
            async for chunk in response.stream:
                sent += len(chunk)
                writer.write(chunk)
                await _drain(writer, WRITE_TIMEOUT_S)
        finally:
            close = getattr(response.stream, "aclose", None)
            if close is not None:
                await close()
        if sent != response.length:
            log.error("HTTP stream ended after %d bytes of %d: connection closed", sent,
                      response.length)
            raise ConnectionError(f"streamed {sent} bytes of {response.length}")

    async def _send_and_close(self, writer, response):
        try:
            writer.write(_render(response, False))
            await _drain(writer, 5.0)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _one_request(self, conn, writer, transport, peer, listener):
        """-> (response, keep-alive) or (None, False) when the client went away."""
        limits = self.limits
        buf = conn.buf
        if not buf:
            if conn.eof:
                return None, False
            try:
                await conn.wait_data(limits.keepalive_timeout_s)
            except TimeoutError:
                return None, False
            if not buf:
                return None, False
        # the head ends at the first blank line after its first byte, within the header
        # timeout of that byte
        deadline = None
        while (end := buf.find(b"\r\n\r\n", 1)) < 0 or end - 1 > MAX_HEADER_BYTES:
            if len(buf) - 4 > MAX_HEADER_BYTES:
                self.stats["bad_requests"] += 1
                return _error_response(431, f"request head over {MAX_HEADER_BYTES} bytes"), False
            if conn.eof:
                return None, False
            now = conn._loop.time()
            deadline = deadline or now + limits.header_timeout_s
            try:
                await conn.wait_data(deadline - now)
            except TimeoutError:
                self.stats["header_timeouts"] += 1
                log.info("HTTP %s: headers not complete within %g s; closing", peer,
                         limits.header_timeout_s)
                return _error_response(408, "request headers too slow"), False
        head = conn.take(end + 4)
        try:
            method, target, version, headers = parse_head(head)
            body = await self._read_body(conn, writer, method, headers, peer)
        except BadRequest as exc:
            self.stats["bad_requests"] += 1
            if exc.status == 413:
                self.stats["body_too_large"] += 1
            return _error_response(exc.status, exc.reason), False
        if body is None:
            return None, False
        connection = headers.get("connection", "").lower()
        keep_alive = ((version == "HTTP/1.1" and "close" not in connection)
                      or (version == "HTTP/1.0" and "keep-alive" in connection))
        path, _, query = target.partition("?")
        request = Request(method, path, query, version, headers, body, transport, peer,
                          listener)
        self.stats["requests"] += 1
        try:
            response = await self.handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("HTTP %s %s from %s: handler failed", method, path, peer)
            response = _error_response(500, "internal error (see the xapi-api log)")
        return response, keep_alive and not response.close

    async def _read_body(self, conn, writer, method, headers, peer):
        """The body (bytes), or None when the client went away before sending it all."""
        if "transfer-encoding" in headers:
            raise BadRequest(501, "chunked request bodies are not supported: send "
                                  "Content-Length")
        length_text = headers.get("content-length")
        if length_text is None:
            if method in ("POST", "PUT"):
                raise BadRequest(411, "a request body needs a Content-Length")
            return b""
        if not length_text.isdigit():
            raise BadRequest(400, f"bad Content-Length {length_text[:40]!r}")
        length = int(length_text)
        if length > self.limits.max_body_bytes:
            log.info("HTTP %s: body of %d bytes refused (limit %d)", peer, length,
                     self.limits.max_body_bytes)
            raise BadRequest(413, f"request body of {length} bytes is over the limit of "
                                  f"{self.limits.max_body_bytes}")
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline = None
        while len(conn.buf) < length:
            if conn.eof:
                return None
            now = conn._loop.time()
            deadline = deadline or now + self.limits.header_timeout_s
            try:
                await conn.wait_data(deadline - now)
            except TimeoutError:
                self.stats["header_timeouts"] += 1
                raise BadRequest(408, "request body too slow") from None
        return conn.take(length)
