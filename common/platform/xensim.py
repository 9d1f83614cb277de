"""The simulated hypervisor: domains, a xenstore tree and guest agents, on disk in var/lib/xensim/.

There is no Xen here (DESIGN.md section 8). Several processes (xapi-init, xapi-liveness, xapi-ctl)
share it through four files in ``Paths.xensim``, each replaced whole with ``atomic_write``:

    lock           flock(2) target: every change holds it exclusive, every read shared
    domains.json   {"next_domid": N, "domains": [DOMAIN, ...]}, a DOMAIN as in _DOMAIN_FIELDS
    xenstore.json  {"tree": {PATH: VALUE}, "changes": [[GENERATION, PATH], ...], "log_from": G}
    generation     one integer, bumped by every change, written last (watchers poll it cheaply)

A file that does not parse or has the wrong shape is ``SIM_STATE_CORRUPT <file> <reason>``, never
an empty hypervisor; missing files (before ``init``) read as an empty one. Domain ids: 0 for dom0
(always Running), then increasing, never reused. Nothing runs the domains: what moves with time
is computed on read from the injectable clock. CPU time: ``cpu_time_s + (now - running_since) *
vcpus * load`` while Running. The guest agent's heartbeat, the virtual key
/local/domain/<domid>/data/updated (it wins over a stored one): while Running and not silenced,
the latest ``agent_since + k * agent_interval_s <= now``, written as xe-guest-utilities' Linux
agent does (Go's ``Mon Jan _2 15:04:05 2006``, here UTC; xapi only checks that the key exists and
stamps ``last_updated`` itself); silenced (lasts across stop/start): frozen at agent_frozen_at;
resumed: beats again from then. The agent's other keys (attr/PVAddons/*Version, data/os_*,
attr/vif/0/ipv4/0, data/meminfo_total|free) are real keys written at start from the guest
profile; stop removes data/ and attr/. Xenstore is a flat dict path -> value; ``Watch.poll()``
reads the change log (the last 1024 entries) only when the generation moved, and a watcher that
fell behind it gets ``[prefix]``.
"""

import calendar
import fcntl
import json
import math
import os
import time
import uuid as uuid_mod
from contextlib import contextmanager
from pathlib import Path

from common.errors import XapiError
from common.fileutil import atomic_write

RUNNING, HALTED, PAUSED = "Running", "Halted", "Paused"
POWER_STATES = (RUNNING, HALTED, PAUSED)
DOM0_NAME = "Domain-0"
CHANGE_LOG_ENTRIES = 1024
AGENT_INTERVAL_S = 60.0
AGENT_TIME_FORMAT = "%a %b %d %H:%M:%S %Y"   # the agent pads the day with a space, not a 0
DEFAULT_LOAD = 0.1
DEFAULT_MEMORY_KIB = 1048576
# ipv4 None: 192.0.2.<domid % 254 + 1> (TEST-NET-1); meminfo_free_kib None: half the memory
GUEST_DEFAULTS = {"agent": True, "os_name": "Debian GNU/Linux 12 (bookworm)",
                  "os_uname": "6.1.0-18-amd64", "os_distro": "debian", "pv_version": "8.4.0",
                  "ipv4": None, "meminfo_free_kib": None}
_NUM, _OPT_NUM = (int, float), (int, float, type(None))
_DOMAIN_FIELDS = {   # running_since: epoch while Running; agent_*: epochs of the heartbeats
    "domid": int, "uuid": str, "name": str, "power_state": str, "memory_kib": int, "vcpus": int,
    "cpu_time_s": _NUM, "running_since": _OPT_NUM, "created": _NUM, "load": _NUM,
    "agent_interval_s": _NUM, "agent_since": _OPT_NUM, "agent_frozen_at": _OPT_NUM,
    "agent_silenced": bool, "guest": dict}


def format_agent_time(epoch_s):
    """A heartbeat as the Linux guest agent writes data/updated (``Mon Jan _2 15:04:05 2006``)."""
    t = time.gmtime(int(epoch_s))
    return time.strftime(AGENT_TIME_FORMAT.replace("%d", f"{t.tm_mday:>2}"), t)


def parse_agent_time(value):
    """The epoch seconds of a data/updated value in the agent's format (UTC), else None."""
    try:
        return float(calendar.timegm(time.strptime(value, AGENT_TIME_FORMAT)))
    except (TypeError, ValueError):
        return None


def _norm(path):
    if not isinstance(path, str) or not path.startswith("/") or "//" in path or "\0" in path:
        raise XapiError("SIM_INVALID_PATH", path)
    return path.rstrip("/") or "/"


def _under(path, prefix):
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _cpu_time(d, now):
    running_s = 0.0 if d["running_since"] is None else max(0.0, now - d["running_since"])
    return d["cpu_time_s"] + running_s * d["vcpus"] * d["load"]


def _heartbeat(d, now):
    """The epoch of the agent's latest data/updated, or None (see the module's docstring)."""
    if d["power_state"] == RUNNING and d["guest"].get("agent") and not d["agent_silenced"]:
        beats = max(0, math.floor((now - d["agent_since"]) / d["agent_interval_s"]))
        return d["agent_since"] + beats * d["agent_interval_s"]
    return d["agent_frozen_at"]


def _virtual(domains, now):
    beats = ((d["domid"], _heartbeat(d, now)) for d in domains.values())
    return {f"/local/domain/{domid}/data/updated": format_agent_time(beat)
            for domid, beat in beats if beat is not None}


def _agent_keys(d):
    guest, base, memory_kib = d["guest"], f"/local/domain/{d['domid']}", d["memory_kib"]
    versions = (str(guest["pv_version"]).split(".") + ["0", "0"])[:3]
    keys = {f"{base}/attr/PVAddons/{part}Version": v
            for part, v in zip(("Major", "Minor", "Micro"), versions)}
    keys.update({f"{base}/data/{k}": str(guest[k]) for k in ("os_name", "os_uname", "os_distro")})
    free_kib = memory_kib // 2 if guest["meminfo_free_kib"] is None else guest["meminfo_free_kib"]
    return {**keys, f"{base}/data/meminfo_total": str(memory_kib),
            f"{base}/data/meminfo_free": str(free_kib),
            f"{base}/attr/vif/0/ipv4/0": guest["ipv4"] or f"192.0.2.{d['domid'] % 254 + 1}"}


def _check_domains(data):
    if not (isinstance(data, dict) and isinstance(data.get("domains"), list)
            and isinstance(data.get("next_domid"), int)):
        raise ValueError('expected {"next_domid": INT, "domains": [DOMAIN, ...]}')
    for i, d in enumerate(data["domains"]):
        bad = [f for f, kind in _DOMAIN_FIELDS.items()
               if not isinstance(d, dict) or not isinstance(d.get(f, ...), kind)]
        if bad or d["power_state"] not in POWER_STATES:
            raise ValueError(f"domains[{i}]: bad {', '.join(bad) or 'power_state'}")


def _check_xenstore(data):
    if not (isinstance(data, dict) and isinstance(data.get("tree"), dict)
            and all(isinstance(v, str) for v in data["tree"].values())
            and isinstance(data.get("log_from"), int) and isinstance(data.get("changes"), list)
            and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], int)
                    and isinstance(e[1], str) for e in data["changes"])):
        raise ValueError('expected {"tree": {PATH: STR}, "changes": [[INT, PATH]], '
                         '"log_from": INT}')


class _State:
    """The whole simulated hypervisor as read under the lock; changes are noted for the commit."""

    def __init__(self, generation, domains, xenstore):
        domains = domains or {"next_domid": 1, "domains": []}
        xenstore = xenstore or {"tree": {}, "changes": [], "log_from": 1}
        self.generation, self.next_domid = generation, domains["next_domid"]
        self.domains = {d["domid"]: d for d in domains["domains"]}
        self.tree, self.changes = xenstore["tree"], xenstore["changes"]
        self.log_from, self.changed_paths, self.domains_dirty = xenstore["log_from"], [], False

    def set(self, keys):
        changed = {path: value for path, value in keys.items() if self.tree.get(path) != value}
        self.tree.update(changed)
        self.changed_paths.extend(changed)

    def remove(self, *prefixes):
        gone = {p for p in self.tree if any(_under(p, prefix) for prefix in prefixes)}
        self.tree = {p: v for p, v in self.tree.items() if p not in gone}
        self.changed_paths.extend(sorted(gone))


class XenSim:
    """The simulated hypervisor in ``directory`` (``Paths.xensim``); ``clock()`` gives epoch s."""

    def __init__(self, directory, clock=time.time):
        self.directory = Path(directory)
        self.domains_file = self.directory / "domains.json"
        self.xenstore_file = self.directory / "xenstore.json"
        self.generation_file = self.directory / "generation"
        self._clock = clock

    @contextmanager
    def _locked(self, exclusive):
        if not exclusive and not self.directory.is_dir():
            yield   # nothing there yet: an empty hypervisor, and a read creates nothing
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _load_file(path, parse, check=lambda data: None):
        try:
            check(data := parse(path.read_bytes()))
            return data
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:   # UnicodeDecodeError is a ValueError
            raise XapiError("SIM_STATE_CORRUPT", path, exc) from None

    def _read_generation(self):
        return self._load_file(self.generation_file, lambda raw: int(raw.decode())) or 0

    def _load(self):
        return _State(self._read_generation(),
                      self._load_file(self.domains_file, json.loads, _check_domains),
                      self._load_file(self.xenstore_file, json.loads, _check_xenstore))

    def _read(self):
        with self._locked(False):
            return self._load()

    @contextmanager
    def _change(self):
        """Read, change, write under the exclusive lock; no write on an error or no change."""
        with self._locked(True):
            state = self._load()
            yield state
            if not (state.changed_paths or state.domains_dirty):
                return
            state.generation += 1
            state.changes.extend([state.generation, p] for p in state.changed_paths)
            if len(state.changes) > CHANGE_LOG_ENTRIES:
                state.log_from = state.changes[-CHANGE_LOG_ENTRIES - 1][0] + 1
                del state.changes[:-CHANGE_LOG_ENTRIES]
            if state.domains_dirty or not self.domains_file.exists():
                atomic_write(self.domains_file, json.dumps(
                    {"next_domid": state.next_domid,
                     "domains": [d for _, d in sorted(state.domains.items())]}, indent=1) + "\n")
            atomic_write(self.xenstore_file, json.dumps(
                {"tree": state.tree, "changes": state.changes, "log_from": state.log_from},
                sort_keys=True) + "\n")
            atomic_write(self.generation_file, f"{state.generation}\n")

    @property
    def generation(self):
        """Bumped by every change; 0 before the first (replaced atomically: read unlocked)."""
        return self._read_generation()

    def _view(self, d, now):
        return {**d, "cpu_time_s": _cpu_time(d, now), "agent_heartbeat": _heartbeat(d, now)}

    @staticmethod
    def _find(state, ref):   # names are never all digits: no name is taken for a domid
        for d in state.domains.values():
            if str(ref) in (str(d["domid"]), d["uuid"], d["name"]):
                return d
        raise XapiError("SIM_DOMAIN_UNKNOWN", ref)

    def _new_domain(self, state, domid, name, uuid, memory_kib, vcpus, guest, interval_s):
        if min(memory_kib, vcpus, interval_s) <= 0:
            raise XapiError("SIM_INVALID_VALUE", "memory_kib, vcpus, agent_interval_s",
                            f"{memory_kib}, {vcpus}, {interval_s}")
        uuid = str(uuid or uuid_mod.uuid4())   # the CLI checks the form of a given one
        for other in state.domains.values():
            if name == other["name"] or uuid == other["uuid"]:
                raise XapiError("SIM_DOMAIN_EXISTS", name if name == other["name"] else uuid)
        d = state.domains[domid] = {
            "domid": domid, "uuid": uuid, "name": name, "power_state": HALTED,
            "memory_kib": int(memory_kib), "vcpus": int(vcpus), "cpu_time_s": 0.0,
            "running_since": None, "created": self._clock(), "load": DEFAULT_LOAD, "guest": guest,
            "agent_interval_s": float(interval_s), "agent_since": None, "agent_frozen_at": None,
            "agent_silenced": False}
        state.domains_dirty = True
        return d

    def init(self, control_domain_uuid, memory_kib, vcpus):
        """Create the directory and domain 0 (always Running, no guest agent) unless present."""
        with self._change() as state:
            now = self._clock()
            if 0 not in state.domains:
                d = self._new_domain(state, 0, DOM0_NAME, control_domain_uuid, memory_kib, vcpus,
                                     {**GUEST_DEFAULTS, "agent": False}, AGENT_INTERVAL_S)
                d.update(power_state=RUNNING, running_since=now)
            return self._view(state.domains[0], now)

    def domains(self):
        state, now = self._read(), self._clock()
        return [self._view(d, now) for _, d in sorted(state.domains.items())]

    def domain(self, ref):
        """One domain by domid, uuid or name."""
        return self._view(self._find(self._read(), ref), self._clock())

    def create_domain(self, name, memory_kib=DEFAULT_MEMORY_KIB, vcpus=1, uuid=None, guest=None,
                      agent_interval_s=AGENT_INTERVAL_S, load=DEFAULT_LOAD):
        """A new guest domain, Halted; ``load``: the share of its vCPUs busy while Running."""
        if not isinstance(name, str) or not name.strip() or name.isdigit():
            raise XapiError("SIM_INVALID_VALUE", "name", name)
        if set(guest or {}) - set(GUEST_DEFAULTS):
            raise XapiError("SIM_INVALID_VALUE", "guest", sorted(set(guest) - set(GUEST_DEFAULTS)))
        with self._change() as state:
            d = self._new_domain(state, state.next_domid, name, uuid, memory_kib, vcpus,
                                 {**GUEST_DEFAULTS, **(guest or {})}, agent_interval_s)
            state.next_domid, d["load"] = state.next_domid + 1, max(0.0, float(load))
            return self._view(d, self._clock())

    @contextmanager
    def _domain_change(self, ref, operation, allowed_from=POWER_STATES):
        with self._change() as state:
            d, now = self._find(state, ref), self._clock()
            if d["domid"] == 0:
                raise XapiError("SIM_OPERATION_NOT_ALLOWED", operation, "domain 0")
            if d["power_state"] not in allowed_from:
                raise XapiError("SIM_BAD_POWER_STATE", d["name"], d["power_state"],
                                "|".join(allowed_from))
            yield state, d, now
            state.domains_dirty = True

    def start(self, ref):
        with self._domain_change(ref, "start", (HALTED,)) as (state, d, now):
            d.update(power_state=RUNNING, running_since=now, agent_since=now,
                     agent_frozen_at=None)
            agent = d["guest"].get("agent") and not d["agent_silenced"]
            state.set(_agent_keys(d) if agent else {})
        return self._view(d, now)

    def stop(self, ref):
        """A clean shutdown: Halted, the guest agent's keys gone."""
        with self._domain_change(ref, "stop", (RUNNING, PAUSED)) as (state, d, now):
            d.update(cpu_time_s=_cpu_time(d, now), running_since=None, power_state=HALTED,
                     agent_since=None, agent_frozen_at=None)
            state.remove(*(f"/local/domain/{d['domid']}/{sub}" for sub in ("data", "attr")))
        return self._view(d, now)

    def destroy(self, ref):
        """Remove the domain (in any power state) and its xenstore subtree."""
        with self._domain_change(ref, "destroy") as (state, d, now):
            del state.domains[d["domid"]]
            state.remove(f"/local/domain/{d['domid']}")
        return self._view(d, now)

    def agent_resume(self, ref):
        """The guest agent writes again: a heartbeat now, then every agent_interval_s."""
        return self.agent_silence(ref, silenced=False)

    def agent_silence(self, ref, silenced=True):
        """The guest agent stops writing: data/updated stays at its last value."""
        with self._domain_change(ref, ("agent_resume", "agent_silence")[silenced]) as (
                state, d, now):
            if not d["guest"].get("agent"):
                raise XapiError("SIM_NO_GUEST_AGENT", d["name"])
            if d["power_state"] == RUNNING and d["agent_silenced"] != silenced:
                if silenced:
                    d["agent_frozen_at"] = _heartbeat(d, now)
                else:
                    d.update(agent_since=now, agent_frozen_at=None)
                    state.set(_agent_keys(d))
            d["agent_silenced"] = silenced
        return self._view(d, now)

    def read(self, path):
        """The value at path, or None."""
        path, state = _norm(path), self._read()
        value = _virtual(state.domains, self._clock()).get(path)
        return value if value is not None else state.tree.get(path)

    def write(self, path, value):
        path = _norm(path)
        if path == "/" or not isinstance(value, str):
            raise XapiError("SIM_INVALID_VALUE", path, repr(value))
        with self._change() as state:
            state.tree.pop(path, None)   # a write of the same value still fires watches
            state.set({path: value})

    def rm(self, path):
        """Remove path and everything under it (nothing there: no change)."""
        path = _norm(path)
        with self._change() as state:
            state.remove(path)

    def ls(self, path):
        """The names of the direct children of path, sorted."""
        path, state = _norm(path), self._read()
        base = "" if path == "/" else path
        keys = list(state.tree) + list(_virtual(state.domains, self._clock()))
        return sorted({k[len(base) + 1:].split("/")[0] for k in keys if k.startswith(base + "/")})

    def watch(self, prefix):
        return Watch(self, prefix)


class Watch:
    """The paths under ``prefix`` that changed between polls, whichever process changed them."""

    def __init__(self, sim, prefix):
        self._sim, self.prefix = sim, _norm(prefix)
        state = sim._read()
        self._generation, self._domains = state.generation, state.domains
        self._virtual = self._virtual_now()

    def _virtual_now(self):
        return {p: v for p, v in _virtual(self._domains, self._sim._clock()).items()
                if _under(p, self.prefix)}

    def poll(self):
        """The changed paths, sorted; ``[prefix]`` if this watch fell behind the change log."""
        changed, behind = set(), False   # the cheap check first: the generation file, unlocked
        state = self._sim._read() if self._sim.generation != self._generation else None
        if state and state.generation != self._generation:
            behind = state.log_from > self._generation + 1 or state.generation < self._generation
            changed.update(p for g, p in state.changes
                           if g > self._generation and _under(p, self.prefix))
            self._generation, self._domains = state.generation, state.domains
        virtual = self._virtual_now()
        changed.update(p for p in virtual.keys() | self._virtual.keys()
                       if virtual.get(p) != self._virtual.get(p))
        self._virtual = virtual
        return [self.prefix] if behind else sorted(changed)
