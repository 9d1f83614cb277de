"""The steps "Initialise storage", "Establish version of tools VDI", "Plug unplugged PBDs" and
"Check / create templates" (daemons/init/storage_steps.py, common/storage/sr_scan.py,
template_steps.py) against a real xapi-db Engine on a temp ROOT: records on a fresh database and again (a second run writes
nothing), PBDs for shared SRs, the SR scan (VDIs from files, gone files marked missing), an SR
that cannot be plugged or read, the tools ISO's version, and the built-in templates."""

import os
import uuid as uuid_mod

import pytest

from common import localdb
from common.errors import XapiError
from common.platform import templates
from common.storage import sr_scan
from daemons.init import dbsync_master, storage_steps as st, template_steps
from daemons.init.platform_steps import enable_host

from platform_harness import assert_quiet, client, make_ctx, sync_of
from test_dbsync import EngineThread

MIB = 1024 * 1024
LOCAL = "/var/lib/xcp/sr/local"


@pytest.fixture
def engine(env):
    engine = EngineThread(env)
    yield engine
    engine.shutdown()


def master(env, engine, **options):
    """A master with its pool record and the tools SR (dbsync's), the tools ISO dir made."""
    ctx = make_ctx(env, engine, **options)
    s = sync_of(ctx, engine)
    dbsync_master.create_pool_record(s)
    dbsync_master.create_tools_sr(s)
    return ctx


def tools_dir(ctx):
    directory = ctx.paths.under(dbsync_master.TOOLS_SR_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def srs(engine):
    return {r["name_label"]: (ref, r) for ref, r in client(engine).records("SR").items()}


def pbd_of(engine, sr):
    [(ref, pbd)] = client(engine).records("PBD", SR=sr).items()
    return ref, pbd


def vdis(engine, sr):
    return {r["location"]: r for r in client(engine).records("VDI", SR=sr).values()}


def iso_library(ctx, engine):
    """A local ISO SR on /srv/isos (not made): its PBD on this host cannot be plugged yet."""
    db = client(engine)
    sr = db.create("SR", {"name_label": "ISO library", "type": "iso", "content_type": "iso"})
    db.create("PBD", {"host": db.find("host")[0], "SR": sr, "currently_attached": False,
                      "device_config": {"location": "/srv/isos", "legacy_mode": "true"}})
    return sr, ctx.paths.under("/srv/isos")


def messages(engine, name):
    return [m for m in engine.call("message.get_all_records").values() if m["name"] == name]


# -- Initialise storage --------------------------------------------------------------------------

def test_a_fresh_host_gets_its_local_sr_plugged_and_scanned(env, engine):
    ctx = master(env, engine)
    note = st.initialise_storage(ctx, None)
    assert "made /opt/xensource/packages/iso" in note          # the tools SR's directory
    assert ctx.paths.under(dbsync_master.TOOLS_SR_DIR).is_dir()
    sr, local = srs(engine)["Local storage"]
    assert (local["type"], local["content_type"], local["shared"]) == ("file", "user", False)
    assert local["other_config"]["i18n-key"] == "local-storage"
    _, pbd = pbd_of(engine, sr)
    host = client(engine).find("host")[0]
    assert (pbd["host"], pbd["device_config"], pbd["currently_attached"]) == \
        (host, {"location": LOCAL}, True)
    assert ctx.paths.local_sr.is_dir() and ctx.paths.local_sr == env.paths.root / LOCAL[1:]
    assert local["physical_size"] == os.statvfs(ctx.paths.local_sr).f_blocks * \
        os.statvfs(ctx.paths.local_sr).f_frsize
    tools_sr, _ = srs(engine)["XenServer Tools"]
    assert pbd_of(engine, tools_sr)[1]["currently_attached"] is True
    assert f"local SR {sr} created on {LOCAL}" in note and "2 SR(s) plugged" in note
    assert not messages(engine, st.PBD_PLUG_FAILED)
    note = assert_quiet(engine, lambda: st.initialise_storage(ctx, None))
    assert f"local SR {sr} exists" in note and "made /opt" not in note


def test_the_scan_makes_a_vdi_per_file_and_marks_gone_ones_missing(env, engine):
    ctx = master(env, engine)
    tools_dir(ctx)
    st.initialise_storage(ctx, None)
    sr, _ = srs(engine)["Local storage"]
    disk_uuid = str(uuid_mod.uuid4())
    sparse = ctx.paths.local_sr / f"{disk_uuid}.vhd"
    with open(sparse, "wb") as f:                     # 64 MiB, 1 MiB of it written
        f.truncate(64 * MIB)
        f.write(b"x" * MIB)
    (ctx.paths.local_sr / "scratch.img").write_bytes(b"y" * 4096)
    (ctx.paths.local_sr / ".partial").write_bytes(b"being written")
    (ctx.paths.local_sr / "subdir").mkdir()
    note = st.initialise_storage(ctx, None)
    assert "Local storage: 2 file(s): 2 VDI(s) created" in note
    found = vdis(engine, sr)
    assert sorted(found) == [f"{disk_uuid}.vhd", "scratch.img"]
    disk = found[f"{disk_uuid}.vhd"]
    assert disk["uuid"] == disk_uuid                  # the file name's uuid
    assert disk["virtual_size"] == 64 * MIB
    assert disk["physical_utilisation"] == os.stat(sparse).st_blocks * 512 < 64 * MIB
    assert (disk["type"], disk["read_only"], disk["missing"], disk["managed"]) == \
        ("user", False, False, True)
    assert found["scratch.img"]["uuid"] != "scratch"
    _, local = srs(engine)["Local storage"]
    assert local["virtual_allocation"] == 64 * MIB + 4096
    assert_quiet(engine, lambda: st.initialise_storage(ctx, None))

    sparse.unlink()
    note = st.initialise_storage(ctx, None)
    assert "1 marked missing" in note
    gone = vdis(engine, sr)[f"{disk_uuid}.vhd"]
    assert gone["missing"] is True and gone["uuid"] == disk_uuid     # kept, not deleted
    assert_quiet(engine, lambda: st.initialise_storage(ctx, None))
    sparse.write_bytes(b"back")
    st.initialise_storage(ctx, None)
    back = vdis(engine, sr)[f"{disk_uuid}.vhd"]
    assert (back["missing"], back["virtual_size"]) == (False, 4)


def test_an_sr_that_cannot_be_plugged_is_named_and_alerted(env, engine, caplog):
    ctx = master(env, engine)
    sr, directory = iso_library(ctx, engine)
    note = st.initialise_storage(ctx, None)
    assert pbd_of(engine, sr)[1]["currently_attached"] is False
    assert "not plugged: 'ISO library'" in note and f"{directory} is not a directory" in note
    [alert] = messages(engine, "PBD_PLUG_FAILED_ON_SERVER_START")
    assert (alert["priority"], alert["cls"]) == (1, "Host")
    assert any("ISO library" in r.getMessage() and "cannot be plugged" in r.getMessage()
               for r in caplog.records)
    for name in ("Local storage", "XenServer Tools"):                 # the others go on
        assert pbd_of(engine, srs(engine)[name][0])[1]["currently_attached"] is True


def test_an_unreadable_sr_directory_fails_the_step_and_keeps_its_vdis(env, engine,
                                                                      monkeypatch):
    ctx = master(env, engine)
    tools_dir(ctx)
    ctx.paths.local_sr.mkdir(parents=True)
    (ctx.paths.local_sr / "disk.img").write_bytes(b"z" * 512)
    st.initialise_storage(ctx, None)
    sr, _ = srs(engine)["Local storage"]
    before = vdis(engine, sr)
    os.chmod(ctx.paths.local_sr, 0)
    try:
        if os.geteuid() == 0:     # root reads a mode-0 directory: give the error it would get
            real_scandir = os.scandir

            def scandir(path):
                if os.fspath(path) == str(ctx.paths.local_sr):
                    raise PermissionError(13, "Permission denied", str(path))
                return real_scandir(path)
            monkeypatch.setattr(sr_scan.os, "scandir", scandir)
        with pytest.raises(XapiError) as e:
            st.initialise_storage(ctx, None)
    finally:
        os.chmod(ctx.paths.local_sr, 0o755)
    assert e.value.code == "SR_SCAN_FAILED"
    assert "'Local storage'" in str(e.value) and str(ctx.paths.local_sr) in str(e.value)
    assert "Permission denied" in str(e.value)
    assert vdis(engine, sr) == before                 # nothing marked missing


def test_a_location_that_is_not_a_directory_is_refused_by_the_scan(env, engine):
    ctx = master(env, engine)
    st.initialise_storage(ctx, None)
    sr, record = srs(engine)["Local storage"]
    _, pbd = pbd_of(engine, sr)
    ctx.paths.local_sr.rmdir()
    ctx.paths.local_sr.write_text("not a directory")
    with pytest.raises(XapiError) as e:
        sr_scan.scan_sr(ctx, client(engine), sr, record, pbd)
    assert e.value.code == "SR_SCAN_FAILED" and str(ctx.paths.local_sr) in str(e.value)
    bad = {**pbd, "device_config": {"location": "/var/../../etc"}}
    with pytest.raises(XapiError) as e:
        sr_scan.scan_sr(ctx, client(engine), sr, record, bad)
    assert e.value.code == "SR_LOCATION_INVALID" and "/var/../../etc" in str(e.value)


def test_the_master_makes_pbds_for_shared_srs_from_the_masters_device_config(env, engine):
    ctx = master(env, engine)
    tools_dir(ctx)
    db = client(engine)
    me = db.find("host")[0]
    other = db.create("host", {"name_label": "other", "uuid": str(uuid_mod.uuid4())})
    nfs = db.create("SR", {"name_label": "NFS", "type": "nfs", "shared": True})
    db.create("PBD", {"host": other, "SR": nfs, "device_config": {
        "server": "192.0.2.50", "serverpath": "/vms", "SRmaster": "true"}})
    lonely = db.create("SR", {"name_label": "no PBD", "type": "nfs", "shared": True})
    note = st.initialise_storage(ctx, None)
    assert "1 PBD made for shared SRs" in note
    [mine] = db.records("PBD", SR=nfs, host=me).values()
    assert mine["device_config"] == {"server": "192.0.2.50", "serverpath": "/vms"}
    assert mine["currently_attached"] is False        # no NFS plugin here: named, not plugged
    assert "'NFS'" in note and "no storage plugin attaches SRs of type 'nfs'" in note
    assert not db.find("PBD", SR=lonely)
    assert "0 PBDs made" in assert_quiet(engine, lambda: st.initialise_storage(ctx, None))


# -- Establish version of tools VDI -------------------------------------------------------------

def test_the_latest_tools_iso_is_recorded_on_its_vdi(env, engine):
    ctx = master(env, engine)
    iso = tools_dir(ctx)
    for name in ("guest-tools-8.3.0-5.iso", "guest-tools-8.4.0-12.iso", "guest-tools-8.4.0-9.iso",
                 "debian.iso", "notes.txt"):
        (iso / name).write_bytes(b"\0" * 2048)
    st.initialise_storage(ctx, None)
    note = st.establish_tools_version(ctx, None)
    assert "guest-tools-8.4.0-12.iso: version 8.4.0-12" in note
    assert ctx.notes["tools_version"] == "8.4.0-12"
    tools_sr, _ = srs(engine)["XenServer Tools"]
    found = vdis(engine, tools_sr)
    assert sorted(found) == ["debian.iso", "guest-tools-8.3.0-5.iso", "guest-tools-8.4.0-12.iso",
                             "guest-tools-8.4.0-9.iso"]
    latest = found["guest-tools-8.4.0-12.iso"]
    assert latest["sm_config"] == {"xs-tools": "true", "xs-tools-version": "8.4.0",
                                   "xs-tools-build": "12"}
    assert (latest["name_label"], latest["read_only"], latest["virtual_size"]) == \
        ("guest-tools.iso", True, 2048)
    assert found["guest-tools-8.4.0-9.iso"]["name_label"] == "Old version of guest-tools.iso"
    assert "xs-tools" not in found["guest-tools-8.4.0-9.iso"]["sm_config"]
    assert found["debian.iso"]["sm_config"] == {} and found["debian.iso"]["name_label"] == \
        "debian.iso"
    assert f"recorded on VDI {latest['uuid']}" in note
    assert_quiet(engine, lambda: st.establish_tools_version(ctx, None))

    (iso / "guest-tools-8.4.0-12.iso").unlink()       # an upgrade rolled back
    note = st.establish_tools_version(ctx, None)
    assert "guest-tools-8.4.0-9.iso: version 8.4.0-9" in note
    found = vdis(engine, tools_sr)
    assert found["guest-tools-8.4.0-12.iso"]["missing"] is True
    assert found["guest-tools-8.4.0-12.iso"]["name_label"] == "Old version of guest-tools.iso"
    assert found["guest-tools-8.4.0-9.iso"]["sm_config"]["xs-tools"] == "true"


def test_tools_version_without_a_tools_iso_or_a_version(env, engine):
    ctx = master(env, engine)
    assert st.establish_tools_version(ctx, None) == \
        f"no tools ISO in {dbsync_master.TOOLS_SR_DIR}"
    (tools_dir(ctx) / "guest-tools.iso").write_bytes(b"iso")
    st.initialise_storage(ctx, None)
    note = st.establish_tools_version(ctx, None)
    assert "guest-tools.iso: version unknown (none in its name)" in note
    assert ctx.notes["tools_version"] is None


def test_tools_iso_names_as_sm_reads_them():
    assert sr_scan.tools_iso_version("xs-tools-8.2.0-1.iso") == ("8.2.0", "1")
    assert sr_scan.tools_iso_version("guest-tools-9.1.2.iso") == ("9.1.2", "0")
    assert sr_scan.tools_iso_version("guest-tools.iso") == ("", "0")
    assert sr_scan.tools_iso_version("debian-12.iso") is None
    assert sr_scan.version_key("8.2.0", "53a") == (8, 2, 0, 53)
    assert sr_scan.version_key("", "0") == sr_scan.NO_VERSION
    assert sr_scan.latest_tools_iso(["xs-tools-6.0.0-1.iso", "xs-tools-10.0.0-1.iso"]) == \
        "xs-tools-10.0.0-1.iso"                       # by number, not by name


# -- Plug unplugged PBDs ---------------------------------------------------------------------------

def test_plug_unplugged_pbds_then_the_host_enables_itself(env, engine, caplog):
    ctx = master(env, engine)
    sr, directory = iso_library(ctx, engine)
    st.initialise_storage(ctx, None)                 # /srv/isos is missing: unplugged
    caplog.clear()
    note = st.plug_unplugged_pbds(ctx, None)
    assert note.startswith("0 of 1 unplugged PBD(s) plugged; could not plug: 'ISO library'")
    assert any("ISO library" in r.getMessage() for r in caplog.records)
    directory.mkdir(parents=True)                     # the ISO directory appears
    assert st.plug_unplugged_pbds(ctx, None) == "1 of 1 unplugged PBD(s) plugged"
    assert pbd_of(engine, sr)[1]["currently_attached"] is True
    assert assert_quiet(engine, lambda: st.plug_unplugged_pbds(ctx, None)) == \
        "every PBD of this host is plugged"
    local_sr, _ = srs(engine)["Local storage"]
    ctx.paths.local_sr.rmdir()                        # a file SR's directory is made again
    engine.call("db.write_field", "PBD", pbd_of(engine, local_sr)[0], "currently_attached",
                False)
    assert st.plug_unplugged_pbds(ctx, None) == "1 of 1 unplugged PBD(s) plugged"
    assert ctx.paths.local_sr.is_dir()
    ctx.local_db = localdb.LocalDB(ctx.paths.local_db)
    assert enable_host(ctx, None) == "host enabled"


# -- Check / create templates ---------------------------------------------------------------------

def test_templates_are_created_once_and_edits_are_kept(env, engine):
    ctx = master(env, engine)
    note = template_steps.create_templates(ctx, None)
    assert note.startswith(f"{len(templates.TEMPLATES)} built-in templates: "
                           f"{len(templates.TEMPLATES)} created")
    made = {r["name_label"]: r for r in client(engine).records("VM", is_a_template=True).values()}
    assert {"Other install media", "Debian Bookworm 12", "Windows 10 (64-bit)"} <= set(made)
    debian = made["Debian Bookworm 12"]
    assert debian["uuid"] == "07d91aaa-43f7-430a-bf84-0edb6714df0f"
    assert (debian["memory_static_min"], debian["memory_static_max"], debian["VCPUs_max"]) == \
        (1024 * MIB, 2048 * MIB, 1)
    assert debian["other_config"]["default_template"] == "true"
    assert debian["other_config"]["linux_template"] == "true"
    assert 'size="10737418240"' in debian["other_config"]["disks"]
    assert (debian["power_state"], debian["is_default_template"]) == ("Halted", True)
    windows = made["Windows 10 (64-bit)"]
    assert (windows["memory_static_min"], windows["VCPUs_at_startup"]) == (2048 * MIB, 2)
    assert made["Other install media"]["HVM_boot_params"] == {"order": "dc"}
    assert made["Other install media"]["memory_static_max"] == 256 * MIB
    assert_quiet(engine, lambda: template_steps.create_templates(ctx, None))

    db = client(engine)
    ref = db.get_by_uuid_or_none("VM", debian["uuid"])
    db.call("db.write_field", "VM", ref, "name_label", "Debian (ours)")      # operator edits
    db.call("db.write_field", "VM", ref, "memory_static_max", 4096 * MIB)
    other = db.get_by_uuid_or_none("VM", made["Other install media"]["uuid"])
    db.delete("VM", other)                                                  # and deletes one
    note = template_steps.create_templates(ctx, None)
    assert "1 created (Other install media)" in note
    record = db.record("VM", ref)
    assert (record["name_label"], record["memory_static_max"]) == ("Debian (ours)", 4096 * MIB)
    assert len(db.records("VM", is_a_template=True)) == len(templates.TEMPLATES)
