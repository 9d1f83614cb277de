"""RpcServer, AsyncRpcClient and RpcClient (common/rpc.py) over real ipc:// sockets in a short
temp dir. Each test runs its own asyncio loop (asyncio.run); the blocking client runs in a
thread so the server loop keeps serving."""

import asyncio
import contextlib
import random
import threading
import time

import pytest
import zmq
import zmq.asyncio

from common import protocol
from common.errors import RpcTimeout, StepFailed, XapiError
from common.rpc import AsyncRpcClient, RpcClient, RpcServer


@contextlib.asynccontextmanager
async def serving(endpoint, methods, bind=True):
    server = RpcServer(endpoint)
    for name, fn in methods.items():
        server.register(name, fn)
    if bind:
        server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def async_client(endpoint, **kw):
    client = AsyncRpcClient(endpoint, **kw)
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def raw_dealer(endpoint):
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(0)


async def recv_reply(sock, timeout_s=3.0):
    frames = await asyncio.wait_for(sock.recv_multipart(), timeout_s)
    return protocol.unpack(frames[-1])


async def wait_until(predicate, timeout_s=3.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


# -- methods used by the tests ---------------------------------------------------------------

def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


def two_args(a, b):
    return [a, b]


def raises_xapi():
    raise XapiError("VM_BAD_POWER_STATE", "OpaqueRef:vm", "halted", "running")


def raises_step_failed():
    raise StepFailed("Start HA if configured", "xapi-ha did not answer")


def raises_unexpected():
    raise RuntimeError("disk on fire")


def raises_inner_type_error(a):
    return len(a) + "x"  # a TypeError from inside the method, not from the call


BASIC = {
    "t.echo": echo,
    "t.add": async_add,
    "t.two": two_args,
    "t.xapi": raises_xapi,
    "t.step": raises_step_failed,
    "t.boom": raises_unexpected,
    "t.inner": raises_inner_type_error,
}


# -- answers ---------------------------------------------------------------------------------

def test_async_client_sync_and_async_methods_answer(endpoint):
    async def main():
        async with serving(endpoint, BASIC) as server, async_client(endpoint) as client:
            assert await client.call("t.echo", 1, "a", None, k=[1.5]) == {
                "args": [1, "a", None], "kwargs": {"k": [1.5]}}
            assert await client.call("t.add", 2, 3) == 5
            assert await client.call("t.add", a=2, b=40) == 42
            assert server.calls == {"t.echo": 1, "t.add": 2}
    run(main())


def test_blocking_client_sync_and_async_methods_answer(endpoint):
    async def main():
        async with serving(endpoint, BASIC):
            with RpcClient(endpoint, timeout_s=3) as client:
                assert await asyncio.to_thread(client.call, "t.echo", "x", k=True) == {
                    "args": ["x"], "kwargs": {"k": True}}
                assert await asyncio.to_thread(client.call, "t.add", 20, 22) == 42
    run(main())


def test_concurrent_calls_on_one_async_client_get_their_own_replies(endpoint):
    async def main():
        async with serving(endpoint, BASIC), async_client(endpoint) as client:
            results = await asyncio.gather(*(client.call("t.add", i, 1000) for i in range(50)))
            assert results == [i + 1000 for i in range(50)]
    run(main())


# -- errors ----------------------------------------------------------------------------------

def test_xapi_error_travels_as_its_description_and_is_rebuilt(endpoint):
    expected = XapiError("VM_BAD_POWER_STATE", "OpaqueRef:vm", "halted", "running")

    async def main():
        async with serving(endpoint, BASIC), async_client(endpoint) as client:
            with pytest.raises(XapiError) as info:
                await client.call("t.xapi")
            assert info.value.code == expected.code
            assert info.value.params == expected.params
            assert info.value.description == expected.description
            with RpcClient(endpoint, timeout_s=3) as blocking:
                with pytest.raises(XapiError) as info:
                    await asyncio.to_thread(blocking.call, "t.xapi")
            assert info.value.description == expected.description
    run(main())


def test_xapi_error_subclass_is_rebuilt_as_that_subclass(endpoint):
    async def main():
        async with serving(endpoint, BASIC), async_client(endpoint) as client:
            with pytest.raises(StepFailed) as info:
                await client.call("t.step")
            assert info.value.description == [
                "STARTUP_STEP_FAILED", "Start HA if configured", "xapi-ha did not answer"]
    run(main())


def test_raw_error_reply_is_the_error_description(endpoint):
    async def main():
        async with serving(endpoint, BASIC), raw_dealer(endpoint) as sock:
            await sock.send(protocol.pack(protocol.request(99, "t.xapi", deadline=time.time() + 5)))
            assert await recv_reply(sock) == {
                "id": 99, "ok": False,
                "e": ["VM_BAD_POWER_STATE", "OpaqueRef:vm", "halted", "running"]}
    run(main())


def test_unknown_method(endpoint):
    async def main():
        async with serving(endpoint, BASIC) as server, async_client(endpoint) as client:
            with pytest.raises(XapiError) as info:
                await client.call("no.such_method", 1)
            assert info.value.description == ["MESSAGE_METHOD_UNKNOWN", "no.such_method"]
            assert server.errors["method"] == 1
    run(main())


@pytest.mark.parametrize("args, kwargs", [
    ((1,), {}),                  # too few
    ((1, 2, 3), {}),             # too many
    ((1,), {"c": 2}),            # unknown keyword
    ((1, 2), {"a": 3}),          # the same argument twice
])
def test_wrong_arity_is_a_parameter_count_mismatch(endpoint, args, kwargs):
    async def main():
        async with serving(endpoint, BASIC), async_client(endpoint) as client:
            with pytest.raises(XapiError) as info:
                await client.call("t.two", *args, **kwargs)
            assert info.value.code == "MESSAGE_PARAMETER_COUNT_MISMATCH"
            assert info.value.params[0] == "t.two"
            with pytest.raises(XapiError) as info:
                await client.call("t.add", 1)  # an async method too
            assert info.value.code == "MESSAGE_PARAMETER_COUNT_MISMATCH"
            assert info.value.params[0] == "t.add"
    run(main())


def test_type_error_inside_a_method_is_an_internal_error_not_a_count_mismatch(endpoint):
    async def main():
        async with serving(endpoint, BASIC), async_client(endpoint) as client:
            with pytest.raises(XapiError) as info:
                await client.call("t.inner", "abc")
            assert info.value.code == "INTERNAL_ERROR"
            assert info.value.params[0].startswith("t.inner: ")
    run(main())


def test_unexpected_exception_is_an_internal_error_and_the_server_keeps_serving(endpoint):
    async def main():
        async with serving(endpoint, BASIC), async_client(endpoint) as client:
            for _ in range(3):
                with pytest.raises(XapiError) as info:
                    await client.call("t.boom")
                assert info.value.code == "INTERNAL_ERROR"
                assert info.value.params == ["t.boom: disk on fire"]
                assert await client.call("t.add", 1, 1) == 2
    run(main())


def test_unencodable_result_is_an_internal_error_reply(endpoint):
    async def main():
        methods = {"t.obj": lambda: object(), "t.big": lambda: 2**70, **BASIC}
        async with serving(endpoint, methods), async_client(endpoint) as client:
            for method in ("t.obj", "t.big"):
                with pytest.raises(XapiError) as info:
                    await client.call(method, timeout_s=3)
                assert info.value.code == "INTERNAL_ERROR"
                assert "not encodable" in info.value.params[0]
            assert await client.call("t.add", 1, 2) == 3
    run(main())


# -- concurrency and timeouts ----------------------------------------------------------------

def test_a_slow_method_does_not_hold_up_a_fast_one(endpoint):
    release = None
    order = []

    async def slow():
        await asyncio.wait_for(release.wait(), 5)
        return "slow"

    async def main():
        nonlocal release
        release = asyncio.Event()
        methods = {"t.slow": slow, "t.fast": lambda: "fast"}
        async with serving(endpoint, methods) as server, async_client(endpoint) as client:

            async def call(method):
                result = await client.call(method, timeout_s=6)
                order.append(result)

            slow_call = asyncio.create_task(call("t.slow"))
            await wait_until(lambda: server.calls.get("t.slow") == 1, what="t.slow to start")
            # The slow method is running and only returns once released: a server that ran one
            # request at a time would never answer t.fast.
            await asyncio.wait_for(call("t.fast"), 2)
            release.set()
            await slow_call
            assert order == ["fast", "slow"]
    run(main())


def test_async_client_timeout_raises_rpc_timeout_naming_endpoint_and_method(endpoint):
    async def never():
        await asyncio.sleep(30)

    async def main():
        async with serving(endpoint, {"t.never": never}), async_client(endpoint) as client:
            start = time.monotonic()
            with pytest.raises(RpcTimeout) as info:
                await client.call("t.never", timeout_s=0.3)
            elapsed = time.monotonic() - start
            assert 0.25 <= elapsed < 2.0
            assert info.value.code == "RPC_TIMEOUT"
            assert info.value.params == [endpoint, "t.never", "0.3"]
    run(main())


def test_blocking_client_timeout_raises_rpc_timeout_naming_endpoint_and_method(endpoint):
    async def never():
        await asyncio.sleep(30)

    async def main():
        async with serving(endpoint, {"t.never": never}):
            with RpcClient(endpoint) as client:
                start = time.monotonic()
                with pytest.raises(RpcTimeout) as info:
                    await asyncio.to_thread(client.call, "t.never", timeout_s=0.3)
                elapsed = time.monotonic() - start
            assert 0.25 <= elapsed < 2.0
            assert info.value.params == [endpoint, "t.never", "0.3"]
    run(main())


def test_blocking_client_keeps_each_calls_own_budget_across_calls(endpoint):
    """The receive timeout is kept between calls: a short call after long ones still times
    out in its own budget, and a long call after short ones is not cut short."""
    async def never():
        await asyncio.sleep(30)

    async def late():
        await asyncio.sleep(0.4)
        return "late"

    async def main():
        async with serving(endpoint, {"t.never": never, "t.late": late,
                                      "t.now": lambda: "now"}):
            with RpcClient(endpoint, timeout_s=10) as client:
                for _ in range(3):
                    assert await asyncio.to_thread(client.call, "t.now") == "now"
                start = time.monotonic()
                with pytest.raises(RpcTimeout):
                    await asyncio.to_thread(client.call, "t.never", timeout_s=0.3)
                assert 0.25 <= time.monotonic() - start < 2.0
                assert await asyncio.to_thread(client.call, "t.now", timeout_s=0.05) == "now"
                assert await asyncio.to_thread(client.call, "t.late", timeout_s=5) == "late"
    run(main())


def test_async_client_retries_with_no_server_time_out_within_the_overall_budget(endpoint):
    async def main():
        async with async_client(endpoint) as client:
            start = time.monotonic()
            with pytest.raises(RpcTimeout) as info:
                await client.call("sys.health", timeout_s=0.6, retries=2)
            elapsed = time.monotonic() - start
            assert elapsed < 0.6 + 1.0
            assert info.value.params[:2] == [endpoint, "sys.health"]
    run(main())


def test_blocking_client_retries_with_no_server_time_out_within_the_overall_budget(endpoint):
    ctx = zmq.Context()
    client = RpcClient(endpoint, context=ctx)
    outcome = {}

    def call():
        start = time.monotonic()
        try:
            client.call("sys.health", timeout_s=0.6, retries=2)
        except BaseException as exc:  # noqa: BLE001 - recorded and checked below
            outcome["exc"] = exc
        finally:
            outcome["elapsed"] = time.monotonic() - start
            client.close()

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(0.6 + 1.5)
    try:
        assert not worker.is_alive(), "RpcClient.call did not return within its timeout"
        assert isinstance(outcome.get("exc"), RpcTimeout)
        assert outcome["elapsed"] < 0.6 + 1.0
    finally:
        # Unblock a call stuck in send(): terminating the context makes it raise ETERM, the
        # worker then closes its socket and term() completes.
        terminator = threading.Thread(target=ctx.term, daemon=True)
        terminator.start()
        worker.join(3)
        terminator.join(3)


def test_async_client_retrying_call_reaches_a_server_that_starts_late(endpoint):
    async def main():
        async with serving(endpoint, BASIC, bind=False) as server, \
                async_client(endpoint) as client:
            call = asyncio.create_task(client.call("t.add", 1, 2, timeout_s=4, retries=7))
            await wait_until(lambda: 1 in client._pending, what="the first attempt")
            # The first attempt times out (0.5 s) and the retry sends request id 2.
            await wait_until(lambda: 2 in client._pending, what="a retry")
            assert not call.done()
            server.start()
            assert await call == 3
    run(main())


def test_blocking_client_retrying_call_reaches_a_server_that_starts_late(endpoint):
    async def main():
        async with serving(endpoint, BASIC, bind=False) as server:
            with RpcClient(endpoint) as client:
                call = asyncio.create_task(asyncio.to_thread(
                    client.call, "t.add", 1, 2, timeout_s=4, retries=7))
                await wait_until(lambda: client._sock is not None,
                                 what="the first attempt to be in flight")
                assert not call.done()
                server.start()
                assert await asyncio.wait_for(call, 6) == 3
    run(main())


# -- garbage ---------------------------------------------------------------------------------

@pytest.mark.parametrize("frame, words", [
    (random.Random(1).randbytes(64) + b"\xc1", "undecodable"),  # random bytes
    (b"\xc1", "undecodable"),
    (protocol.pack([1, "t.add", [1, 2]]), "not a map"),  # valid msgpack, not a map
    (protocol.pack("t.add"), "not a map"),
    (protocol.pack({"v": 1, "id": 5, "m": "t.add", "a": "12"}), "not a list"),
    (protocol.pack({"v": 9, "id": 6, "m": "t.add"}), "version"),
])
def test_garbage_frame_gets_a_decode_error_reply_and_the_server_keeps_answering(
        endpoint, frame, words):
    async def main():
        async with serving(endpoint, BASIC) as server, raw_dealer(endpoint) as sock, \
                async_client(endpoint) as client:
            await sock.send(frame)
            reply = await recv_reply(sock)
            assert reply["ok"] is False
            assert reply["e"][0] == "MESSAGE_DECODE_ERROR"
            assert words in reply["e"][1]
            assert server.errors["decode"] == 1
            assert await client.call("t.add", 2, 2) == 4
            await sock.send(protocol.pack(protocol.request(11, "t.add", [5, 6])))
            assert await recv_reply(sock) == {"id": 11, "ok": True, "r": 11}
    run(main())


def test_decode_error_reply_carries_the_request_id_when_there_is_one(endpoint):
    async def main():
        async with serving(endpoint, BASIC), raw_dealer(endpoint) as sock:
            await sock.send(protocol.pack({"v": 1, "id": 42, "m": "t.add", "kw": [1]}))
            reply = await recv_reply(sock)
            assert reply["id"] == 42 and reply["ok"] is False
            assert reply["e"][0] == "MESSAGE_DECODE_ERROR"
    run(main())


@pytest.mark.parametrize("frames", [
    [b"a", b"b", b"c"],
    [protocol.pack(protocol.request(1, "t.add", [1, 1])), b"", b"trailer"],
    [b"", b""],
])
def test_message_of_the_wrong_frame_count_is_dropped_and_the_server_keeps_answering(
        endpoint, frames):
    async def main():
        async with serving(endpoint, BASIC) as server, raw_dealer(endpoint) as sock:
            await sock.send_multipart(frames)
            await wait_until(lambda: server.errors["decode"] == 1, what="the drop to be counted")
            await sock.send(protocol.pack(protocol.request(12, "t.add", [3, 4])))
            # Had the bad message been answered, its reply would come first.
            assert await recv_reply(sock) == {"id": 12, "ok": True, "r": 7}
            assert server.calls == {"t.add": 1}
    run(main())


def test_many_random_frames_never_stop_the_server(endpoint):
    async def main():
        async with serving(endpoint, BASIC) as server, raw_dealer(endpoint) as sock, \
                async_client(endpoint) as client:
            rng = random.Random(2)
            for i in range(100):
                await sock.send(rng.randbytes(1 + i % 40))
            await wait_until(lambda: server.errors["decode"] + server.errors["method"]
                             + sum(server.calls.values()) >= 100, what="100 frames handled")
            assert await client.call("t.add", 40, 2) == 42
    run(main())


# -- deadlines -------------------------------------------------------------------------------

def test_a_request_whose_deadline_has_passed_is_not_executed(endpoint):
    effects = []

    def effect(tag):
        effects.append(tag)
        return tag

    async def main():
        async with serving(endpoint, {"t.effect": effect}) as server, \
                raw_dealer(endpoint) as sock:
            await sock.send(protocol.pack(protocol.request(
                1, "t.effect", ["late"], deadline=time.time() - 5)))
            await sock.send(protocol.pack(protocol.request(
                2, "t.effect", ["on time"], deadline=time.time() + 5)))
            # Requests are taken in order: when the second is answered the first was handled,
            # and it must have been dropped without a reply.
            assert await recv_reply(sock) == {"id": 2, "ok": True, "r": "on time"}
            assert server.calls["t.effect"] == 2
            assert effects == ["on time"]
    run(main())


def test_a_request_with_no_deadline_is_executed(endpoint):
    effects = []

    async def main():
        async with serving(endpoint, {"t.effect": effects.append}), raw_dealer(endpoint) as sock:
            await sock.send(protocol.pack(protocol.request(3, "t.effect", ["x"])))
            assert await recv_reply(sock) == {"id": 3, "ok": True, "r": None}
            assert effects == ["x"]
    run(main())


# -- methods that hand back a future (xapi-db's writes) --------------------------------------

def test_a_method_returning_a_future_is_answered_when_it_resolves(endpoint):
    pending = []

    def later(value):
        future = asyncio.get_running_loop().create_future()
        pending.append((future, value))
        return future

    async def main():
        async with serving(endpoint, {"t.later": later}) as server, \
                async_client(endpoint) as client:
            calls = [asyncio.ensure_future(client.call("t.later", i)) for i in range(3)]
            await wait_until(lambda: len(pending) == 3, what="three calls in flight")
            assert not any(call.done() for call in calls) and len(server._tasks) == 3
            pending[0][0].set_result({"v": pending[0][1]})
            pending[1][0].set_exception(XapiError("DB_WRITE_FAILED", "disk full"))
            pending[2][0].set_exception(RuntimeError("bug"))
            assert await calls[0] == {"v": 0}
            with pytest.raises(XapiError) as info:
                await calls[1]
            assert info.value.description == ["DB_WRITE_FAILED", "disk full"]
            with pytest.raises(XapiError) as info:
                await calls[2]
            assert info.value.code == "INTERNAL_ERROR" and "bug" in info.value.params[0]
            assert not server._tasks
    run(main())


def test_a_cancelled_future_gets_no_reply_and_close_cancels_those_in_flight(endpoint):
    pending = []

    def later():
        future = asyncio.get_running_loop().create_future()
        pending.append(future)
        return future

    async def main():
        server = RpcServer(endpoint)
        server.register("t.later", later)
        server.start()
        async with async_client(endpoint, timeout_s=0.3) as client:
            call = asyncio.ensure_future(client.call("t.later"))
            await wait_until(lambda: len(pending) == 1, what="the call in flight")
            pending[0].cancel()
            with pytest.raises(RpcTimeout):
                await call
            asyncio.ensure_future(client.call("t.later"))
            await wait_until(lambda: len(pending) == 2, what="the second call in flight")
            await server.close()
            assert pending[1].cancelled() and not server._tasks
    run(main())


def test_pack_from_many_threads_at_once_keeps_each_message_whole():
    def worker(i, out):
        for n in range(300):
            value = {"id": i, "n": n, "s": "x" * (i * 50 + n % 7), "l": list(range(i))}
            out.append(protocol.unpack(protocol.pack(value)) == value)

    results = []
    threads = [threading.Thread(target=worker, args=(i, results)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 * 300 and all(results)
    with pytest.raises(TypeError):
        protocol.pack({"bad": object()})
    assert protocol.unpack(protocol.pack({"ok": 1})) == {"ok": 1}   # the packer was reset


# -- the server's fast request path and its checked path agree --------------------------------

@pytest.mark.parametrize("request_map, expected", [
    # the fast path's shape: no keyword arguments, a float deadline
    ({"v": 1, "id": 21, "m": "t.two", "a": [1, 2], "dl": 4e9}, {"ok": True, "r": [1, 2]}),
    # the checked path: keyword arguments, an int deadline, no deadline, missing "a"
    ({"v": 1, "id": 21, "m": "t.two", "a": [1], "kw": {"b": 2}, "dl": 4_000_000_000},
     {"ok": True, "r": [1, 2]}),
    ({"v": 1, "id": 21, "m": "t.two", "a": [], "kw": {"a": 1, "b": 2}, "dl": None},
     {"ok": True, "r": [1, 2]}),
    ({"v": 1, "id": 21, "m": "t.echo"}, {"ok": True, "r": {"args": [], "kwargs": {}}}),
    # what the fast path must not let through: True is not version 1, a map is not a list
    ({"v": True, "id": 21, "m": "t.two", "a": [1, 2], "dl": 4e9},
     {"ok": False, "e": ["MESSAGE_DECODE_ERROR", "unsupported protocol version True"]}),
    ({"v": 1, "id": 21, "m": "t.two", "a": {"a": 1}, "dl": 4e9},
     {"ok": False, "e": ["MESSAGE_DECODE_ERROR", "request arguments are not a list"]}),
    ({"v": 1, "id": 21, "m": "", "a": [], "dl": 4e9},
     {"ok": False, "e": ["MESSAGE_DECODE_ERROR", "request has no method name"]}),
    ({"v": 1, "id": 21, "m": "t.two", "a": [1, 2], "dl": "soon"},
     {"ok": False, "e": ["MESSAGE_DECODE_ERROR", "request deadline is not a number"]}),
    ({"v": 1, "id": 21, "m": "t.two", "a": [1, 2], "kw": [], "dl": 4e9},
     {"ok": False, "e": ["MESSAGE_DECODE_ERROR",
                         "request keyword arguments are not a map of names"]}),
])
def test_requests_on_the_fast_and_the_checked_path_get_the_same_answers(
        endpoint, request_map, expected):
    async def main():
        async with serving(endpoint, BASIC), raw_dealer(endpoint) as sock:
            await sock.send(protocol.pack(request_map))
            assert await recv_reply(sock) == {"id": 21, **expected}
    run(main())


def test_a_request_that_is_not_a_map_gets_a_decode_error_without_an_id(endpoint):
    async def main():
        async with serving(endpoint, BASIC) as server, raw_dealer(endpoint) as sock:
            await sock.send(protocol.pack([1, 21, "t.two", [1, 2]]))
            assert await recv_reply(sock) == {
                "id": None, "ok": False, "e": ["MESSAGE_DECODE_ERROR", "request is not a map"]}
            assert server.errors["decode"] == 1
    run(main())


# -- the blocking client takes a reply frame by frame -----------------------------------------

def _answer_once(endpoint, messages_for, ready):
    """A bare ROUTER that answers one request with the messages ``messages_for(request)``."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    ready.set()
    try:
        if sock.poll(5000):
            identity, data = sock.recv_multipart()
            for frames in messages_for(protocol.unpack(data)):
                sock.send_multipart([identity, *frames])
            sock.poll(200)      # let the replies leave before the socket closes
    finally:
        sock.close(0)


@pytest.mark.parametrize("shape", ["stale reply first", "two-part reply", "stray part last"])
def test_blocking_client_passes_over_frames_that_are_not_its_reply(endpoint, shape):
    def messages_for(request):
        good = protocol.pack(protocol.reply_ok(request["id"], "the answer"))
        stale = protocol.pack(protocol.reply_ok(request["id"] - 1, "an old answer"))
        return {"stale reply first": [[stale], [good]],
                "two-part reply": [[stale, good]],
                "stray part last": [[good, stale]]}[shape]

    ready = threading.Event()
    server = threading.Thread(target=_answer_once, args=(endpoint, messages_for, ready))
    server.start()
    try:
        assert ready.wait(5)
        with RpcClient(endpoint, timeout_s=3) as client:
            assert client.call("t.any") == "the answer"
    finally:
        server.join(10)
    assert not server.is_alive()
