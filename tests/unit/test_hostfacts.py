"""Host facts: CPUs from cpuinfo, memory, NICs from (fake and real) sysfs, required processes."""

import logging
import os
import socket
import time
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from common.platform import hostfacts
from common.platform.hostfacts import Cpu, Nic

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6138 CPU @ 2.00GHz
stepping\t: 4
cpu MHz\t\t: 2000.123
flags\t\t: fpu vme sse sse2 vmx

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6138 CPU @ 2.00GHz
stepping\t: 4
cpu MHz\t\t: 1999.5
flags\t\t: fpu vme sse sse2 vmx

"""


def test_hostname_and_boot_time():
    assert hostfacts.hostname() == socket.gethostname()
    assert 0 < hostfacts.boot_time() <= time.time()


def test_cpus_on_this_machine_one_per_logical_cpu():
    found = hostfacts.cpus()
    assert len(found) == psutil.cpu_count(logical=True)
    assert all(isinstance(c, Cpu) and c.model_name for c in found)
    assert len({c.number for c in found}) == len(found)


def test_cpus_from_hand_written_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    first, second = hostfacts.cpus(path)
    name = "Intel(R) Xeon(R) Gold 6138 CPU @ 2.00GHz"
    assert first == Cpu(0, "GenuineIntel", name, "6", "85", "4",
                        ("fpu", "vme", "sse", "sse2", "vmx"), 2000.123)
    assert (second.number, second.vendor, second.model_name, second.speed_mhz) == \
        (1, "GenuineIntel", name, 1999.5)
    assert second.flags == ("fpu", "vme", "sse", "sse2", "vmx")


def test_cpu_speed_falls_back_to_psutil(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text("processor : 0\nmodel name : Some CPU\n")
    freq = type("Freq", (), {"current": 1234.0})()
    monkeypatch.setattr(hostfacts.psutil, "cpu_freq", lambda: freq)
    (cpu,) = hostfacts.cpus(path)
    assert (cpu.model_name, cpu.vendor, cpu.speed_mhz) == ("Some CPU", "unknown", 1234.0)


@pytest.mark.parametrize("content", [None, "", "garbage without processors\n"])
def test_missing_or_odd_cpuinfo_still_gives_logical_cpu_count(tmp_path, content):
    path = tmp_path / "cpuinfo"
    if content is not None:
        path.write_text(content)
    found = hostfacts.cpus(path)
    assert len(found) == psutil.cpu_count(logical=True) >= 1
    assert all(c.model_name == "unknown" for c in found)
    assert [c.number for c in found] == list(range(len(found)))


def test_memory_matches_psutil():
    total, free = hostfacts.memory()
    assert total == psutil.virtual_memory().total
    assert 0 < free <= total


def test_disk_usage(tmp_path):
    total, free = hostfacts.disk_usage(tmp_path)
    assert total == psutil.disk_usage(str(tmp_path)).total
    assert 0 <= free <= total


# --- NICs against a fake sysfs -------------------------------------------------------------

def make_dev(root, name, mac, mtu, carrier=None, device=False, driver=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "address").write_text(mac + "\n")
    (d / "mtu").write_text(f"{mtu}\n")
    if carrier is not None:
        (d / "carrier").write_text(f"{carrier}\n")
    if device:
        (d / "device").mkdir()
        if driver:
            target = root.parent / "drivers" / driver
            target.mkdir(parents=True, exist_ok=True)
            os.symlink(target, d / "device" / "driver")
    return d


@pytest.fixture
def no_psutil_net(monkeypatch):
    """A fake device name may clash with a real one (eth0): keep psutil out of the picture."""
    monkeypatch.setattr(hostfacts.psutil, "net_if_addrs", lambda: {})
    monkeypatch.setattr(hostfacts.psutil, "net_if_stats", lambda: {})


@pytest.fixture
def fake_sysfs(tmp_path):
    root = tmp_path / "class_net"
    make_dev(root, "eth0", "AA:BB:CC:00:11:22", 9000, carrier=1, device=True, driver="e1000e")
    make_dev(root, "br0", "aa:bb:cc:00:11:33", 1500, carrier=1)
    make_dev(root, "lo", "00:00:00:00:00:00", 65536, carrier=1)
    return root


def test_nics_from_fake_sysfs_only_physical(fake_sysfs, no_psutil_net):
    assert hostfacts.nics(fake_sysfs) == [
        Nic(device="eth0", mac="aa:bb:cc:00:11:22", mtu=9000, ipv4=(), ipv6=(), netmask=None,
            carrier=True, speed_mbps=None, driver="e1000e", physical=True)]
    every = hostfacts.nics(fake_sysfs, physical_only=False)
    assert [n.device for n in every] == ["br0", "eth0", "lo"]
    assert [n.physical for n in every] == [False, True, False]


def test_nic_enriched_by_psutil(fake_sysfs, monkeypatch):
    snic = namedtuple("snicaddr", "family address netmask broadcast ptp")
    sstats = namedtuple("snicstats", "isup duplex speed mtu flags")
    addrs = {"eth0": [snic(socket.AF_INET, "10.0.0.5", "255.255.255.0", None, None),
                      snic(socket.AF_INET6, "fe80::1%eth0", "ffff:ffff:ffff:ffff::", None, None),
                      snic(psutil.AF_LINK, "ff:ff:ff:ff:ff:ff", None, None, None)]}
    stats = {"eth0": sstats(True, psutil.NIC_DUPLEX_FULL, 1000, 1500, "")}
    monkeypatch.setattr(hostfacts.psutil, "net_if_addrs", lambda: addrs)
    monkeypatch.setattr(hostfacts.psutil, "net_if_stats", lambda: stats)
    eth0 = hostfacts.nic("eth0", fake_sysfs)
    # sysfs wins for MAC and MTU; addresses and speed come from psutil
    assert (eth0.mac, eth0.mtu) == ("aa:bb:cc:00:11:22", 9000)
    assert (eth0.ipv4, eth0.ipv6, eth0.netmask) == (("10.0.0.5",), ("fe80::1",), "255.255.255.0")
    assert eth0.speed_mbps == 1000
    # without the sysfs files psutil is the fallback
    for f in ("address", "mtu", "carrier"):
        (fake_sysfs / "eth0" / f).unlink()
    eth0 = hostfacts.nic("eth0", fake_sysfs)
    assert (eth0.mac, eth0.mtu, eth0.carrier) == ("ff:ff:ff:ff:ff:ff", 1500, True)


def test_carrier_down_and_speed_none(fake_sysfs, no_psutil_net):
    (fake_sysfs / "eth0" / "carrier").write_text("0\n")
    assert hostfacts.nic("eth0", fake_sysfs).carrier is False
    (fake_sysfs / "eth0" / "carrier").unlink()
    (fake_sysfs / "eth0" / "carrier").mkdir()  # unreadable, as when the link is down
    assert hostfacts.nic("eth0", fake_sysfs).carrier is False
    (fake_sysfs / "eth0" / "speed").write_text("-1\n")
    assert hostfacts.nic("eth0", fake_sysfs).speed_mbps is None


def test_nic_disappearing_while_scanning_is_skipped(fake_sysfs, no_psutil_net, monkeypatch,
                                                    caplog):
    caplog.set_level(logging.INFO, logger=hostfacts.__name__)
    make_dev(fake_sysfs, "eth1", "aa:bb:cc:00:11:44", 1500, carrier=1, device=True)
    real = hostfacts._read_nic

    def vanish(base, addrs, stats):
        if base.name == "eth0":
            raise FileNotFoundError(str(base))
        return real(base, addrs, stats)
    monkeypatch.setattr(hostfacts, "_read_nic", vanish)
    assert [n.device for n in hostfacts.nics(fake_sysfs)] == ["eth1"]
    assert "eth0" in caplog.text


def test_nic_missing_is_none(fake_sysfs):
    assert hostfacts.nic("does-not-exist") is None
    assert hostfacts.nic("does-not-exist", fake_sysfs) is None
    assert hostfacts.nic("../class_net", fake_sysfs) is None
    assert hostfacts.nics(fake_sysfs / "nowhere") == []


def test_real_sysfs_returns_only_devices_backed_by_a_device():
    root = Path("/sys/class/net")
    expected = sorted(d for d in os.listdir(root) if (root / d / "device").exists())
    found = hostfacts.nics()
    assert [n.device for n in found] == expected
    assert all(n.physical and n.mtu > 0 for n in found)
    if (root / "lo").exists():
        assert hostfacts.nic("lo").physical is False


# --- required processes -------------------------------------------------------------------

def test_missing_processes():
    me = psutil.Process().name()
    assert hostfacts.missing_processes([me]) == []
    assert hostfacts.missing_processes([]) == []
    assert hostfacts.missing_processes(["no-such-process-xyz", me]) == ["no-such-process-xyz"]
