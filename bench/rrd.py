"""xapi-rrd benchmark, each figure beside its peer or budget, measured in the same run.

1. The CPU of one 5 s monitoring cycle with 1 host and --vms running VMs (200) in the simulated
   hypervisor, read from the real xapi-rrd of a temp tree (`xapi-ctl up`): its sys.stats
   ``cycle_cpu_s_last`` (process CPU time around RrdDaemon.cycle, the sampling thread included)
   after each of --cycles cycles. Beside it, the whole xapi-rrd process's CPU over the same
   cycles divided by their number (psutil; adds the idle loop, RPC and flushes).
   Goal: <= 2% of one core, i.e. <= 0.1 CPU s per 5 s cycle.
2. Updating --sources data sources (10,000) once, spread over RRDs with xapi's archives (5 s
   AVERAGE; 1 min, 1 h, 1 day in the CFs of the layout; xff 0.5, as rrdtool takes no xff of
   1.0) in two layouts (--layout):
   200 RRDs of 50 data sources with AVERAGE, MIN and MAX (10 archives: the host RRD's, or VM
   RRDs with create_min_max_in_new_VM_RRDs), and 500 RRDs of 20 with AVERAGE only (4 archives:
   xapi's VM RRDs by default). Our engine (Rrd.update, in this process) vs Debian's rrdtool on
   files made by `rrdtool create` with the same step, data sources and archives, fed the same
   `update` lines through one `rrdtool -` (pipe mode) process started beforehand, so its
   start-up is not counted. Data source types GAUGE, DERIVE, ABSOLUTE in turn. CPU is the figure
   judged (the machine may be shared: wall time is printed too): ours is this process's CPU
   time, rrdtool's is its /proc/<pid>/schedstat run time (ns). After the rounds the newest
   5 s row of one RRD is fetched from rrdtool and compared with ours: both did the same work.
   Goal: ours <= 1.0x rrdtool.

Needs Debian's rrdtool (`apt-get install rrdtool`).
"""

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.paths import Paths  # noqa: E402
from common.platform.xensim import XenSim  # noqa: E402
from common.rpc import RpcClient  # noqa: E402
from daemons.rrd.engine import (ABSOLUTE, AVERAGE, DERIVE, GAUGE, MAX, MIN, STEP_S,  # noqa: E402
                                VM_XFF, DataSource, Rrd, archive_specs)

BIN = Path(sys.executable).parent
CTL = str(BIN / "xapi-ctl")
CYCLE_BUDGET_S = 0.02 * STEP_S     # 2% of one core over a 5 s cycle
T0 = 1_700_006_400                 # a day boundary (multiple of 86400): every archive starts here
DS_TYPES = (GAUGE, DERIVE, ABSOLUTE)


def run(argv, timeout_s=600):
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stdout.decode()}{done.stderr.decode()}")
    return done.stdout.decode()


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def verdict(ok):
    return "meets" if ok else "MISSES"


# -- 1. the monitoring cycle on a real tree -----------------------------------------------------

def bench_cycle(vms, cycles, guest_agent):
    """[cycle_cpu_s_last per cycle], process CPU per cycle, RRDs held, late cycles."""
    root = tempfile.mkdtemp(prefix="xr", dir="/tmp")
    rrd = None
    try:
        run([CTL, "--root", root, "init"])
        run([CTL, "--root", root, "up"])
        paths = Paths(root)
        sim = XenSim(paths.xensim)
        rrd = RpcClient(paths.rpc_endpoint("xapi-rrd"), timeout_s=10)
        errors_before = rrd.call("sys.stats")["cycle_errors"]
        for n in range(vms):
            sim.start(sim.create_domain(f"bench-vm-{n}", memory_kib=524288, vcpus=1,
                                        guest={"agent": guest_agent})["uuid"])
        proc = psutil.Process(rrd.call("sys.health")["pid"])
        # every running domain (dom0 too) has a VM RRD, and the host its own
        expected = 1 + sum(1 for d in sim.domains() if d["power_state"] == "Running")

        def stats():
            s = rrd.call("sys.stats")
            if s["cycle_errors"] > errors_before:
                raise SystemExit(f"xapi-rrd's monitoring cycle fails with {vms} VMs: "
                                 f"{s['last_cycle_error']} (--no-guest-agent measures VMs "
                                 "without the guest agent's data sources)")
            return s
        # a cycle that created the VMs' RRDs is a one-off: start counting after two full cycles
        # that saw every VM
        wait_for(lambda: stats()["rrds"] >= expected, 60, f"xapi-rrd holding {expected} RRDs")
        first = stats()["cycles"]
        wait_for(lambda: stats()["cycles"] >= first + 2, 30, "two monitoring cycles")
        seen = stats()
        cpu0, n0 = sum(proc.cpu_times()[:2]), seen["cycles"]
        per_cycle = []
        while len(per_cycle) < cycles:
            # cycles run at multiples of 5 s: ask once it is due, not all along (the RPCs
            # would be counted in the process's CPU)
            time.sleep(max(0.0, STEP_S - time.time() % STEP_S) + 0.3)
            now = wait_for(lambda: (s := stats())["cycles"] > seen["cycles"] and s,
                           3 * STEP_S + 10, "the next monitoring cycle")
            if now["cycles"] > seen["cycles"] + 1:
                print(f"  note: {now['cycles'] - seen['cycles'] - 1} cycle(s) not sampled "
                      "(the machine is loaded)")
            per_cycle.append(now["cycle_cpu_s_last"])
            seen = now
        process_per_cycle = (sum(proc.cpu_times()[:2]) - cpu0) / (seen["cycles"] - n0)
        return per_cycle, process_per_cycle, seen["rrds"], seen["late_cycles"]
    finally:
        if rrd is not None:
            rrd.close()
        subprocess.run([CTL, "--root", root, "down"], capture_output=True, timeout=300)
        for p in psutil.process_iter(["cmdline"]):
            if root in " ".join(p.info["cmdline"] or []):
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


# -- 2. 10,000 data sources: our engine vs rrdtool ----------------------------------------------

def layout(sources, files):
    """[(file name, [DataSource])]: ``sources`` data sources over ``files`` RRDs."""
    per, extra = divmod(sources, files)
    out = []
    for f in range(files):
        count = per + (1 if f < extra else 0)
        out.append((f"f{f}", [DataSource(f"ds{i}", DS_TYPES[i % 3], min=0.0)
                              for i in range(count)]))
    return out


def round_values(r, count, f):
    """Values of round ``r`` for a file: counters that grow (DERIVE, ABSOLUTE) and gauges."""
    return [float(r * (100 + f) + i) for i in range(count)]


def rrdtool_create_line(name, sources, cfs):
    ds = " ".join(f"DS:{d.name}:{d.type}:{d.heartbeat}:0:U" for d in sources)
    rra = " ".join(f"RRA:{cf}:{xff}:{pdp_cnt}:{rows}"
                   for cf, pdp_cnt, rows, xff in archive_specs(cfs, VM_XFF))
    return f"create {name}.rrd --start {T0} --step {STEP_S} {ds} {rra}\n"


class RrdtoolPipe:
    """One `rrdtool -` process: lines in, one OK/ERROR answer per command out."""

    def __init__(self, workdir):
        self.proc = subprocess.Popen(["rrdtool", "-"], cwd=workdir, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1 << 20)
        self.schedstat = Path(f"/proc/{self.proc.pid}/schedstat")

    def cpu_s(self):
        try:
            return int(self.schedstat.read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):   # no schedstat: clock ticks (coarser)
            return sum(psutil.Process(self.proc.pid).cpu_times()[:2])

    def commands(self, lines):
        """Send every line (from a thread, so neither side blocks on a full pipe); return the
        output lines of each command (its last line being OK ...)."""
        writer = threading.Thread(target=self._write, args=(lines,))
        writer.start()
        answers, current = [], []
        while len(answers) < len(lines):
            out = self.proc.stdout.readline()
            if not out:
                raise SystemExit("rrdtool - ended early")
            if out.startswith("ERROR"):
                raise SystemExit(f"rrdtool: {out.strip()} (command {lines[len(answers)]!r:.120})")
            current.append(out.rstrip("\n"))
            if out.startswith("OK "):
                answers.append(current)
                current = []
        writer.join()
        return answers

    def _write(self, lines):
        self.proc.stdin.write("".join(lines))
        self.proc.stdin.flush()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(60)


def bench_update(sources, files, cfs, rounds):
    """Per round (after one warm-up round): (our CPU s, our wall s, rrdtool CPU s, rrdtool wall
    s); and the check of the newest 5 s row."""
    work = tempfile.mkdtemp(prefix="xu", dir="/tmp")
    pipe = None
    try:
        plan = layout(sources, files)
        rrds = [Rrd(T0, STEP_S, [DataSource(d.name, d.type, d.heartbeat, d.min, d.max)
                                 for d in srcs], archive_specs(cfs, VM_XFF))
                for _, srcs in plan]
        pipe = RrdtoolPipe(work)
        pipe.commands([rrdtool_create_line(name, srcs, cfs) for name, srcs in plan])
        pipe.commands(["last f0.rrd\n"])
        ours, theirs = [], []
        for r in range(1, rounds + 2):   # round 1: warm-up, not counted
            t = T0 + STEP_S * r
            values = [round_values(r, len(srcs), f) for f, (_, srcs) in enumerate(plan)]
            dicts = [{d.name: v for d, v in zip(srcs, vals)}
                     for (_, srcs), vals in zip(plan, values)]
            lines = [f"update {name}.rrd {t}:{':'.join('%.17g' % v for v in vals)}\n"
                     for (name, _), vals in zip(plan, values)]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for rrd, d in zip(rrds, dicts):
                rrd.update(t, d)
            our = (time.process_time() - cpu0, time.perf_counter() - wall0)
            cpu0, wall0 = pipe.cpu_s(), time.perf_counter()
            pipe.commands(lines)
            their = (pipe.cpu_s() - cpu0, time.perf_counter() - wall0)
            if r > 1:
                ours.append(our)
                theirs.append(their)
        check = compare_newest_row(pipe, rrds[0], plan[0][0])
        return ours, theirs, check
    finally:
        if pipe is not None:
            pipe.close()
        shutil.rmtree(work, ignore_errors=True)


def compare_newest_row(pipe, rrd, name):
    """The newest row of the 5 s AVERAGE archive, ours vs `rrdtool fetch`: (ok, text)."""
    a = rrd.find_archive(AVERAGE, STEP_S)
    end, ours = rrd.archive_rows(a)[-1]
    out = pipe.commands([f"fetch {name}.rrd AVERAGE -r {STEP_S} -s {end - STEP_S} "
                         f"-e {end}\n"])[0]
    rows = {}
    for line in out:
        stamp, _, rest = line.partition(":")
        if stamp.strip().isdigit():
            rows[int(stamp)] = [float(v) for v in rest.split()]
    theirs = rows.get(end)
    if theirs is None or len(theirs) != len(ours):
        return False, f"rrdtool fetch has no row at {end} with {len(ours)} values: {out}"
    bad = [i for i, (x, y) in enumerate(zip(ours, theirs))
           if not (math.isnan(x) and math.isnan(y)) and not math.isclose(x, y, rel_tol=1e-9)]
    if bad:
        i = bad[0]
        return False, (f"{len(bad)} value(s) differ at {end}, e.g. {rrd.sources[i].name}: ours "
                       f"{ours[i]!r}, rrdtool {theirs[i]!r}")
    known = sum(1 for x in ours if not math.isnan(x))
    return True, f"same newest 5 s row as rrdtool fetch ({known}/{len(ours)} known, t={end})"


def update_line(sources, files, cfs, rounds):
    ours, theirs, (same, note) = bench_update(sources, files, cfs, rounds)
    our_cpu = statistics.median(c for c, _ in ours)
    their_cpu = statistics.median(c for c, _ in theirs)
    our_wall = statistics.median(w for _, w in ours)
    their_wall = statistics.median(w for _, w in theirs)
    archives = len(archive_specs(cfs, VM_XFF))
    what = f"update {sources:,} DS: {files} RRDs x {archives} RRAs"
    print(f"{what + ' (CPU)':<44}{our_cpu * 1000:8.1f} ms   rrdtool - (pipe) "
          f"{their_cpu * 1000:8.1f} ms   ratio {our_cpu / their_cpu:5.2f}x   goal <= 1.0x: "
          f"{verdict(our_cpu <= their_cpu)}")
    print(f"{'  same, wall time':<44}{our_wall * 1000:8.1f} ms   rrdtool - (pipe) "
          f"{their_wall * 1000:8.1f} ms   ratio {our_wall / their_wall:5.2f}x   "
          f"(not judged: shared machine)")
    print(f"  {'/'.join(cfs)}; {len(ours)} rounds after a warm-up; {note}")
    if not same:
        raise SystemExit(f"our engine and rrdtool disagree: {note}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--layout", action="append",
                        help="FILES:CFS, e.g. 200:AVERAGE,MIN,MAX (repeatable; default: that "
                             "and 500:AVERAGE)")
    parser.add_argument("--rounds", type=int, default=12,
                        help="updates of every data source (the 12th closes the 1 min CDPs)")
    parser.add_argument("--skip-cycle", action="store_true", help="only the update comparison")
    parser.add_argument("--no-guest-agent", action="store_true",
                        help="VMs without a guest agent (no memory_internal_free data source)")
    args = parser.parse_args()
    if not shutil.which("rrdtool"):
        raise SystemExit("rrdtool is missing: apt-get install rrdtool")
    load = os.getloadavg()[0]
    print(f"xapi-rrd benchmark, medians, {os.cpu_count()} cores, load average {load:.1f}")

    for spec in args.layout or ["200:AVERAGE,MIN,MAX", "500:AVERAGE"]:
        files, _, cfs = spec.partition(":")
        cfs = tuple(cfs.split(",")) if cfs else (AVERAGE,)
        if not files.isdigit() or int(files) < 1 or not set(cfs) <= {AVERAGE, MIN, MAX}:
            raise SystemExit(f"--layout {spec!r}: expected FILES:CFS, e.g. 200:AVERAGE,MIN,MAX")
        update_line(args.sources, int(files), cfs, args.rounds)
    if not args.skip_cycle:
        per_cycle, process, rrds, late = bench_cycle(args.vms, args.cycles,
                                                     not args.no_guest_agent)
        cycle = statistics.median(per_cycle)
        print(f"{'monitoring cycle, 1 host + %d VMs (CPU)' % args.vms:<44}"
              f"{cycle * 1000:8.1f} ms   budget (2% core) {CYCLE_BUDGET_S * 1000:8.1f} ms"
              f"   ratio {cycle / CYCLE_BUDGET_S:5.2f}x   goal <= 1.0x: "
              f"{verdict(cycle <= CYCLE_BUDGET_S)}")
        print(f"{'  whole xapi-rrd process per cycle (CPU)':<44}{process * 1000:8.1f} ms   "
              f"budget (2% core) {CYCLE_BUDGET_S * 1000:8.1f} ms   ratio "
              f"{process / CYCLE_BUDGET_S:5.2f}x")
        print(f"  sys.stats cycle_cpu_s_last over {len(per_cycle)} cycles (ms): "
              f"{' '.join('%.1f' % (c * 1000) for c in per_cycle)}; {rrds} RRDs held; "
              f"{late} late cycle(s); guest agents {'off' if args.no_guest_agent else 'on'}")


if __name__ == "__main__":
    main()
