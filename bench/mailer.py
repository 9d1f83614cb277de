"""Mail benchmark: 10,000 messages through xapi-mailer to a local aiosmtpd server.

A tree in a temp ROOT; an aiosmtpd server on 127.0.0.1 (a free port) in this process; the
pool's other_config pointed at it (mail-inhibit-period 0, so no repeat is folded). Clients
call xapi-db's message.create as fast as it answers (each message a distinct name, priority
1); the server (a process of its own) notes when each e-mail's DATA arrives. Reported:
messages/s from the first create to the last acceptance, message.create's own rate, and the
time from message.create's return (the message exists) to SMTP acceptance (p50, p99, max).
``--connections K`` sets the mailer's mail-smtp-connections (default: xapi.conf's default).

Goal: p99 <= 1 s while the server is up.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmtpd.controller import Controller  # noqa: E402

from common.paths import Paths  # noqa: E402
from common.rpc import RpcClient  # noqa: E402

BIN = Path(sys.executable).parent
CTL = str(BIN / "xapi-ctl")
GOAL_P99_S = 1.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """The SMTP server's handler. It runs in a process of its own (``--sink``): in this one,
    the creating threads would hold the GIL and slow every SMTP round trip by up to the
    interpreter's switch interval. Each accepted e-mail is one line "index time" in a file."""

    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        now = time.time()
        for line in envelope.content.split(b"\r\n"):
            if line.startswith(b"X-Xapi-Message: BENCH_"):
                index = int(line.split()[1][len(b"BENCH_"):])
                self.out.write(f"{index} {now:.6f}\n")
                self.out.flush()
                break
        return "250 OK"


def run_sink(port, path):
    with open(path, "a") as out:
        controller = Controller(Sink(out), hostname="127.0.0.1", port=port)
        controller.start()
        print("ready", flush=True)
        sys.stdin.read()          # until the parent closes our stdin
        controller.stop()


def read_accepted(path):
    accepted = {}
    with open(path) as f:
        for line in f:
            index, when = line.split()
            accepted.setdefault(int(index), float(when))
    return accepted


def ctl(root, *args, timeout=300):
    done = subprocess.run([CTL, "--root", root, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"xapi-ctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--connections", type=int, default=None,
                        help="the mailer's mail-smtp-connections")
    parser.add_argument("--sink", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        return run_sink(int(args.sink[0]), args.sink[1])

    root = tempfile.mkdtemp(prefix="xb", dir="/tmp")
    port = free_port()
    accepted_file = os.path.join(root, "accepted.txt")
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(port), accepted_file],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if sink.stdout.readline().strip() != "ready":
            raise SystemExit("the SMTP server did not start")
        ctl(root, "init")
        with open(Paths(root).xapi_conf, "a") as conf:   # room for the whole run: no shedding
            conf.write(f"\nmail-outbox-max = {args.messages + 1000}\n")
            if args.connections is not None:
                conf.write(f"mail-smtp-connections = {args.connections}\n")
        ctl(root, "up")
        paths = Paths(root)
        db = RpcClient(paths.rpc_endpoint("xapi-db"), timeout_s=30)
        pool = db.call("db.read_refs", "pool")[0]
        host = db.call("db.read_refs", "host")[0]
        host_uuid = db.call("db.read_field", "host", host, "uuid")
        other_config = db.call("db.read_field", "pool", pool, "other_config")
        other_config.update({"mail-destination": "ops@example.com",
                             "mail-sender": "xapi@bench.example",
                             "ssmtp-mailhub": f"127.0.0.1:{port}",
                             "mail-inhibit-period": "0"})
        db.call("db.write_field", "pool", pool, "other_config", other_config)

        created = {}
        next_index = iter(range(args.messages))
        index_lock = threading.Lock()

        def client():
            with RpcClient(paths.rpc_endpoint("xapi-db"), timeout_s=30) as c:
                while True:
                    with index_lock:
                        index = next(next_index, None)
                    if index is None:
                        return
                    c.call("message.create", f"BENCH_{index}", 1, "Host", host_uuid,
                           f"benchmark message {index}")
                    created[index] = time.time()

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created_s = time.time() - t0
        deadline = time.monotonic() + 600
        while len(accepted := read_accepted(accepted_file)) < args.messages:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(accepted)} of {args.messages} e-mails arrived "
                                 f"within 600 s; see {paths.log_file('xapi-mailer')}")
            time.sleep(0.2)
        latencies = [accepted[i] - created[i] for i in created]
        total_s = max(accepted.values()) - t0
        stats = RpcClient(paths.rpc_endpoint("xapi-mailer")).call("sys.stats")
        p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
        print(f"mailer: {args.messages} messages, {args.clients} creating clients, "
              f"{stats['smtp_connections']} SMTP connections ({os.cpu_count()} CPUs, load "
              f"average {os.getloadavg()[0]:.1f}, machine possibly shared)")
        print(f"  message.create alone        {args.messages / created_s:8.0f} messages/s")
        print(f"  create to SMTP acceptance   {args.messages / total_s:8.0f} messages/s "
              f"(first create to last acceptance, {total_s:.1f} s)")
        print(f"  latency p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms   max "
              f"{max(latencies) * 1000:7.1f} ms   mean {statistics.mean(latencies) * 1000:.1f} ms")
        print(f"  goal p99 <= {GOAL_P99_S:g} s: {'met' if p99 <= GOAL_P99_S else 'NOT met'}; "
              f"mailer batches {stats['batches']}, SMTP connections {stats['smtp_connects']}, "
              f"sent {stats['sent']}, failures {stats['failures']}, shed {stats['shed']}")
        busy = stats["busy_s"]
        print(f"  mailer CPU {stats['cpu_s']:.1f} s; time in (s): {busy}; delivery capacity "
              f"~{stats['sent'] * stats['smtp_connections'] / max(busy['deliver_s'], 1e-9):.0f}"
              f" e-mails/s (connections / mean time per delivery)")
    finally:
        sink.stdin.close()
        sink.wait(timeout=30)
        subprocess.run([CTL, "--root", root, "down"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
