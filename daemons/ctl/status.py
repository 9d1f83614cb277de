"""`xapi-ctl status`: the host's status object (gathered by common/status.py, which xapi-api's
status pages share) and its text form."""

from common.status import gather

__all__ = ["gather", "render", "render_steps"]


def render(status):
    """The human form of a status object."""
    host, init = status["host"], status["init"]
    lines = [
        f"host      {host.get('uuid') or '?'}  role {host.get('role') or '?'}"
        + (f" (master {host['master_address']})" if host.get("master_address") else ""),
        f"start-up  {init.get('state') or 'unknown'}; ready file "
        f"{'yes' if init.get('ready') else 'no'}; init complete "
        f"{'yes' if init.get('complete') else 'no'}"
        + ("; EMERGENCY MODE" if init.get("emergency") else ""),
    ]
    if init.get("error"):
        lines.append(f"error     {init.get('failed_step') or ''}: {init['error']}")
    if status.get("error"):
        lines.append(f"note      {status['error']}")
    lines.append("")
    lines.append(f"{'program':<15}{'state':<10}{'ready':<7}{'pid':>8}{'restarts':>10}"
                 f"{'watchdog':>10}  notes")
    for d in status["daemons"]:
        age = d.get("watchdog_age_s")
        notes = []
        if d.get("operator_stopped"):
            notes.append("stopped by operator")
        if d.get("next_retry_in_s") is not None:
            notes.append(f"FATAL: retry {d.get('fatal_retries', 0) + 1} in "
                         f"{d['next_retry_in_s']:.0f} s")
        elif d.get("fatal_retries"):
            notes.append(f"{d['fatal_retries']} FATAL retries")
        if d.get("watchdog_kills"):
            notes.append(f"{d['watchdog_kills']} watchdog kill(s)")
        if d.get("last_error"):
            notes.append(d["last_error"])
        lines.append(
            f"{d['name']:<15}{d['state']:<10}{'yes' if d['ready'] else 'no':<7}"
            f"{d['pid'] or '-':>8}{d['restarts'] if d['restarts'] is not None else '-':>10}"
            f"{f'{age:.1f}s' if age is not None else '-':>10}  {'; '.join(notes)}")
        for tail_line in d.get("log_tail") or []:
            lines.append(f"{'':<15}| {tail_line}")
    counts = {}
    for step in status["steps"]:
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    lines.append("")
    lines.append("steps     " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def render_steps(steps, format_step):
    return "\n".join(format_step(step) for step in steps) or "no start-up recorded"
