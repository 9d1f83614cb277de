"""xapi-api's HTTP/1.1 server (daemons/api/http.py) over a real unix socket and a real TCP
socket on 127.0.0.1: keep-alive, the limits (413, 408, 503, 431) and bad requests. Each test
runs its own loop; timeouts are small so that the slow-client cases take well under a second."""

import asyncio
import os
import shutil
import stat
import tempfile

import pytest

from daemons.api.http import HttpServer, Limits, Response, parse_head, BadRequest


@pytest.fixture
def sock_dir():
    tmp = tempfile.mkdtemp(prefix="x", dir="/tmp")
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


async def echo(request):
    return Response(200, b"%s %s %d %s" % (request.method.encode(), request.path.encode(),
                                          len(request.body), request.transport.encode()))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["Content-Length"]))
    return status, headers, body


def limits(**kw):
    base = dict(max_body_bytes=1000, header_timeout_s=0.3, keepalive_timeout_s=5.0,
                max_connections=3)
    base.update(kw)
    return Limits(**base)


def post(path, body, extra=""):
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def test_keep_alive_and_socket_mode(sock_dir):
    async def main():
        server = HttpServer(echo, limits())
        path = await server.listen_unix("unix", os.path.join(sock_dir, "api"))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(path)
        for i in range(3):
            writer.write(post("/RPC2", b"x" * i))
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"POST /RPC2 %d unix" % i)
            assert headers["Connection"] == "keep-alive"
        writer.write(b"GET /a?b=c HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert body == b"GET /a 0 unix" and headers["Connection"] == "close"
        assert await reader.read() == b""          # closed by the server
        writer.close()
        await server.close()
        assert not os.path.exists(path)
    run(main())


def test_tcp_listener_on_loopback():
    async def main():
        server = HttpServer(echo, limits())
        url = await server.listen_tcp("localhost", "127.0.0.1", 0)
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/jsonrpc", b"{}"))
        assert (await read_response(reader))[2] == b"POST /jsonrpc 2 tcp"
        writer.close()
        await server.close()
    run(main())


def test_pipelined_split_and_half_closed_requests(sock_dir):
    """Requests sent together are answered in order; one cut anywhere is put back together;
    a client that half-closes after its request still gets the answer; requests piled up past
    the read buffer while the handler is slow (reading paused) are all answered."""
    async def slow_echo(request):
        if request.path == "/slow":
            await asyncio.sleep(0.2)
        return await echo(request)

    async def main():
        server = HttpServer(slow_echo, limits(max_body_bytes=100000))
        path = await server.listen_unix("unix", os.path.join(sock_dir, "api"))
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(post("/a", b"1") + post("/b", b"22") + b"\r\n" + post("/c", b""))
        for expected in (b"POST /a 1 unix", b"POST /b 2 unix", b"POST /c 0 unix"):
            assert (await read_response(reader))[2] == expected
        whole = post("/d", b"x" * 50)
        for cut in (1, 20, len(whole) - 10):
            writer.write(whole[:cut])
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(whole[cut:])
            assert (await read_response(reader))[2] == b"POST /d 50 unix"
        piled = [post("/slow", b"")] + [post(f"/p{i}", b"y" * 90000) for i in range(4)]
        writer.write(b"".join(piled))
        assert (await read_response(reader))[2] == b"POST /slow 0 unix"
        for i in range(4):
            assert (await read_response(reader))[2] == b"POST /p%d 90000 unix" % i
        writer.write(post("/e", b"abc"))
        writer.write_eof()
        assert (await read_response(reader))[2] == b"POST /e 3 unix"
        assert await reader.read() == b""
        writer.close()
        await server.close()
    run(main())


@pytest.mark.parametrize("request_bytes,status", [
    (post("/", b"x" * 1001), 413),
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\n\r\n", 411),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"BLAH\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
])
def test_bad_requests_get_an_error_and_a_close(sock_dir, request_bytes, status):
    async def main():
        server = HttpServer(echo, limits())
        path = await server.listen_unix("unix", os.path.join(sock_dir, "api"))
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(request_bytes)
        got, headers, _ = await read_response(reader)
        assert got == status and headers["Connection"] == "close"
        assert await reader.read() == b""
        writer.close()
        await server.close()
    run(main())


def test_slow_headers_and_slow_bodies_are_cut_off(sock_dir):
    async def main():
        server = HttpServer(echo, limits(header_timeout_s=0.2))
        path = await server.listen_unix("unix", os.path.join(sock_dir, "api"))
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST / HTTP/1.1\r\nHost")     # and nothing more
        status, _, _ = await read_response(reader)
        assert status == 408 and await reader.read() == b""
        reader, writer2 = await asyncio.open_unix_connection(path)
        writer2.write(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        status, _, _ = await read_response(reader)
        assert status == 408
        assert server.stats["header_timeouts"] == 2
        writer.close()
        writer2.close()
        await server.close()
    run(main())


def test_too_many_connections_are_refused_then_served_again(sock_dir):
    async def main():
        server = HttpServer(echo, limits(max_connections=2))
        path = await server.listen_unix("unix", os.path.join(sock_dir, "api"))
        held = [await asyncio.open_unix_connection(path) for _ in range(2)]
        for reader, writer in held:            # both are being served
            writer.write(post("/", b""))
            assert (await read_response(reader))[0] == 200
        reader, writer = await asyncio.open_unix_connection(path)
        status, headers, _ = await read_response(reader)
        assert status == 503 and headers["Connection"] == "close"
        writer.close()
        for _, w in held:
            w.close()
        # once they are gone a new connection is served
        for _ in range(50):
            if not server._connections:
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(post("/", b""))
        assert (await read_response(reader))[0] == 200
        assert server.stats["refused"] == 1
        writer.close()
        await server.close()
    run(main())


def test_a_failing_handler_is_a_500_and_the_server_lives_on(sock_dir):
    async def boom(request):
        if request.path == "/boom":
            raise RuntimeError("boom")
        return await echo(request)

    async def main():
        server = HttpServer(boom, limits())
        path = await server.listen_unix("unix", os.path.join(sock_dir, "api"))
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(post("/boom", b""))
        assert (await read_response(reader))[0] == 500
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(post("/fine", b""))
        assert (await read_response(reader))[0] == 200
        writer.close()
        await server.close()
    run(main())


def test_parse_head():
    method, target, version, headers = parse_head(
        b"\r\nPOST /x?y HTTP/1.0\r\nContent-Length: 3\r\nX-A:  b \r\n\r\n")
    assert (method, target, version) == ("POST", "/x?y", "HTTP/1.0")
    assert headers == {"content-length": "3", "x-a": "b"}
    with pytest.raises(BadRequest):
        parse_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
