"""What the unit tests of the network, storage and template steps share: a HostContext whose
xapi-db is a real Engine (test_dbsync.EngineThread) with this host's record, and a fake sysfs of
NICs under the ROOT (Paths.sys_class_net reads ROOT/sys/class/net when it exists)."""

import argparse
import logging
import socket
from collections import namedtuple
from pathlib import Path

from common import inventory, poolconf
from common import license as license_mod
from common.config import load_config
from common.platform import hostfacts
from daemons.init import dbsync_host
from daemons.init.context import HostContext
from daemons.init.dbsync_client import DbClient
from daemons.init.dbsync_common import Sync


class Bus:
    """``ctx.rpc("xapi-db")`` for a step under test: the EngineThread's methods, as a client
    that is closed (or used in ``with``) as RpcClient is."""

    def __init__(self, engine):
        self.engine = engine
        self.closed = False

    def call(self, method, *args):
        assert not self.closed, "call on a closed client"
        return self.engine.call(method, *args)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_ctx(env, engine, role="master", **options):
    """A HostContext on ``env``'s ROOT with ``options`` in xapi.conf, reaching ``engine``, and
    this host's record made (dbsync create_localhost)."""
    paths = env.paths
    if options:
        paths.xapi_conf.write_text("".join(f"{k} = {v}\n" for k, v in options.items()))
    ctx = HostContext(paths=paths, config=load_config(paths),
                      role=poolconf.parse_pool_conf(role),
                      args=argparse.Namespace(root=str(paths.root)),
                      log=logging.getLogger("test-platform-records"))
    ctx.inventory, _ = inventory.ensure_inventory(paths.inventory)
    ctx.license = license_mod.read_license(paths.license)
    ctx.rpc = lambda program="xapi-db": Bus(engine)
    dbsync_host.create_localhost(sync_of(ctx, engine))
    return ctx


def sync_of(ctx, engine):
    return Sync(ctx, DbClient(engine), agent_start_time=0.0)


def client(engine):
    return DbClient(engine)


def assert_quiet(engine, body):
    """``body()`` (a second run) changes nothing: same generation, same row counts."""
    before = (engine.generation, engine.counts())
    result = body()
    assert (engine.generation, engine.counts()) == before
    return result


def add_nic(root, device, mac, mtu=1500, carrier=True, physical=True, speed_mbps=1000):
    """A NIC in the fake sysfs under ``root``: address, mtu, carrier, speed, and a ``device``
    entry when it is physical. Returns its directory."""
    base = Path(root) / "sys" / "class" / "net" / device
    base.mkdir(parents=True)
    (base / "address").write_text(mac + "\n")
    (base / "mtu").write_text(f"{mtu}\n")
    (base / "carrier").write_text("1\n" if carrier else "0\n")
    (base / "speed").write_text(f"{speed_mbps}\n")
    if physical:
        (base / "device").mkdir()
    return base


Addr = namedtuple("Addr", "family address netmask broadcast ptp")


def fake_addresses(monkeypatch, root, addresses):
    """The fake NICs' IPv4 addresses ({device: (address, netmask)}) where psutil would give
    them, and hostfacts.nic reading the fake sysfs under ``root`` whatever path it is given
    (dbsync_common.management_address asks for the machine's)."""
    def net():
        return ({dev: [Addr(socket.AF_INET, ip, mask, None, None)]
                 for dev, (ip, mask) in addresses.items()}, {})
    real_nic = hostfacts.nic
    fake_sysfs = Path(root) / "sys" / "class" / "net"
    monkeypatch.setattr(hostfacts, "_psutil_net", net)
    monkeypatch.setattr(hostfacts, "nic", lambda device, *_: real_nic(device, fake_sysfs))
