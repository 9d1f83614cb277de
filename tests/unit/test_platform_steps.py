"""The platform steps of start-up (daemons/init/platform_steps.py) against a temp ROOT: the
control domain, its xenstore keys, the required processes and dom0's memory target."""

import argparse
import json
import logging
import shutil
import tempfile
import uuid as uuid_mod

import psutil
import pytest

from common import inventory, poolconf
from common.config import load_config
from common.errors import XapiError
from common.paths import Paths
from common.platform import hostfacts
from common.platform.xensim import XenSim
from daemons.init import platform_steps as ps
from daemons.init.context import HostContext

GIB_KIB = 1024 * 1024


@pytest.fixture
def root():
    root = tempfile.mkdtemp(prefix="x", dir="/tmp")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def make_ctx(root, **options):
    """A HostContext built as xapi-init's main.py builds it, with ``options`` in xapi.conf."""
    paths = Paths(root)
    paths.make_dirs()
    if options:
        paths.xapi_conf.write_text("".join(f"{k} = {v}\n" for k, v in options.items()))
    ctx = HostContext(paths=paths, config=load_config(paths),
                      role=poolconf.parse_pool_conf("master"),
                      args=argparse.Namespace(root=root, fresh=False),
                      log=logging.getLogger("test-platform-steps"))
    ctx.inventory, _ = inventory.ensure_inventory(paths.inventory)
    return ctx


def dom0_uuid(ctx):
    return ctx.inventory[inventory.CONTROL_DOMAIN_UUID]


def sim(ctx):
    return XenSim(ctx.paths.xensim)


# -- Check control domain ---------------------------------------------------------------------

def test_first_boot_creates_domain_0_with_the_inventory_uuid(root):
    ctx = make_ctx(root)
    assert sim(ctx).domains() == []
    note = ps.check_control_domain(ctx, None)
    assert "created domain 0" in note and dom0_uuid(ctx) in note
    [dom0] = sim(ctx).domains()
    assert dom0["domid"] == 0 and dom0["uuid"] == dom0_uuid(ctx)
    assert dom0["name"] == "Domain-0" and dom0["power_state"] == "Running"
    assert dom0["memory_kib"] == hostfacts.memory()[0] // 1024
    assert dom0["vcpus"] == len(hostfacts.cpus())   # one per logical CPU, as host_cpu


def test_second_run_is_a_no_op(root):
    ctx = make_ctx(root)
    ps.check_control_domain(ctx, None)
    generation = sim(ctx).generation
    before = ctx.paths.xensim.joinpath("domains.json").read_bytes()
    note = ps.check_control_domain(ctx, None)
    assert "matches the inventory" in note and "created" not in note
    assert sim(ctx).generation == generation
    assert ctx.paths.xensim.joinpath("domains.json").read_bytes() == before


def test_an_existing_domain_0_is_kept(root):
    ctx = make_ctx(root)
    sim(ctx).init(dom0_uuid(ctx), 2 * GIB_KIB, 3)
    ps.check_control_domain(ctx, None)
    [dom0] = sim(ctx).domains()
    assert (dom0["memory_kib"], dom0["vcpus"]) == (2 * GIB_KIB, 3)


def test_uuid_mismatch_fails_naming_both_uuids_and_both_files(root):
    ctx = make_ctx(root)
    other = str(uuid_mod.uuid4())
    sim(ctx).init(other, GIB_KIB, 1)
    with pytest.raises(XapiError) as e:
        ps.check_control_domain(ctx, None)
    assert e.value.code == "CONTROL_DOMAIN_UUID_MISMATCH"
    text = str(e.value)
    assert dom0_uuid(ctx) in text and other in text
    assert str(ctx.paths.inventory) in text and "etc/xensource-inventory" in text
    assert str(ctx.paths.xensim / "domains.json") in text
    assert "var/lib/xensim/domains.json" in text
    assert sim(ctx).domain(0)["uuid"] == other       # nothing renamed


@pytest.mark.parametrize("content", [b"{", b'{"next_domid": 1}', b"\xff\xfe"])
def test_corrupt_domains_json_fails_naming_the_file(root, content):
    ctx = make_ctx(root)
    ps.check_control_domain(ctx, None)
    path = ctx.paths.xensim / "domains.json"
    path.write_bytes(content)
    for action in (ps.check_control_domain, ps.setup_xenstore_keys, ps.set_dom0_memory_target):
        with pytest.raises(XapiError) as e:
            action(ctx, None)
        assert e.value.code == "SIM_STATE_CORRUPT", (action, e.value)
        assert str(path) in str(e.value)
    assert path.read_bytes() == content                 # never replaced by an empty hypervisor


def test_corrupt_domains_json_on_first_boot_is_not_overwritten(root):
    ctx = make_ctx(root)
    path = ctx.paths.xensim / "domains.json"
    path.write_text(json.dumps({"domains": "nope"}))
    with pytest.raises(XapiError) as e:
        ps.check_control_domain(ctx, None)
    assert e.value.code == "SIM_STATE_CORRUPT" and str(path) in str(e.value)
    assert json.loads(path.read_text()) == {"domains": "nope"}


# -- Set up xenstore keys ---------------------------------------------------------------------

def test_xenstore_keys_are_written_and_idempotent(root):
    ctx = make_ctx(root)
    ps.check_control_domain(ctx, None)
    uuid = dom0_uuid(ctx)
    s = sim(ctx)
    note = ps.setup_xenstore_keys(ctx, None)
    assert "written" in note
    assert s.read("/local/domain/0/name") == "Domain-0"
    assert s.read("/local/domain/0/domid") == "0"
    assert s.read("/local/domain/0/vm") == f"/vm/{uuid}"
    assert s.read("/local/domain/0/control/feature-balloon") == "1"
    assert s.read(f"/vm/{uuid}/uuid") == uuid
    assert s.read(f"/vm/{uuid}/name") == "Domain-0"
    assert s.read(ps.XE_KEY) == ps.XE_VAL
    # an initial target (dom0's memory) until "Set memory target for control domain" runs
    assert s.read("/local/domain/0/memory/target") == str(s.domain(0)["memory_kib"])
    assert set(s.ls("/local/domain/0")) == {"name", "domid", "vm", "control", "memory"}

    generation = s.generation
    watch = s.watch("/")
    note = ps.setup_xenstore_keys(ctx, None)
    assert "already set" in note
    assert s.generation == generation and watch.poll() == []


def test_xenstore_setup_keeps_a_memory_target_already_set(root):
    ctx = make_ctx(root)
    ps.check_control_domain(ctx, None)
    sim(ctx).write("/local/domain/0/memory/target", "262144")
    ps.setup_xenstore_keys(ctx, None)
    assert sim(ctx).read("/local/domain/0/memory/target") == "262144"


def test_xenstore_setup_without_domain_0_says_which_step_creates_it(root):
    ctx = make_ctx(root)
    with pytest.raises(XapiError) as e:
        ps.setup_xenstore_keys(ctx, None)
    assert e.value.code == "CONTROL_DOMAIN_MISSING" and "Check control domain" in str(e.value)


# -- Run startup check ------------------------------------------------------------------------

def test_startup_check_with_the_default_list_checks_nothing(root):
    ctx = make_ctx(root)
    assert ctx.config["required-processes"] == []
    assert "nothing to check" in ps.run_startup_check(ctx, None)


def test_startup_check_passes_for_a_running_process(root):
    name = psutil.Process().name()
    ctx = make_ctx(root, **{"required-processes": name})
    assert name in ps.run_startup_check(ctx, None)


def test_startup_check_fails_naming_the_missing_processes(root):
    name = psutil.Process().name()
    ctx = make_ctx(root, **{"required-processes": f"{name}, no-such-process-xyz other-missing-q"})
    with pytest.raises(XapiError) as e:
        ps.run_startup_check(ctx, None)
    assert e.value.code == "REQUIRED_PROCESSES_NOT_RUNNING"
    assert e.value.params[0] == "no-such-process-xyz, other-missing-q"
    assert str(ctx.paths.xapi_conf) in str(e.value)      # where the list comes from


# -- Set memory target for control domain -----------------------------------------------------

def test_memory_target_from_the_option(root):
    ctx = make_ctx(root, **{"dom0-memory-target-mib": 512})
    sim(ctx).init(dom0_uuid(ctx), 2 * GIB_KIB, 2)
    ps.setup_xenstore_keys(ctx, None)
    note = ps.set_dom0_memory_target(ctx, None)
    assert sim(ctx).read("/local/domain/0/memory/target") == str(512 * 1024)
    assert "524288 KiB" in note and "dom0-memory-target-mib" in note
    generation = sim(ctx).generation
    assert "unchanged" in ps.set_dom0_memory_target(ctx, None)
    assert sim(ctx).generation == generation


def test_memory_target_defaults_to_domain_0_memory(root):
    ctx = make_ctx(root)
    sim(ctx).init(dom0_uuid(ctx), 2 * GIB_KIB, 2)
    sim(ctx).write("/local/domain/0/memory/target", "1")
    note = ps.set_dom0_memory_target(ctx, None)
    assert sim(ctx).read("/local/domain/0/memory/target") == str(2 * GIB_KIB)
    assert "domain 0's memory" in note


@pytest.mark.parametrize("mib, code", [(4096, "MEMORY_CONSTRAINT_VIOLATION"),
                                       (-1, "CONFIG_ERROR")])
def test_memory_target_refuses_a_bad_option_value(root, mib, code):
    ctx = make_ctx(root, **{"dom0-memory-target-mib": mib})
    sim(ctx).init(dom0_uuid(ctx), 2 * GIB_KIB, 2)
    with pytest.raises(XapiError) as e:
        ps.set_dom0_memory_target(ctx, None)
    assert e.value.code == code and "dom0-memory-target-mib" in str(e.value)
    assert sim(ctx).read("/local/domain/0/memory/target") is None
