"""`xapi-ctl sim list|domain-create|start|stop|destroy|agent-silence|agent-resume`: drive the
simulated hypervisor (var/lib/xensim) for demos and tests, as an operator would drive Xen."""

import json
import time

from common.errors import XapiError
from daemons.ctl.tree import CtlError

_MESSAGES = {
    "SIM_DOMAIN_UNKNOWN": lambda ref: f"no domain '{ref}': give its domid, uuid or name "
                                      "(see `xapi-ctl sim list`)",
    "SIM_DOMAIN_EXISTS": lambda what: f"a domain '{what}' exists already",
    "SIM_OPERATION_NOT_ALLOWED": lambda op, _: "not on domain 0: the control domain always runs",
    "SIM_BAD_POWER_STATE": lambda name, state, allowed: f"domain '{name}' is {state}, this needs "
                                                        f"{allowed}",
    "SIM_NO_GUEST_AGENT": lambda name: f"domain '{name}' has no guest agent",
    "SIM_STATE_CORRUPT": lambda path, reason: f"{path} is corrupt ({reason}): fix or remove it "
                                              "(removing it forgets what it held)",
}


def cmd_sim(paths, args, out=print):
    """The simulated hypervisor: list, create, start, stop or destroy domains; silence or resume
    their guest agents."""
    from common.platform.xensim import XenSim   # here: every other xapi-ctl call skips it
    sim = XenSim(paths.xensim)
    try:
        return _ACTIONS[args.sim_command](sim, args, out)
    except CtlError:
        raise
    except XapiError as exc:
        try:
            message = _MESSAGES[exc.code](*exc.params)
        except (KeyError, TypeError):
            message = str(exc)
        raise CtlError(f"sim {args.sim_command}: {message}") from None


def _agent_state(domain, now):
    if not domain["guest"].get("agent"):
        return "none"
    if domain["agent_silenced"]:
        return "silenced"
    if domain["agent_heartbeat"] is None:
        return "-"
    return f"{now - domain['agent_heartbeat']:.0f} s ago"


def _list(sim, args, out):
    """Every domain with its power state, memory, vCPUs, CPU time and guest agent."""
    domains = sim.domains()
    if args.json:
        out(json.dumps(domains, indent=1, sort_keys=True))
        return 0
    if not domains:
        out(f"no domains in {sim.directory} (xapi-init creates domain 0 at start-up)")
        return 0
    now = time.time()
    rows = [("DOMID", "NAME", "STATE", "MEM_MIB", "VCPUS", "CPU_S", "AGENT", "UUID")]
    rows += [(str(d["domid"]), d["name"], d["power_state"], str(d["memory_kib"] // 1024),
              str(d["vcpus"]), f"{d['cpu_time_s']:.1f}", _agent_state(d, now), d["uuid"])
             for d in domains]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _create(sim, args, out):
    """Create a guest domain (Halted) with a guest agent unless --no-agent."""
    guest = {"agent": not args.no_agent}
    if args.os_name:
        guest["os_name"] = args.os_name
    d = sim.create_domain(args.name, memory_kib=args.memory_mib * 1024, vcpus=args.vcpus,
                          uuid=args.uuid, guest=guest, agent_interval_s=args.agent_interval)
    out(f"created domain {d['domid']} '{d['name']}' ({d['uuid']}): {d['power_state']}, "
        f"{args.memory_mib} MiB, {d['vcpus']} vCPU(s), "
        f"{'a guest agent' if guest['agent'] else 'no guest agent'}")
    return 0


def _start(sim, args, out):
    """Start a Halted domain; its guest agent reports at once, then every interval."""
    d = sim.start(args.domain)
    out(f"started domain {d['domid']} '{d['name']}': {d['power_state']}")
    return 0


def _stop(sim, args, out):
    """Shut a domain down cleanly (Halted); its guest agent's keys go."""
    d = sim.stop(args.domain)
    from common.platform.xensim import HALTED
    out(f"stopped domain {d['domid']} '{d['name']}': {HALTED}")
    return 0


def _destroy(sim, args, out):
    """Destroy a domain in any power state, with its xenstore keys."""
    d = sim.destroy(args.domain)
    out(f"destroyed domain {d['domid']} '{d['name']}' ({d['uuid']})")
    return 0


def _silence(sim, args, out):
    """Make a domain's guest agent stop writing data/updated (a hung agent)."""
    d = sim.agent_silence(args.domain)
    out(f"guest agent of domain {d['domid']} '{d['name']}' silenced: data/updated "
        f"{'frozen' if d['agent_heartbeat'] is not None else 'absent'}")
    return 0


def _resume(sim, args, out):
    """Make a silenced guest agent write data/updated again."""
    d = sim.agent_resume(args.domain)
    out(f"guest agent of domain {d['domid']} '{d['name']}' resumed")
    return 0


_ACTIONS = {"list": _list, "domain-create": _create, "start": _start, "stop": _stop,
            "destroy": _destroy, "agent-silence": _silence, "agent-resume": _resume}


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value
    parse.__name__ = kind.__name__   # argparse names the type in its error message
    return parse


def _uuid(text):
    import uuid
    return str(uuid.UUID(text))


def add_parser(sub, add):
    p = add("sim", cmd_sim)
    simsub = p.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    s = simsub.add_parser("list", help=_list.__doc__)
    s.add_argument("--json", action="store_true")
    c = simsub.add_parser("domain-create", help=_create.__doc__)
    c.add_argument("name", metavar="NAME")
    c.add_argument("--memory-mib", type=_positive(int), default=1024, help="default 1024")
    c.add_argument("--vcpus", type=_positive(int), default=1, help="default 1")
    c.add_argument("--uuid", type=_uuid, help="default a new random one")
    c.add_argument("--os-name", help="what the guest agent reports as data/os_name")
    c.add_argument("--no-agent", action="store_true", help="a guest without a guest agent")
    c.add_argument("--agent-interval", type=_positive(float), default=60.0, metavar="S",
                   help="seconds between the guest agent's heartbeats (default 60)")
    for name, fn in (("start", _start), ("stop", _stop), ("destroy", _destroy),
                     ("agent-silence", _silence), ("agent-resume", _resume)):
        a = simsub.add_parser(name, help=fn.__doc__)
        a.add_argument("domain", metavar="DOMAIN", help="domid, uuid or name")
    return p
