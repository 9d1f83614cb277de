"""xapi-api's client of xapi-db (daemons/api/dbclient.py) against a real RpcServer over ipc://
in a short temp dir: results and errors, concurrent calls matched by id, a server that starts
late, a lost reply (a read is sent again, a write is not), the deadline, and close."""

import asyncio
import contextlib

import pytest

from common.errors import RpcTimeout, XapiError
from common.rpc import RpcServer
from daemons.api.dbclient import DbClient


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def server_with(endpoint, methods):
    server = RpcServer(endpoint)
    for name, fn in methods.items():
        server.register(name, fn)
    return server


@contextlib.asynccontextmanager
async def serving_with_client(endpoint, methods, timeout_s):
    """A started server of ``methods`` and a DbClient on it, both closed at the end."""
    server = server_with(endpoint, methods)
    server.start()
    client = DbClient(endpoint, timeout_s=timeout_s)
    try:
        yield client
    finally:
        client.close()
        await server.close()


def raise_handle_invalid(cls, ref):
    raise XapiError("HANDLE_INVALID", cls, ref)


def test_results_errors_and_concurrent_calls(endpoint):
    async def slow_echo(value, delay):
        await asyncio.sleep(delay)
        return value

    async def main():
        methods = {"db.read_record": lambda cls, ref: {"cls": cls, "ref": ref},
                   "db.bad": raise_handle_invalid, "db.echo": slow_echo}
        async with serving_with_client(endpoint, methods, timeout_s=5) as client:
            assert await client.call("db.read_record", "VM", "r") == {"cls": "VM", "ref": "r"}
            with pytest.raises(XapiError) as err:
                await client.call("db.bad", "VM", "x")
            assert err.value.description == ["HANDLE_INVALID", "VM", "x"]
            # replies come back out of order and each finds its caller
            got = await asyncio.gather(*(client.call("db.echo", i, 0.05 * (5 - i))
                                         for i in range(5)))
            assert got == list(range(5))
            assert not client._pending
    run(main())


def test_a_server_that_starts_late_is_reached_within_the_budget(endpoint):
    async def main():
        client = DbClient(endpoint, timeout_s=5)
        server = server_with(endpoint, {"db.token": lambda: "7,0"})
        call = asyncio.ensure_future(client.call("db.token"))
        await asyncio.sleep(0.2)              # the client waits: no peer yet
        assert not call.done()
        server.start()
        try:
            assert await call == "7,0"
        finally:
            client.close()
            await server.close()
    run(main())


def test_a_lost_reply_a_read_is_sent_again_a_write_is_not(endpoint):
    seen = {"db.read_field": 0, "db.write_field": 0}

    async def forgetful(name):
        seen[name] += 1
        if seen[name] == 1:
            await asyncio.sleep(30)           # the first request's reply never comes
        return name

    async def main():
        methods = {"db.read_field": lambda *a: forgetful("db.read_field"),
                   "db.write_field": lambda *a: forgetful("db.write_field")}
        async with serving_with_client(endpoint, methods, timeout_s=0.6) as client:
            assert await client.call("db.read_field", "VM", "r", "f") == "db.read_field"
            assert seen["db.read_field"] == 2
            with pytest.raises(RpcTimeout):
                await client.call("db.write_field", "VM", "r", "f", 1)
            assert seen["db.write_field"] == 1
            assert not client._pending
    run(main())


def test_no_server_is_a_timeout_and_close_ends_the_calls_in_flight(endpoint):
    async def main():
        client = DbClient(endpoint, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RpcTimeout):
            await client.call("db.write_field", "VM", "r", "f", 1)
        assert 0.25 < loop.time() - started < 3
        server = server_with(endpoint, {"db.events_since": lambda *a: asyncio.sleep(30)})
        server.start()
        call = asyncio.ensure_future(client.call("db.events_since", [], "", 30, timeout_s=40))
        await asyncio.sleep(0.2)
        client.close()
        with pytest.raises(asyncio.CancelledError):
            await call
        await server.close()
    run(main())
