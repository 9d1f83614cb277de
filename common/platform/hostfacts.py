"""Real host facts: hostname, CPUs, memory, boot time, physical NICs, disk space, processes.

Read from /proc/cpuinfo, /sys/class/net and psutil (both paths injectable for tests). Nothing
here writes anything or needs root; a NIC that vanishes while being read is skipped, not raised.
"""

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
# host_metrics.memory_free moves all the time: it is written to the pool database (by dbsync and
# by xapi-rrd's 5 s monitor) only when it is off by more than this share of the total, so an
# idle host does not rewrite its database every few seconds.
MEMORY_FREE_SLACK = 0.01


@dataclass(frozen=True)
class Cpu:
    """One logical CPU (xapi keeps one host_cpu record per logical CPU)."""
    number: int
    vendor: str
    model_name: str
    family: str
    model: str
    stepping: str
    flags: tuple
    speed_mhz: float


@dataclass(frozen=True)
class Nic:
    """One network interface as /sys/class/net and psutil see it now."""
    device: str
    mac: str
    mtu: int
    ipv4: tuple
    ipv6: tuple
    netmask: str | None
    carrier: bool
    speed_mbps: int | None
    driver: str | None
    physical: bool


def hostname() -> str:
    return socket.gethostname()


# --- CPUs -------------------------------------------------------------------------------------

def _cpuinfo_blocks(text):
    """The "key : value" blocks of a cpuinfo text that describe a processor."""
    blocks, cur = [], {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if "processor" in cur:
                blocks.append(cur)
            cur = {}
        elif ":" in line:
            key, _, value = line.partition(":")
            cur.setdefault(key.strip(), value.strip())
    return blocks


def _psutil_mhz():
    try:
        freq = psutil.cpu_freq()
    except Exception:  # not provided on every platform / VM
        freq = None
    return float(freq.current) if freq and freq.current else 0.0


def _float(text, default):
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def cpus(cpuinfo_path="/proc/cpuinfo") -> list[Cpu]:
    """One Cpu per logical CPU. An unreadable or unparseable cpuinfo still gives
    psutil.cpu_count(logical=True) CPUs (at least one) with "unknown" fields."""
    try:
        blocks = _cpuinfo_blocks(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError as e:
        log.warning("cannot read %s (%s); CPU details unknown", cpuinfo_path, e)
        blocks = []
    if not blocks:
        count = psutil.cpu_count(logical=True) or 1
        log.warning("no processors in %s; assuming %d unknown CPUs", cpuinfo_path, count)
        mhz = _psutil_mhz()
        return [Cpu(i, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, (), mhz)
                for i in range(count)]
    fallback_mhz = None
    result = []
    for index, b in enumerate(blocks):
        try:
            number = int(b["processor"])
        except ValueError:
            number = index
        mhz = _float(b.get("cpu MHz"), None)
        if mhz is None:
            if fallback_mhz is None:
                fallback_mhz = _psutil_mhz()
            mhz = fallback_mhz
        flags = b.get("flags", b.get("Features", ""))
        result.append(Cpu(
            number=number,
            vendor=b.get("vendor_id") or b.get("CPU implementer") or UNKNOWN,
            model_name=b.get("model name") or UNKNOWN,
            family=b.get("cpu family") or b.get("CPU architecture") or UNKNOWN,
            model=b.get("model") or b.get("CPU part") or UNKNOWN,
            stepping=b.get("stepping") or b.get("CPU revision") or UNKNOWN,
            flags=tuple(flags.split()),
            speed_mhz=mhz))
    return result


# --- memory, boot time, disks ------------------------------------------------------------------

def memory() -> tuple[int, int]:
    """(total_bytes, free_bytes); free is what psutil calls available."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def boot_time() -> float:
    return float(psutil.boot_time())


def disk_usage(path) -> tuple[int, int]:
    """(total_bytes, free_bytes) of the file system holding ``path``."""
    du = psutil.disk_usage(os.fspath(path))
    return int(du.total), int(du.free)


# --- NICs ---------------------------------------------------------------------------------------

def _read(path):
    """Stripped text of a sysfs attribute, None when it cannot be read."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _read_nic(base: Path, addrs, stats) -> Nic:
    """The Nic for sysfs directory ``base``; FileNotFoundError when the device is gone."""
    dev = base.name
    if not base.is_dir():
        raise FileNotFoundError(str(base))
    physical = (base / "device").exists()
    dev_addrs, st = addrs.get(dev, []), stats.get(dev)
    mac = _read(base / "address") or next(
        (a.address for a in dev_addrs if a.family == psutil.AF_LINK), "")
    try:
        mtu = int(_read(base / "mtu"))
    except (TypeError, ValueError):
        mtu = st.mtu if st else 0
    try:
        carrier = (base / "carrier").read_text().strip() == "1"
    except FileNotFoundError:
        carrier = bool(st and st.isup)
    except OSError:  # EINVAL while the interface is down
        carrier = False
    speed = st.speed if st else None
    if not speed or speed <= 0:
        speed = _float(_read(base / "speed"), 0)
    try:
        driver = os.path.basename(os.readlink(base / "device" / "driver"))
    except OSError:
        driver = None
    ipv4 = [a for a in dev_addrs if a.family == socket.AF_INET]
    ipv6 = tuple(a.address.split("%")[0] for a in dev_addrs if a.family == socket.AF_INET6)
    if not base.is_dir():  # vanished while we were reading it
        raise FileNotFoundError(str(base))
    return Nic(device=dev, mac=mac.lower(), mtu=mtu,
               ipv4=tuple(a.address for a in ipv4), ipv6=ipv6,
               netmask=ipv4[0].netmask if ipv4 else None, carrier=carrier,
               speed_mbps=int(speed) if speed and speed > 0 else None,
               driver=driver, physical=physical)


def _psutil_net():
    try:
        return psutil.net_if_addrs(), psutil.net_if_stats()
    except OSError as e:
        log.warning("psutil cannot list interfaces (%s); using sysfs only", e)
        return {}, {}


def nics(sys_class_net="/sys/class/net", physical_only=True) -> list[Nic]:
    """The NICs under ``sys_class_net``, sorted by device name. Only physical ones (backed
    by a device: ``<dev>/device`` exists; not lo, bridges, ifb, veth, tun) unless
    ``physical_only`` is false."""
    root = Path(sys_class_net)
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        log.warning("cannot list %s (%s); no NICs", root, e)
        return []
    addrs, stats = _psutil_net()
    result = []
    for dev in names:
        base = root / dev
        if physical_only and not (base / "device").exists():
            continue
        try:
            result.append(_read_nic(base, addrs, stats))
        except FileNotFoundError:
            log.info("NIC %s disappeared while scanning; skipped", dev)
    return result


def nic(device, sys_class_net="/sys/class/net") -> Nic | None:
    """One NIC as it is now (physical or not); None when there is no such device."""
    if not device or "/" in device or device in (".", ".."):
        return None
    addrs, stats = _psutil_net()
    try:
        return _read_nic(Path(sys_class_net) / device, addrs, stats)
    except FileNotFoundError:
        return None


# --- processes ----------------------------------------------------------------------------------

def missing_processes(names) -> list[str]:
    """The names (from xapi.conf required-processes) with no running process: a process
    matches by psutil name() or by the basename of its cmdline[0]. Empty when all run."""
    running = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        info = proc.info
        if info.get("name"):
            running.add(info["name"])
        cmdline = info.get("cmdline")
        if cmdline and cmdline[0]:
            running.add(os.path.basename(cmdline[0]))
    missing = []
    for name in names:
        if name and name not in running and os.path.basename(name) not in running \
                and name not in missing:
            missing.append(name)
    return missing
