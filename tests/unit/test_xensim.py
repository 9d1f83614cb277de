"""The simulated hypervisor: domains, CPU time, xenstore, watches, guest agents, corrupt files,
several processes at once, and `xapi-ctl sim`."""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import XapiError
from common.paths import Paths
from common.platform import xensim
from common.platform.xensim import XenSim, format_agent_time, parse_agent_time
from daemons.ctl import sim as sim_ctl
from daemons.ctl.tree import CtlError

DOM0_UUID = "9a1cbbc0-5c1f-4b8e-9d3a-0c9f3a6c1e01"
T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[2]
POLL_DEADLINE_S = 10.0


class FakeClock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sim(tmp_path, clock):
    s = XenSim(tmp_path / "xensim", clock=clock)
    s.init(DOM0_UUID, 4 * 1024 * 1024, 4)
    return s


def _code(excinfo):
    return excinfo.value.code


def _run_python(code, *args):
    """Run a snippet in another process with the repository importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env)


def _poll_until(watch, predicate):
    seen = []
    deadline = time.monotonic() + POLL_DEADLINE_S
    while time.monotonic() < deadline:
        seen += watch.poll()
        if predicate(seen):
            return seen
        time.sleep(0.02)
    pytest.fail(f"the watch did not see the change within {POLL_DEADLINE_S} s: saw {seen}")


# domains

def test_missing_directory_reads_as_empty_and_creates_nothing(tmp_path):
    s = XenSim(tmp_path / "xensim")
    assert s.domains() == []
    assert s.read("/local/domain/0/name") is None
    assert s.ls("/") == []
    assert s.generation == 0
    assert not (tmp_path / "xensim").exists()


def test_init_is_idempotent_and_dom0_has_the_given_uuid(tmp_path, clock):
    s = XenSim(tmp_path / "xensim", clock=clock)
    dom0 = s.init(DOM0_UUID, 2 * 1024 * 1024, 2)
    assert (dom0["domid"], dom0["uuid"], dom0["name"]) == (0, DOM0_UUID, "Domain-0")
    assert dom0["power_state"] == "Running"
    assert (dom0["memory_kib"], dom0["vcpus"]) == (2 * 1024 * 1024, 2)
    generation = s.generation
    assert generation > 0
    again = s.init("00000000-0000-0000-0000-000000000000", 1024, 1)
    assert again["uuid"] == DOM0_UUID and again["memory_kib"] == 2 * 1024 * 1024
    assert s.generation == generation   # nothing changed, nothing written
    assert [d["domid"] for d in XenSim(tmp_path / "xensim").domains()] == [0]
    for name in ("domains.json", "xenstore.json", "generation", "lock"):
        assert (tmp_path / "xensim" / name).exists()


def test_life_cycle_of_a_domain(sim):
    d = sim.create_domain("web", memory_kib=512 * 1024, vcpus=2)
    assert (d["domid"], d["name"], d["power_state"]) == (1, "web", "Halted")
    assert (d["memory_kib"], d["vcpus"]) == (512 * 1024, 2)
    assert sim.start("web")["power_state"] == "Running"
    with pytest.raises(XapiError) as e:
        sim.start("web")
    assert _code(e) == "SIM_BAD_POWER_STATE"
    assert sim.stop(1)["power_state"] == "Halted"
    with pytest.raises(XapiError) as e:
        sim.stop(1)
    assert _code(e) == "SIM_BAD_POWER_STATE"
    sim.start(d["uuid"])
    sim.write("/local/domain/1/control/shutdown", "")
    gone = sim.destroy("web")
    assert gone["domid"] == 1
    assert [x["domid"] for x in sim.domains()] == [0]
    assert sim.ls("/local/domain/1") == []
    with pytest.raises(XapiError) as e:
        sim.domain("web")
    assert e.value.description == ["SIM_DOMAIN_UNKNOWN", "web"]


def test_a_domain_is_found_by_domid_uuid_or_name(sim):
    d = sim.create_domain("db", uuid="5b1d2f9e-1111-4c2a-9a55-000000000001")
    for ref in (1, "1", "5b1d2f9e-1111-4c2a-9a55-000000000001", "db"):
        assert sim.domain(ref)["domid"] == d["domid"]
    with pytest.raises(XapiError) as e:
        sim.create_domain("db")
    assert _code(e) == "SIM_DOMAIN_EXISTS"
    with pytest.raises(XapiError) as e:
        sim.create_domain("other", uuid="5b1d2f9e-1111-4c2a-9a55-000000000001")
    assert _code(e) == "SIM_DOMAIN_EXISTS"
    for bad in ("", "42"):
        with pytest.raises(XapiError) as e:
            sim.create_domain(bad)
        assert _code(e) == "SIM_INVALID_VALUE"
    with pytest.raises(XapiError) as e:
        sim.create_domain("x", guest={"colour": "blue"})
    assert _code(e) == "SIM_INVALID_VALUE"


def test_dom0_cannot_be_stopped_or_destroyed_or_silenced(sim):
    for operation in (sim.stop, sim.destroy, sim.start, sim.agent_silence):
        with pytest.raises(XapiError) as e:
            operation(0)
        assert _code(e) == "SIM_OPERATION_NOT_ALLOWED"
    assert sim.domain(0)["power_state"] == "Running"


def test_domids_are_never_reused(sim, tmp_path, clock):
    assert [sim.create_domain(n)["domid"] for n in ("a", "b", "c")] == [1, 2, 3]
    sim.destroy("c")
    sim.destroy("b")
    assert sim.create_domain("d")["domid"] == 4
    assert XenSim(tmp_path / "xensim", clock=clock).create_domain("e")["domid"] == 5


def test_cpu_time_advances_while_running_and_stops_when_halted(sim, clock):
    sim.create_domain("busy", vcpus=2, load=0.5)
    assert sim.domain("busy")["cpu_time_s"] == 0.0
    sim.start("busy")
    clock.now += 10
    assert sim.domain("busy")["cpu_time_s"] == pytest.approx(10.0)   # 10 s * 2 vCPUs * 0.5
    sim.stop("busy")
    clock.now += 100
    assert sim.domain("busy")["cpu_time_s"] == pytest.approx(10.0)
    sim.start("busy")
    clock.now += 4
    assert sim.domain("busy")["cpu_time_s"] == pytest.approx(14.0)
    assert sim.domain(0)["cpu_time_s"] == pytest.approx(114 * 4 * xensim.DEFAULT_LOAD)


def test_cpu_time_advances_on_the_real_clock(tmp_path):
    s = XenSim(tmp_path / "xensim")
    s.create_domain("real", load=1.0)
    s.start("real")
    first = s.domain("real")["cpu_time_s"]
    deadline = time.monotonic() + 5
    while s.domain("real")["cpu_time_s"] <= first:
        assert time.monotonic() < deadline, "CPU time did not advance"
        time.sleep(0.01)


# xenstore

def test_xenstore_read_write_rm_and_ls(sim):
    assert sim.read("/a/b") is None
    sim.write("/a/b", "1")
    sim.write("/a/c/d", "2")
    sim.write("/a/c/e", "3")
    sim.write("/ab", "other")
    assert sim.read("/a/b") == "1" and sim.read("/a/c/d") == "2"
    assert sim.read("/a/c/") == sim.read("/a/c") is None
    assert sim.ls("/a") == ["b", "c"]
    assert sim.ls("/a/c") == ["d", "e"]
    assert {"a", "ab"} <= set(sim.ls("/"))
    sim.rm("/a/c")
    assert sim.read("/a/c/d") is None and sim.ls("/a") == ["b"]
    assert sim.read("/ab") == "other"   # a sibling with the same prefix is not under /a
    generation = sim.generation
    sim.rm("/nothing/here")
    assert sim.generation == generation
    sim.rm("/a")
    assert sim.ls("/a") == [] and sim.read("/a/b") is None


def test_bad_paths_and_values_are_refused(sim):
    for path in ("relative", "/double//slash", "", None):
        with pytest.raises(XapiError) as e:
            sim.write(path, "x")
        assert _code(e) == "SIM_INVALID_PATH"
    with pytest.raises(XapiError) as e:
        sim.write("/k", 3)
    assert _code(e) == "SIM_INVALID_VALUE"


def test_watch_reports_changed_paths_under_its_prefix(sim):
    watch = sim.watch("/local/domain/7")
    assert watch.poll() == []
    sim.write("/local/domain/7/x", "1")
    sim.write("/local/domain/70/x", "1")   # not under the prefix
    sim.write("/elsewhere", "1")
    assert watch.poll() == ["/local/domain/7/x"]
    assert watch.poll() == []
    sim.write("/local/domain/7/x", "1")    # a write of the same value fires, as in xenstore
    sim.rm("/local/domain/7")
    assert watch.poll() == ["/local/domain/7/x"]


def test_a_watch_that_fell_behind_gets_its_prefix(sim, monkeypatch):
    monkeypatch.setattr(xensim, "CHANGE_LOG_ENTRIES", 8)
    watch = sim.watch("/w")
    for i in range(20):
        sim.write(f"/w/{i}", "v")
    assert watch.poll() == ["/w"]
    sim.write("/w/again", "v")
    assert watch.poll() == ["/w/again"]
    log = json.loads(sim.xenstore_file.read_text())
    assert len(log["changes"]) == 8 and log["log_from"] > 1


def test_watch_sees_a_change_made_by_another_process(sim):
    watch = sim.watch("/local/domain")
    proc = _run_python("import sys; from common.platform.xensim import XenSim; "
                       "XenSim(sys.argv[1]).write('/local/domain/5/data/x', 'from-child')",
                       sim.directory)
    try:
        seen = _poll_until(watch, lambda paths: "/local/domain/5/data/x" in paths)
        assert proc.wait(timeout=POLL_DEADLINE_S) == 0
    finally:
        proc.kill()
        proc.wait()
    assert "/local/domain/5/data/x" in seen
    assert sim.read("/local/domain/5/data/x") == "from-child"


def test_concurrent_writers_in_several_processes_lose_nothing(sim):
    processes, writes = 4, 50
    generation = sim.generation
    code = ("import sys; from common.platform.xensim import XenSim; s = XenSim(sys.argv[1]); "
            "[s.write(f'/stress/{sys.argv[2]}/{i}', str(i)) for i in range(int(sys.argv[3]))]")
    procs = [_run_python(code, sim.directory, n, writes) for n in range(processes)]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0] * processes
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for n in range(processes):
        assert sim.ls(f"/stress/{n}") == sorted(str(i) for i in range(writes))
        assert all(sim.read(f"/stress/{n}/{i}") == str(i) for i in range(writes))
    assert sim.generation == generation + processes * writes


def test_concurrent_domain_creation_gives_distinct_domids(sim):
    code = ("import sys; from common.platform.xensim import XenSim; s = XenSim(sys.argv[1]); "
            "[s.create_domain(f'vm-{sys.argv[2]}-{i}') for i in range(10)]")
    procs = [_run_python(code, sim.directory, n) for n in range(3)]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [d["domid"] for d in sim.domains()] == list(range(31))


# guest agents

def _updated(sim, domid=1):
    return sim.read(f"/local/domain/{domid}/data/updated")


def test_agent_heartbeat_advances_with_the_clock_freezes_when_silenced_and_resumes(sim, clock):
    sim.create_domain("guest")
    assert _updated(sim) is None
    sim.start("guest")
    assert _updated(sim) == format_agent_time(T0)
    clock.now = T0 + 59
    assert _updated(sim) == format_agent_time(T0)
    clock.now = T0 + 60
    assert _updated(sim) == format_agent_time(T0 + 60)
    clock.now = T0 + 130
    assert parse_agent_time(_updated(sim)) == T0 + 120
    assert sim.domain("guest")["agent_heartbeat"] == T0 + 120
    sim.agent_silence("guest")
    clock.now = T0 + 1000
    assert parse_agent_time(_updated(sim)) == T0 + 120
    assert sim.domain("guest")["agent_silenced"] is True
    sim.agent_resume("guest")
    assert parse_agent_time(_updated(sim)) == T0 + 1000
    clock.now = T0 + 1065
    assert parse_agent_time(_updated(sim)) == T0 + 1060
    assert "updated" in sim.ls("/local/domain/1/data")


def test_agent_keys_appear_on_start_and_go_on_stop(sim):
    sim.create_domain("guest", memory_kib=2048 * 1024,
                      guest={"os_name": "Alpine Linux v3.19", "pv_version": "9.1.2",
                             "ipv4": "10.0.0.5", "meminfo_free_kib": 1000})
    base = "/local/domain/1"
    assert sim.ls(f"{base}/data") == [] and sim.ls(f"{base}/attr") == []
    watch = sim.watch(base)
    sim.start("guest")
    expected = {
        "attr/PVAddons/MajorVersion": "9", "attr/PVAddons/MinorVersion": "1",
        "attr/PVAddons/MicroVersion": "2", "data/os_name": "Alpine Linux v3.19",
        "data/os_uname": xensim.GUEST_DEFAULTS["os_uname"],
        "data/os_distro": xensim.GUEST_DEFAULTS["os_distro"],
        "attr/vif/0/ipv4/0": "10.0.0.5", "data/meminfo_total": str(2048 * 1024),
        "data/meminfo_free": "1000", "data/updated": format_agent_time(T0)}
    assert {key: sim.read(f"{base}/{key}") for key in expected} == expected
    assert set(watch.poll()) == {f"{base}/{key}" for key in expected}
    sim.write(f"{base}/control/feature-shutdown", "1")
    sim.stop("guest")
    assert sim.ls(base) == ["control"]
    assert all(sim.read(f"{base}/{key}") is None for key in expected)
    assert set(watch.poll()) == {f"{base}/{key}" for key in expected} | {
        f"{base}/control/feature-shutdown"}


def test_default_agent_values(sim):
    sim.create_domain("plain", memory_kib=1024 * 1024)
    sim.start("plain")
    assert sim.read("/local/domain/1/data/meminfo_free") == str(512 * 1024)
    assert sim.read("/local/domain/1/attr/vif/0/ipv4/0") == "192.0.2.2"
    assert sim.read("/local/domain/1/data/os_name") == xensim.GUEST_DEFAULTS["os_name"]


def test_a_silenced_agent_stays_silent_across_a_restart(sim, clock):
    sim.create_domain("guest")
    sim.start("guest")
    sim.agent_silence("guest")
    sim.stop("guest")
    sim.start("guest")
    clock.now += 600
    assert _updated(sim) is None and sim.ls("/local/domain/1") == []
    sim.agent_resume("guest")
    assert _updated(sim) == format_agent_time(clock.now)
    assert sim.read("/local/domain/1/attr/PVAddons/MajorVersion") == "8"


def test_a_guest_without_an_agent_writes_nothing(sim, clock):
    sim.create_domain("bare", guest={"agent": False})
    sim.start("bare")
    clock.now += 300
    assert sim.ls("/local/domain/1") == []
    with pytest.raises(XapiError) as e:
        sim.agent_silence("bare")
    assert _code(e) == "SIM_NO_GUEST_AGENT"


def test_a_watch_sees_the_heartbeat_move(sim, clock):
    sim.create_domain("guest")
    sim.start("guest")
    watch = sim.watch("/local/domain/1/data")
    clock.now += 30
    assert watch.poll() == []
    clock.now += 30
    assert watch.poll() == ["/local/domain/1/data/updated"]
    sim.agent_silence("guest")
    clock.now += 600
    assert watch.poll() == []


def test_agent_time_format():
    assert format_agent_time(T0) == "Tue Nov 14 22:13:20 2023"
    assert format_agent_time(1_699_000_000) == "Fri Nov  3 08:26:40 2023"   # day padded: Go _2
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", format_agent_time(0))
    assert parse_agent_time("Fri Nov  3 08:26:40 2023") == 1_699_000_000
    assert parse_agent_time("yesterday") is None and parse_agent_time(None) is None


# corrupt files

@pytest.mark.parametrize("name, content", [
    ("domains.json", "{not json"),
    ("domains.json", '{"next_domid": 1, "domains": [{"domid": 0}]}'),
    ("domains.json", "[]"),
    ("domains.json", b"\xff\xfe"),
    ("xenstore.json", '{"tree": {"/a": 1}, "changes": [], "log_from": 1}'),
    ("xenstore.json", ""),
    ("generation", "twelve"),
])
def test_a_corrupt_file_is_a_clear_error_naming_it(sim, name, content):
    path = sim.directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    for call in (sim.domains, lambda: sim.read("/x"), lambda: sim.create_domain("new"),
                 lambda: sim.write("/x", "1"), lambda: sim.init(DOM0_UUID, 1024, 1)):
        with pytest.raises(XapiError) as e:
            call()
        assert _code(e) == "SIM_STATE_CORRUPT"
        assert e.value.params[0] == str(path)
        assert len(e.value.params) == 2 and e.value.params[1]
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


# xapi-ctl sim

def _parser():
    parser = argparse.ArgumentParser(prog="xapi-ctl")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn):
        p = sub.add_parser(name, help=fn.__doc__.split(".")[0], description=fn.__doc__)
        p.set_defaults(fn=fn)
        return p

    sim_ctl.add_parser(sub, add)
    return parser


def _ctl(paths, *argv):
    args = _parser().parse_args(["sim", *argv])
    lines = []
    assert args.fn(paths, args, out=lines.append) == 0
    return "\n".join(lines)


def test_ctl_sim_drives_the_simulated_hypervisor(tmp_path):
    paths = Paths(tmp_path)
    assert "no domains" in _ctl(paths, "list")
    XenSim(paths.xensim).init(DOM0_UUID, 1024 * 1024, 2)
    out = _ctl(paths, "domain-create", "web", "--memory-mib", "512", "--vcpus", "2",
               "--uuid", "5B1D2F9E-1111-4C2A-9A55-000000000002", "--os-name", "Alpine")
    assert out.startswith("created domain 1 'web' (5b1d2f9e-1111-4c2a-9a55-000000000002)")
    assert "Halted" in out and "512 MiB" in out
    assert _ctl(paths, "start", "web") == "started domain 1 'web': Running"
    sim = XenSim(paths.xensim)
    assert sim.read("/local/domain/1/data/os_name") == "Alpine"
    assert sim.domain("web")["memory_kib"] == 512 * 1024
    table = _ctl(paths, "list").splitlines()
    assert table[0].split() == ["DOMID", "NAME", "STATE", "MEM_MIB", "VCPUS", "CPU_S", "AGENT",
                                "UUID"]
    assert table[1].split()[:3] == ["0", "Domain-0", "Running"]
    assert table[2].split()[:5] == ["1", "web", "Running", "512", "2"]
    assert "silenced" in _ctl(paths, "agent-silence", "1")
    assert "silenced" in _ctl(paths, "list").splitlines()[2]
    assert "resumed" in _ctl(paths, "agent-resume", "web")
    assert _ctl(paths, "stop", "web") == "stopped domain 1 'web': Halted"
    listed = json.loads(_ctl(paths, "list", "--json"))
    assert [(d["domid"], d["power_state"]) for d in listed] == [(0, "Running"), (1, "Halted")]
    assert "destroyed domain 1 'web'" in _ctl(paths, "destroy", "web")
    assert "created domain 2 'bare'" in _ctl(paths, "domain-create", "bare", "--no-agent")
    assert "no guest agent" in _ctl(paths, "domain-create", "bare2", "--no-agent")


@pytest.mark.parametrize("argv, message", [
    (("stop", "0"), "not on domain 0"),
    (("destroy", "Domain-0"), "not on domain 0"),
    (("start", "nosuch"), "no domain 'nosuch'"),
    (("stop", "web"), "domain 'web' is Halted"),
    (("domain-create", "web"), "exists already"),
])
def test_ctl_sim_errors_are_clear(tmp_path, argv, message):
    paths = Paths(tmp_path)
    sim = XenSim(paths.xensim)
    sim.init(DOM0_UUID, 1024 * 1024, 2)
    sim.create_domain("web")
    with pytest.raises(CtlError) as e:
        _ctl(paths, *argv)
    assert message in str(e.value) and e.value.exit_code == 1
    assert str(e.value).startswith(f"sim {argv[0]}: ")


def test_ctl_sim_reports_a_corrupt_file(tmp_path):
    paths = Paths(tmp_path)
    XenSim(paths.xensim).init(DOM0_UUID, 1024 * 1024, 2)
    (paths.xensim / "xenstore.json").write_text("{")
    with pytest.raises(CtlError) as e:
        _ctl(paths, "list")
    assert str(paths.xensim / "xenstore.json") in str(e.value) and "corrupt" in str(e.value)


def test_ctl_sim_checks_its_arguments(tmp_path, capsys):
    for argv in (["domain-create", "x", "--uuid", "nope"], ["domain-create", "x", "--vcpus", "0"],
                 ["start"], ["reboot", "x"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["sim", *argv])
