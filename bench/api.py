"""xapi-api benchmark, each figure beside its floor measured in the same run.

- ``host.get_record`` calls/s through the XenAPI SDK over the unix socket (session check and a
  xapi-db round trip per call, keep-alive) vs the stdlib ``xmlrpc.server`` on a unix socket
  answering a struct of the same size from memory (one connection per call: HTTP/1.0), with
  the same SDK client (goal >= 1.0x);
- ``event.from`` wake-up latency after a write made by another client (p50/p99; goal p99 <=
  5 ms), measured from the write's acknowledgement (the verdict) and, beside it, from the
  moment the write is sent (which adds the write's own durable commit: redo log, fsync).

The machine may be shared: compare the ratios, each measured in one run, not the absolute rates.
"""

import argparse
import multiprocessing
import os
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.server
from pathlib import Path

import XenAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.paths import Paths  # noqa: E402

BIN = Path(sys.executable).parent
CTL = str(BIN / "xapi-ctl")
SLICES_PER_ROUND = 6


def ctl(root, *args, timeout_s=300):
    done = subprocess.run([CTL, "--root", root, *args], capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"xapi-ctl {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return done


def sdk_uri(link_dir, socket_path, name):
    """The SDK turns "_" into "/" in a unix URI: reach the socket through a symlink whose path
    has no underscore."""
    link = os.path.join(link_dir, name)
    os.symlink(socket_path, link)
    return "http://" + link.replace("/", "_") + "/"


def unix_session(uri):
    session = XenAPI.Session(uri, transport=XenAPI.UDSTransport())
    session.xenapi.login_with_password("root", "", "2.3", "bench")
    return session


# -- the floor: the stdlib's XML-RPC server on a unix socket, answers from memory ------------

class UnixHandler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False     # TCP_NODELAY does not apply to a unix socket


class UnixXMLRPCServer(socketserver.UnixStreamServer, xmlrpc.server.SimpleXMLRPCDispatcher):
    logRequests = False                 # the handler asks its server

    def __init__(self, path):
        xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding=None)
        socketserver.UnixStreamServer.__init__(self, path, UnixHandler)


def serve_floor(path, record, ready):
    server = UnixXMLRPCServer(path)
    server.register_function(lambda *a: {"Status": "Success", "Value": "OpaqueRef:floor"},
                             "session.login_with_password")
    server.register_function(lambda session, ref: {"Status": "Success", "Value": record},
                             "host.get_record")
    ready.set()
    server.serve_forever()


def rate(session, host, seconds):
    get_record = session.xenapi.host.get_record
    calls, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        get_record(host)
        calls += 1
    return calls / (time.perf_counter() - started)


# -- event.from wake-up ------------------------------------------------------------------------

def wakeups(uri, samples):
    watcher, writer = unix_session(uri), unix_session(uri)
    event_from = getattr(watcher.xenapi.event, "from")
    vm = writer.xenapi.VM.get_all()[0]
    token = event_from(["vm"], "", 0.0)["token"]
    sent, acked, woke = [], [], []
    waiting = threading.Event()
    done = threading.Event()

    def watch():
        nonlocal token
        for _ in range(samples):
            waiting.set()
            batch = event_from(["vm"], token, 30.0)
            woke.append(time.perf_counter())
            token = batch["token"]
            done.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    for i in range(samples):
        waiting.wait(30)
        waiting.clear()
        time.sleep(0.02)        # let the watcher's call reach xapi-db and block there
        sent.append(time.perf_counter())
        writer.xenapi.VM.set_name_description(vm, f"bench {i}")
        acked.append(time.perf_counter())
        done.wait(30)
        done.clear()
    thread.join(30)
    from_sent = [w - s for w, s in zip(woke, sent)]
    from_ack = [max(0.0, w - a) for w, a in zip(woke, acked)]
    write = [a - s for a, s in zip(acked, sent)]
    return from_sent, from_ack, write


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and server")
    parser.add_argument("--samples", type=int, default=300, help="event.from wake-ups")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="xb", dir="/tmp")
    while "_" in (link_dir := tempfile.mkdtemp(prefix="xl", dir="/tmp")):
        os.rmdir(link_dir)
    floor_proc = None
    try:
        ctl(root, "init")
        with open(Paths(root).xapi_conf, "a") as f:
            f.write("\nhttp-port = 0\nhttps-port = 0\nmanagement-address = 127.0.0.1\n")
        ctl(root, "up")
        uri = sdk_uri(link_dir, str(Paths(root).api_socket), "api")
        session = unix_session(uri)
        host = session.xenapi.host.get_all()[0]
        record = session.xenapi.host.get_record(host)

        floor_path = os.path.join(link_dir, "floor")
        ready = multiprocessing.Event()
        floor_proc = multiprocessing.Process(target=serve_floor,
                                             args=(floor_path, record, ready), daemon=True)
        floor_proc.start()
        ready.wait(30)
        floor_uri = "http://" + floor_path.replace("/", "_") + "/"
        floor = unix_session(floor_uri)
        assert floor.xenapi.host.get_record(host) == record

        # short slices, ours and the floor in turn: on a shared machine the load changes
        # over seconds, and each pair of slices sees about the same load
        ours, theirs = [], []
        for _ in range(args.rounds * SLICES_PER_ROUND):
            ours.append(rate(session, host, args.seconds / SLICES_PER_ROUND))
            theirs.append(rate(floor, host, args.seconds / SLICES_PER_ROUND))
        our_rate, floor_rate = statistics.median(ours), statistics.median(theirs)
        ratios = sorted(o / f for o, f in zip(ours, theirs))
        ratio = statistics.median(ratios)
        print(f"xapi-api benchmark, {args.rounds} round(s) of {args.seconds:g} s, medians, "
              f"{os.cpu_count()} cores (a shared machine: compare the ratios)")
        print(f"{'host.get_record over the unix socket':<40}{our_rate:8.0f} calls/s   "
              f"stdlib floor {floor_rate:8.0f} calls/s   ratio {ratio:5.2f}x   goal >= 1.0x: "
              f"{'meets' if ratio >= 1.0 else 'MISSES'}")
        print(f"{'':<40}ratio: median of {len(ratios)} paired slices; quartiles "
              f"{pct(ratios, 25):.2f}x .. {pct(ratios, 75):.2f}x")

        from_sent, from_ack, write = wakeups(uri, args.samples)
        p99 = pct(from_ack, 99)
        print(f"{'event.from wake-up after a write':<40}p50 {pct(from_ack, 50) * 1000:6.2f} ms"
              f"   p99 {p99 * 1000:6.2f} ms   goal p99 <= 5 ms: "
              f"{'meets' if p99 <= 0.005 else 'MISSES'}   (from the write's acknowledgement, "
              f"{len(from_ack)} samples)")
        print(f"{'':<40}from the write being sent: p50 {pct(from_sent, 50) * 1000:.2f} ms"
              f" p99 {pct(from_sent, 99) * 1000:.2f} ms; the write itself (durable commit): "
              f"p50 {pct(write, 50) * 1000:.2f} ms p99 {pct(write, 99) * 1000:.2f} ms")
    finally:
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.join(10)
        subprocess.run([CTL, "--root", root, "down"], capture_output=True, timeout=300)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(link_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
