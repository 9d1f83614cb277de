"""Start-up benchmark: the tree's time to init complete beside its floor, measured in one run.

Floor: as many processes as the tree starts (xapi-ctl, supervisord and the eight programs),
each running `python -c "import zmq.asyncio, msgpack, psutil"`, one after another.
Restart: `xapi-ctl restart xapi-db` minus `xapi-ctl --help` (the CLI's own start), beside one
such spawn. Also the tree's resident memory and its idle CPU.

Goals: start-up <= 1.5x its floor; a restart <= 1.5x one spawn; RSS <= 300 MB; idle CPU <= 1%
of one core.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
CTL = str(BIN / "xapi-ctl")
TREE_PROCESSES = 10   # xapi-ctl, supervisord, eight programs
IMPORTS = "import zmq.asyncio, msgpack, psutil"


def timed(argv, check=True):
    started = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    took = time.perf_counter() - started
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stdout.decode()}{done.stderr.decode()}")
    return took


def spawn_floor(count):
    return timed([sys.executable, "-c", IMPORTS]) if count == 1 else sum(
        timed([sys.executable, "-c", IMPORTS]) for _ in range(count))


def settle(root, timeout_s=10.0):
    """Wait until every program is RUNNING in supervisord (past its startsecs): a restart of a
    program still STARTING takes supervisord's slower stop-and-start path, which is another
    figure than the restart of a running daemon this benchmark measures."""
    import json
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run([CTL, "--root", root, "status", "--json"], capture_output=True,
                              timeout=60)
        try:
            daemons = json.loads(done.stdout)["daemons"]
        except (ValueError, KeyError):
            daemons = []
        if daemons and all(d["state"] == "RUNNING" and d["ready"] for d in daemons):
            return
        time.sleep(0.2)
    raise SystemExit(f"the tree at {root} did not settle within {timeout_s:g} s")


def tree_processes(root):
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        if root in " ".join(proc.info["cmdline"] or []):
            procs.append(proc)
    return procs


def idle_cpu(root, seconds):
    procs = tree_processes(root)
    before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, deadline - time.monotonic()))
    used = 0.0
    for p in procs:
        try:
            used += sum(p.cpu_times()[:2]) - before[p.pid]
        except psutil.NoSuchProcess:
            pass
    return 100.0 * used / seconds, len(procs)


def ratio_line(what, value, peer, peer_name, goal):
    ratio = value / peer
    verdict = "meets" if ratio <= goal else "MISSES"
    print(f"{what:<34}{value * 1000:9.0f} ms   {peer_name} {peer * 1000:7.0f} ms   "
          f"ratio {ratio:5.2f}x   goal <= {goal}x: {verdict}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=60.0)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="xb", dir="/tmp")
    try:
        timed([CTL, "--root", root, "init"])
        ups, floors, restarts, helps, spawns, light = [], [], [], [], [], []
        for _ in range(args.rounds):
            floors.append(spawn_floor(TREE_PROCESSES))
            ups.append(timed([CTL, "--root", root, "up"]))
            for _ in range(3):
                spawns.append(spawn_floor(1))
                helps.append(timed([CTL, "--help"]))
                restarts.append(timed([CTL, "--root", root, "restart", "xapi-db"]))
                light.append(timed([CTL, "--root", root, "restart", "xapi-ha"]))
                settle(root)
            timed([CTL, "--root", root, "down"])
        up, floor = statistics.median(ups), statistics.median(floors)
        restart = statistics.median(restarts) - statistics.median(helps)
        spawn = statistics.median(spawns)
        print(f"xapi-py start-up benchmark, {args.rounds} round(s), medians, {os.cpu_count()} cores")
        ratio_line("start-up to init complete", up, floor, f"floor ({TREE_PROCESSES} spawns)", 1.5)
        ratio_line("restart xapi-db (minus CLI start)", restart, spawn, "one spawn", 1.5)
        ratio_line("restart xapi-ha (for comparison)",
                   statistics.median(light) - statistics.median(helps), spawn, "one spawn", 1.5)

        timed([CTL, "--root", root, "up"])
        rss_mb = sum(p.memory_info().rss for p in tree_processes(root)) / 2**20
        cpu_pct, count = idle_cpu(root, args.idle_s)
        timed([CTL, "--root", root, "down"])
        print(f"{'resident memory of the tree':<34}{rss_mb:9.1f} MB   {count} processes"
              f"{'':12}goal <= 300 MB: {'meets' if rss_mb <= 300 else 'MISSES'}")
        print(f"{'idle CPU over %.0f s' % args.idle_s:<34}{cpu_pct:9.2f} %    of one core"
              f"{'':17}goal <= 1%: {'meets' if cpu_pct <= 1.0 else 'MISSES'}")
    finally:
        subprocess.run([CTL, "--root", root, "down"], capture_output=True, timeout=300)
        for proc in tree_processes(root):
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
