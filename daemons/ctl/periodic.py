"""`xapi-ctl periodic list|run NAME`: the scheduler's jobs from the command line."""

import json
import time

from daemons.ctl.tree import CtlError, call_program

LIST_TIMEOUT_S = 10.0
RUN_MARGIN_S = 10.0


def _periodic(paths, method, *args, timeout_s=LIST_TIMEOUT_S):
    return call_program(paths, "xapi-periodic", method, *args, timeout_s=timeout_s)


def _when(ts, now):
    if ts is None:
        return "-"
    delta = ts - now
    return f"in {delta:.0f} s" if delta >= 0 else f"{-delta:.0f} s ago"


def render(jobs, now):
    """The jobs as a table, one line each, then the last error of each failing job."""
    header = ("NAME", "KIND", "EVERY", "TARGET METHOD", "NEXT RUN", "LAST RUN", "TOOK", "RUNS",
              "FAILED", "SKIPPED")
    rows = [header]
    for job in jobs:
        every = f"{job['period']:g} s" if job["period"] else ("done" if job["done"] else "once")
        took = "-" if job["last_duration_s"] is None else f"{job['last_duration_s']:.3f} s"
        rows.append((job["name"], job["kind"], every, f"{job['target']} {job['method']}",
                     "running" if job["running"] else _when(job["next_run"], now),
                     _when(job["last_run"], now), took, str(job["runs"]), str(job["failures"]),
                     str(job["skipped"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for job in jobs:
        if job["last_error"]:
            lines.append(f"{job['name']}: last error: {job['last_error']}")
    return "\n".join(lines)


def cmd_periodic(paths, args, out=print):
    """The periodic scheduler's jobs: list them, or run one now."""
    if args.periodic_command == "list":
        return _list(paths, args, out)
    return _run(paths, args, out)


def _list(paths, args, out):
    """Every job with its next run, last run, duration, runs, failures and last error."""
    jobs = _periodic(paths, "periodic.list")
    if args.json:
        out(json.dumps(jobs, indent=1, sort_keys=True))
    elif not jobs:
        out("no jobs")
    else:
        out(render(jobs, time.time()))
    return 0


def _run(paths, args, out):
    """Run one job now (out of its schedule) and wait for it; exit 1 if the run failed."""
    jobs = {job["name"]: job for job in _periodic(paths, "periodic.list")}
    job = jobs.get(args.name)
    if job is None:
        raise CtlError(f"no periodic job '{args.name}': one of {', '.join(sorted(jobs)) or 'none'}")
    result = _periodic(paths, "periodic.run_now", args.name,
                       timeout_s=job["effective_timeout_s"] + RUN_MARGIN_S)
    if result["ok"]:
        out(f"{args.name} ran in {result['duration_s']:.3f} s: ok")
        return 0
    out(f"{args.name} failed after {result['duration_s'] or 0:.3f} s: {result['error']}")
    return 1


def add_parser(sub, add):
    p = add("periodic", cmd_periodic)
    psub = p.add_subparsers(dest="periodic_command", required=True, metavar="PERIODIC_COMMAND")
    ls = psub.add_parser("list", help=_list.__doc__)
    ls.add_argument("--json", action="store_true")
    run = psub.add_parser("run", help=_run.__doc__)
    run.add_argument("name", metavar="NAME")
    return p
