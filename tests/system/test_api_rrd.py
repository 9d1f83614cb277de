"""xapi-api's RRD handlers, SR.scan and the periodic jobs it serves, on one real tree: a XenAPI
session (the PyPI SDK over TCP) reads /rrd_updates as xport XML and JSON, /host_rrd restores
with Debian's rrdtool, bad parameters are 400, no session 401, a bad one 403, xapi-rrd stopped
503; SR.scan finds a new file of the local SR as a VDI; the jobs sr-scan and
session-revalidation are listed by `xapi-ctl periodic list` and run."""

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest
import XenAPI

from common import inventory

from .conftest import BIN, clean_env, describe, running_tree, wait_until

PASSWORD = "rrd pw"


@pytest.fixture(scope="module")
def tree():
    with running_tree() as t:
        done = subprocess.run([str(BIN / "xapi-ctl"), "--root", t.root, "passwd", "root"],
                              input=PASSWORD + "\n", text=True, capture_output=True,
                              timeout=30, env=clean_env())
        assert done.returncode == 0, describe(done)
        yield t


@pytest.fixture(scope="module")
def session(tree):
    s = XenAPI.Session(f"http://127.0.0.1:{tree.http_port}/")
    s.xenapi.login_with_password("root", PASSWORD, "2.3", "test_api_rrd")
    yield s
    s.xenapi.session.logout()


def get(tree, path, timeout_s=30):
    """GET http://127.0.0.1:<http-port><path> -> (status, content type, body text)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{tree.http_port}{path}",
                                    timeout=timeout_s) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def host_uuid(tree):
    return inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]


def jobs(tree):
    return {j["name"]: j for j in json.loads(tree.ctl_ok("periodic", "list", "--json").stdout)}


@pytest.mark.timeout(180)
def test_rrd_updates_as_xport_xml_and_json_with_a_real_session(tree, session):
    wait_until(lambda: tree.call("xapi-rrd", "sys.stats")["cycles"] >= 2, 60,
               "two monitoring cycles")
    sid = session._session
    legend_name = f"AVERAGE:host:{host_uuid(tree)}:memory_total_kib"
    status, ctype, body = get(tree, f"/rrd_updates?session_id={sid}&start=-60&host=true")
    assert status == 200 and ctype.startswith("text/xml"), (status, ctype, body[:300])
    xport = ET.fromstring(body)
    assert xport.tag == "xport"
    legend = [e.text for e in xport.find("meta/legend")]
    assert legend_name in legend, legend
    rows = xport.findall("data/row")
    assert rows and all(len(r.findall("v")) == len(legend) for r in rows)
    times = [int(r.find("t").text) for r in rows]
    assert times == sorted(times, reverse=True)
    status, ctype, body = get(tree, f"/rrd_updates?session_id={sid}&start=-60&host=true"
                                    "&json=true&interval=5")
    assert status == 200 and ctype == "application/json", (status, ctype, body[:300])
    doc = json.loads(body)
    column = doc["meta"]["legend"].index(legend_name)
    assert any(row["values"][column] and row["values"][column] > 0 for row in doc["data"])
    status, _, body = get(tree, f"/rrd_updates?session_id={sid}&start=-600&host=true"
                                "&json=1&cf=MAX")
    assert status == 200, (status, body[:300])
    assert legend_name.replace("AVERAGE", "MAX") in json.loads(body)["meta"]["legend"]


@pytest.mark.timeout(120)
def test_bad_parameters_are_400_and_credentials_are_checked(tree, session):
    sid = session._session
    status, _, body = get(tree, f"/rrd_updates?session_id={sid}&start=yesterday")
    assert status == 400 and "start" in body and "integer" in body, (status, body)
    status, _, body = get(tree, f"/rrd_updates?session_id={sid}&start=-60&cf=MEDIAN")
    assert status == 400 and "cf" in body, (status, body)
    status, _, body = get(tree, f"/rrd_updates?session_id={sid}")
    assert status == 400 and "start" in body, (status, body)
    status, _, body = get(tree, f"/vm_rrd?session_id={sid}")
    assert status == 400 and "uuid" in body, (status, body)
    status, _, body = get(tree, f"/vm_rrd?session_id={sid}&uuid=not-a-uuid")
    assert status == 400 and "not-a-uuid" in body, (status, body)
    status, _, body = get(tree, f"/vm_rrd?session_id={sid}&uuid=" + "0" * 8 + "-0000" * 3
                          + "-" + "0" * 12)
    assert status == 404, (status, body)
    assert get(tree, "/rrd_updates?start=-60")[0] == 401
    assert get(tree, "/host_rrd")[0] == 401
    assert get(tree, "/rrd_updates?start=-60&session_id=OpaqueRef:nope")[0] == 403
    assert get(tree, "/host_rrd?session_id=OpaqueRef:nope")[0] == 403


@pytest.mark.timeout(120)
def test_host_rrd_is_restored_by_rrdtool(tree, session):
    # a required peer (.ci/run installs it): a machine without it fails here, never skips
    assert shutil.which("rrdtool"), "Debian's rrdtool is missing: apt-get install rrdtool"
    status, ctype, body = get(tree, f"/host_rrd?session_id={session._session}")
    assert status == 200 and ctype.startswith("text/xml"), (status, ctype, body[:300])
    rrd = ET.fromstring(body)
    assert rrd.tag == "rrd" and rrd.find("version").text == "0003"
    names = {ds.find("name").text.strip() for ds in rrd.findall("ds")}
    assert {"memory_total_kib", "cpu_avg"} <= names, names
    work = tempfile.mkdtemp(prefix="xr", dir="/tmp")
    try:
        xml_path, rrd_path = os.path.join(work, "host.xml"), os.path.join(work, "host.rrd")
        with open(xml_path, "w") as f:
            f.write(body)
        done = subprocess.run(["rrdtool", "restore", xml_path, rrd_path], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        info = subprocess.run(["rrdtool", "info", rrd_path], capture_output=True, text=True,
                              timeout=60)
        assert info.returncode == 0 and "ds[memory_total_kib]" in info.stdout, info.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def local_sr(session):
    [sr] = session.xenapi.SR.get_by_name_label("Local storage")
    return sr


def vdi_at(session, sr, location):
    for ref, record in session.xenapi.VDI.get_all_records().items():
        if record["SR"] == sr and record["location"] == location:
            return record
    return None


@pytest.mark.timeout(120)
def test_sr_scan_finds_a_new_file_of_the_local_sr(tree, session):
    sr = local_sr(session)
    name = "scanned-disk.img"
    (tree.paths.local_sr / name).write_bytes(b"d" * 4096)
    assert vdi_at(session, sr, name) is None
    session.xenapi.SR.scan(sr)
    vdi = vdi_at(session, sr, name)
    assert vdi is not None and vdi["virtual_size"] == "4096" and vdi["missing"] is False, vdi
    (tree.paths.local_sr / name).unlink()
    session.xenapi.SR.scan(sr)
    assert vdi_at(session, sr, name)["missing"] is True
    with pytest.raises(XenAPI.Failure) as err:
        session.xenapi.SR.scan("OpaqueRef:nope")
    assert err.value.details[0] == "HANDLE_INVALID"


@pytest.mark.timeout(180)
def test_the_sr_scan_job_scans_srs_marked_auto_scan_or_dirty(tree, session):
    steps = {s["name"]: s for s in tree.status()["steps"]}
    assert steps["Start SR scanning thread"]["status"] == "ok", steps["Start SR scanning thread"]
    listed = jobs(tree)
    job = listed["sr-scan"]
    assert (job["period"], job["target"], job["method"], job["origin"]) == (
        30.0, "xapi-api", "api.scan_srs", "startup")
    assert "xapi-api api.scan_srs" in tree.ctl_ok("periodic", "list").stdout
    sr = local_sr(session)
    name = "job-disk.img"
    (tree.paths.local_sr / name).write_bytes(b"j" * 1024)
    done = tree.ctl_ok("periodic", "run", "sr-scan")
    assert ": ok" in done.stdout, done.stdout
    assert vdi_at(session, sr, name) is None        # Local storage is not marked auto-scan
    session.xenapi.SR.add_to_other_config(sr, "dirty", "")
    tree.ctl_ok("periodic", "run", "sr-scan")
    assert vdi_at(session, sr, name) is not None
    assert "dirty" not in session.xenapi.SR.get_other_config(sr)   # scanned once, then clean
    session.xenapi.SR.add_to_other_config(sr, "auto-scan", "true")
    (tree.paths.local_sr / name).unlink()
    tree.ctl_ok("periodic", "run", "sr-scan")
    assert vdi_at(session, sr, name)["missing"] is True
    assert jobs(tree)["sr-scan"]["last_error"] is None


@pytest.mark.timeout(120)
def test_session_revalidation_runs_and_keeps_local_superuser_sessions(tree, session):
    job = jobs(tree)["session-revalidation"]
    assert (job["period"], job["delay"], job["target"], job["method"]) == (
        300.0, 300.0, "xapi-api", "api.revalidate_sessions")
    done = tree.ctl_ok("periodic", "run", "session-revalidation")
    assert ": ok" in done.stdout, done.stdout
    assert session.xenapi.session.get_uuid(session._session)     # still valid


@pytest.mark.timeout(240)
def test_xapi_rrd_stopped_is_503(tree, session):
    tree.ctl_ok("stop", "xapi-rrd")
    try:
        status, _, body = get(tree, f"/rrd_updates?session_id={session._session}&start=-60",
                              timeout_s=60)
        assert status == 503 and "xapi-rrd" in body, (status, body)
    finally:
        tree.ctl_ok("start", "xapi-rrd")
    wait_until(lambda: get(tree, f"/host_rrd?session_id={session._session}")[0] == 200, 90,
               "/host_rrd served again once xapi-rrd is back")
