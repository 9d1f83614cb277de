"""xapi-db benchmark, each figure beside a peer measured in the same run.

- read_field from one client vs a bare pyzmq DEALER/ROUTER echo of the same size (goal >= 0.6x)
  and vs redis-py GET against a local redis-server (goal >= 1.0x);
- acknowledged durable writes/s with 8 clients vs redis with appendfsync always (goal >= 1.0x);
- batched reads (db.read_fields) >= 100,000 fields/s;
- loading a 100,000-row state.db vs a plain ElementTree parse of the same file (goal <= 2x).

Needs Debian's redis-server and the redis Python package (`make bench` installs both).
"""

import argparse
import asyncio
import concurrent.futures
import gc
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import protocol  # noqa: E402
from common.paths import Paths  # noqa: E402
from common.rpc import RpcClient  # noqa: E402

BIN = Path(sys.executable).parent


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rate(fn, seconds):
    """Calls of fn per second over about ``seconds``."""
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn()
        count += 100
    return count / (time.perf_counter() - started)


def rates_in_turns(fns, seconds, turns):
    """Calls per second of each of ``fns``, the median of ``turns`` turns; in each turn every
    fn runs for ``seconds / turns``, one after the other, so that a drift of the machine's
    speed falls on all of them alike."""
    for fn in fns:
        fn()      # connected, and the first call's set-up out of the figure
    results = [[] for _ in fns]
    for _ in range(turns):
        for fn, out in zip(fns, results):
            out.append(rate(fn, seconds / turns))
    return [statistics.median(out) for out in results]


def parallel_rates_in_turns(makers, clients, seconds, turns):
    """Calls per second of ``clients`` threads at once, for each of ``makers`` (``make(i)``
    gives client i's call), the median of ``turns`` turns, the makers taking turns as in
    rates_in_turns. Each client is made once, in a thread of its own, and kept for every turn
    (a ZeroMQ socket may move between threads that start and join one another)."""
    fns = []
    for make in makers:
        made = [None] * clients
        builders = [threading.Thread(target=lambda i=i: made.__setitem__(i, make(i)))
                    for i in range(clients)]
        for t in builders:
            t.start()
        for t in builders:
            t.join(30)
        fns.append(made)
    results = [[] for _ in makers]
    for _ in range(turns):
        for made, out in zip(fns, results):
            out.append(_parallel_rate(made, seconds / turns))
    return [statistics.median(out) for out in results]


def _parallel_rate(fns, seconds):
    counts = [0] * len(fns)
    stop = threading.Event()
    barrier = threading.Barrier(len(fns) + 1)

    def worker(i):
        fn = fns[i]
        barrier.wait()
        while not stop.is_set():
            fn()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return sum(counts) / (time.perf_counter() - started)


def line(what, value, unit, peer_name, peer, goal_text, meets):
    ratio = f"ratio {value / peer:5.2f}x" if peer else ""
    print(f"{what:<44}{value:12,.0f} {unit:<9}{peer_name:<28}{peer:12,.0f}  {ratio}  "
          f"{goal_text}: {'meets' if meets else 'MISSES'}")


# -- peers -------------------------------------------------------------------------------------
# For reference (no goal): the least any Python server on ZeroMQ pays for a read. One blocking
# thread, no event loop, no checks beyond the request's shape, a dict for the table; the same
# envelope and msgpack options as xapi-db (common/protocol.py), its reply packed the same way.
MINIMAL_READ_SERVER = """
import sys, time, zmq
sys.path.insert(0, sys.argv[2])
from common import protocol
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
tables = {"VM": {sys.argv[3]: {"name_label": sys.argv[4]}}}
pack = protocol.new_packer().pack
while True:
    ident = s.recv()
    msg = protocol.unpack(s.recv())
    if msg["dl"] < time.time():
        continue
    cls, ref, field = msg["a"]
    s.send(ident, zmq.SNDMORE)
    s.send(pack(protocol.reply_ok(msg["id"], tables[cls][ref][field])))
"""
ECHO_SERVER = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
while True:
    ident, msg = s.recv_multipart()
    s.send_multipart([ident, msg])
"""


def start_redis(workdir, fsync_always):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "yes" if fsync_always else "no",
         "--appendfsync", "always", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(host="127.0.0.1", port=port)

    def up():
        try:
            return client.ping()
        except redis.ConnectionError:
            return False
    wait_for(up, 10, "redis-server")
    return proc, port


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--turns", type=int, default=10,
                        help="turns of the single-client read figures (default 10)")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is missing: `make bench` installs it "
                         "(apt-get install redis-server)")
    import redis

    root = tempfile.mkdtemp(prefix="xd", dir="/tmp")
    procs = []
    try:
        paths = Paths(root)
        paths.make_dirs()
        db = subprocess.Popen([str(BIN / "xapi-db"), "--root", root],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        procs.append(db)
        client = RpcClient(paths.rpc_endpoint("xapi-db"), timeout_s=10)

        def db_up():
            try:
                return client.call("sys.health", timeout_s=0.5)["state"] == "serving"
            except Exception:
                return False
        wait_for(db_up, 20, "xapi-db")
        client.call("db.set_mode", "master")
        vm = client.call("db.create_row", "VM", {"name_label": "bench-vm"})
        value = client.call("db.read_field", "VM", vm, "name_label")
        request_size = len(protocol.pack(protocol.request(1, "db.read_field",
                                                          ["VM", vm, "name_label"], {}, 0.0)))

        # 1. reads from one client, beside the two peers, measured in turns: on a shared or
        # virtual machine the speed drifts by 10-20 % over seconds, and figures taken one
        # after the other would carry that drift into their ratios.
        echo_endpoint = f"ipc://{root}/echo.sock"
        echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, echo_endpoint])
        procs.append(echo)
        ctx = zmq.Context.instance()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(echo_endpoint)
        payload = b"x" * request_size

        def echo_call():
            dealer.send(payload)
            dealer.recv()

        redis_dir = Path(root) / "redis"
        redis_dir.mkdir()
        rproc, rport = start_redis(redis_dir, fsync_always=True)
        procs.append(rproc)
        r = redis.Redis(host="127.0.0.1", port=rport)
        r.set("k", value)
        minimal_endpoint = f"ipc://{root}/minimal.sock"
        minimal = subprocess.Popen([sys.executable, "-c", MINIMAL_READ_SERVER, minimal_endpoint,
                                    str(Path(__file__).resolve().parent.parent), vm, value])
        procs.append(minimal)
        minimal_client = RpcClient(minimal_endpoint, timeout_s=10)
        reads, echo_rate, redis_get, minimal_rate = rates_in_turns(
            [lambda: client.call("db.read_field", "VM", vm, "name_label"), echo_call,
             lambda: r.get("k"),
             lambda: minimal_client.call("db.read_field", "VM", vm, "name_label")],
            args.seconds, args.turns)

        print(f"xapi-db benchmark ({args.seconds:g} s per figure, {os.cpu_count()} cores)")
        print(f"  reads: median of {args.turns} turns of {args.seconds / args.turns * 1000:.0f} ms, "
              f"writes: of {WRITE_TURNS} turns of {args.seconds / WRITE_TURNS * 1000:.0f} ms, "
              "each taken in turn with its peers")
        line("read_field, 1 client (calls/s)", reads, "calls/s", "pyzmq echo, same size", echo_rate,
             "goal >= 0.6x", reads >= 0.6 * echo_rate)
        line("read_field, 1 client (calls/s)", reads, "calls/s", "redis-py GET", redis_get,
             "goal >= 1.0x", reads >= redis_get)
        print(f"{'  for reference, no goal:':<44}{'':22}{'minimal Python read server':<28}"
              f"{minimal_rate:12,.0f}  ratio {reads / minimal_rate:5.2f}x  "
              f"(it vs redis-py GET: {minimal_rate / redis_get:.2f}x)")

        # 2. durable writes, 8 clients
        def make_db_writer(i):
            c = RpcClient(paths.rpc_endpoint("xapi-db"), timeout_s=30,
                          context=zmq.Context.instance())
            ref = c.call("db.create_row", "VM", {"name_label": f"w{i}"})
            counter = iter(range(10**9))
            return lambda: c.call("db.write_field", "VM", ref, "name_description",
                                  f"v{next(counter)}")

        def make_redis_writer(i):
            rc = redis.Redis(host="127.0.0.1", port=rport)
            counter = iter(range(10**9))
            return lambda: rc.set(f"w{i}", f"v{next(counter)}")
        db_writes, redis_writes = parallel_rates_in_turns(
            [make_db_writer, make_redis_writer], 8, args.seconds, WRITE_TURNS)
        line("durable writes, 8 clients", db_writes, "writes/s", "redis appendfsync always",
             redis_writes, "goal >= 1.0x", db_writes >= redis_writes)

        # 3. batched reads
        batch = [["VM", vm, "name_label"]] * 1000
        batched = rate(lambda: client.call("db.read_fields", batch), args.seconds / 100) * 1000
        line("batched reads (db.read_fields x1000)", batched, "fields/s", "floor", 100_000,
             "goal >= 100,000/s", batched >= 100_000)
        client.close()
        db.terminate()
        db.wait(30)

        # 4. loading a 100,000-row state.db
        load_s, et_s = bench_load(args.rows)
        print(f"{'load %d-row state.db' % args.rows:<44}{load_s * 1000:12,.0f} ms       "
              f"{'ElementTree parse':<28}{et_s * 1000:12,.0f}  ratio {load_s / et_s:5.2f}x  "
              f"goal <= 2x: {'meets' if load_s <= 2 * et_s else 'MISSES'}")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


LOAD_REPEATS = 4
WRITE_TURNS = 5


def _timed(fn, *args):
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def bench_load(rows):
    """Engine.open (Persistence.load and the store) on a generated file vs ET.fromstring of the
    same bytes, the best of LOAD_REPEATS for each, taken in turns (a drift of the machine's
    speed falls on both alike), each after a full collection."""
    from common import schema
    from daemons.db import persist, xmlfile
    from daemons.db.engine import Engine
    from daemons.db.store import Store
    root = tempfile.mkdtemp(prefix="xl", dir="/tmp")
    try:
        paths = Paths(root)
        paths.make_dirs()
        store = Store()
        vm_class = schema.CLASSES["VM"]
        for i in range(rows):
            values = schema.default_record(vm_class)
            values.update(uuid=f"00000000-0000-0000-0000-{i:012d}",
                          name_label=f"vm {i}", other_config={"k": f"v {i}"})
            store.load_row("VM", f"OpaqueRef:{i:08d}-0000-0000-0000-000000000000", values, i, i)
        store.generation = rows
        xmlfile.write_file(paths.state_db, persist.store_to_raw(store))
        # The generating store is freed first: alive, its millions of objects would make every
        # collection during the peer's parse slower, in our favour.
        del store, values
        gc.collect()
        data = paths.state_db.read_bytes()

        async def load():
            engine = Engine(paths, concurrent.futures.ThreadPoolExecutor(1))
            started = time.perf_counter()
            await engine.open()
            took = time.perf_counter() - started
            assert len(engine.store.tables["VM"].rows) == rows
            await engine.writer.stop()
            engine.redo.close()
            return took
        et_times, load_times = [], []
        for _ in range(LOAD_REPEATS):
            gc.collect()
            et_times.append(_timed(ET.fromstring, data))
            gc.collect()
            load_times.append(asyncio.run(load()))
        return min(load_times), min(et_times)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
