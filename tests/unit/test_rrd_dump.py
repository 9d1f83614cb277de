"""Dumps restored by Debian's rrdtool and fetched back equal; our parser reads them back; the
rrd_updates shapes (xport XML newest first, JSON); bad parameters; archive files."""

import gzip
import json
import math
import shutil
import subprocess
from xml.etree import ElementTree

import pytest

from common.errors import XapiError
from common.paths import Paths
from daemons.rrd import archive
from daemons.rrd.dump import dump_xml, parse_xml, xport_xml
from daemons.rrd.engine import AVERAGE, MAX, MIN, RrdError
from daemons.rrd.monitor import host_source, next_deadline, vm_source
from daemons.rrd.store import HOST, VM, RrdStore, parse_update_params

T0 = 1_699_999_980
HOST_UUID = "11111111-2222-3333-4444-555555555555"
VM_UUID = "66666666-7777-8888-9999-000000000000"


def filled_store(tmp_path, cycles=200):
    store = RrdStore(Paths(tmp_path))
    for n in range(1, cycles + 1):
        t = T0 + 5 * n
        store.update(HOST_UUID, HOST, t, {
            "cpu0": 0.25 * n, "cpu_avg": 0.2 * n, "loadavg": (n % 7) / 3.0,
            "memory_total_kib": 8_000_000.0, "memory_free_kib": 4_000_000.0 + 1000 * (n % 13)})
        store.update(VM_UUID, VM, t, {"cpu0": 0.1 * n, "memory": 2.0 ** 30})
    return store


def rrdtool():
    path = shutil.which("rrdtool")
    assert path, "Debian's rrdtool is needed (apt-get install rrdtool; .ci/run installs it)"
    return path


def fetch(path, cf, resolution, start, end):
    out = subprocess.run([rrdtool(), "fetch", str(path), cf, "-r", str(resolution),
                          "-s", str(start), "-e", str(end)],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines()[2:]:
        t, _, values = line.partition(":")
        rows[int(t)] = [float(v) for v in values.split()]
    return rows


def test_dump_is_restored_by_rrdtool_and_fetches_the_same_values(tmp_path):
    store = filled_store(tmp_path)
    rrd = store.entries[HOST_UUID].rrd
    xml = tmp_path / "host.xml"
    xml.write_text(dump_xml(rrd))
    restored = tmp_path / "host.rrd"
    subprocess.run([rrdtool(), "restore", str(xml), str(restored)], check=True)
    compared = 0
    for a in rrd.archives:
        if a.pdp_cnt > 12:
            continue   # the hour and day archives of 1000 s of data are all unknown
        span = a.pdp_cnt * rrd.step
        ours = dict(rrd.archive_rows(a))
        end = rrd.archive_end(a)
        theirs = fetch(restored, a.cf, span, end - 20 * span, end)
        assert theirs, (a.cf, a.pdp_cnt)
        for t, values in theirs.items():
            if t not in ours:
                continue
            for u, w in zip(values, ours[t]):
                assert math.isnan(u) == math.isnan(w), (a.cf, a.pdp_cnt, t, values, ours[t])
                if not math.isnan(u):
                    assert u == pytest.approx(w, rel=1e-9)
                    compared += 1
    assert compared > 100


def test_rrdtool_dump_of_the_restored_file_reads_back_as_the_same_rrd(tmp_path):
    rrd = filled_store(tmp_path).entries[VM_UUID].rrd
    (tmp_path / "vm.xml").write_text(dump_xml(rrd))
    subprocess.run([rrdtool(), "restore", str(tmp_path / "vm.xml"), str(tmp_path / "vm.rrd")],
                   check=True)
    theirs = subprocess.run([rrdtool(), "dump", str(tmp_path / "vm.rrd")], capture_output=True,
                            text=True, check=True).stdout
    back = parse_xml(theirs)
    assert back.names() == rrd.names() and back.last_update == rrd.last_update
    for a, b in zip(rrd.archives, back.archives):
        for x, y in zip(a.rows_oldest_first(), b.rows_oldest_first()):
            assert all((math.isnan(u) and math.isnan(v)) or u == pytest.approx(v, rel=1e-9)
                       for u, v in zip(x, y))


def test_our_dump_round_trips_exactly_and_goes_on_the_same(tmp_path):
    rrd = filled_store(tmp_path, 50).entries[HOST_UUID].rrd
    back = parse_xml(dump_xml(rrd))
    assert dump_xml(back) == dump_xml(rrd)
    values = {"cpu0": 13.0, "loadavg": 0.5}
    rrd.update(T0 + 5 * 60, values)
    back.update(T0 + 5 * 60, values)
    assert dump_xml(back) == dump_xml(rrd)


@pytest.mark.parametrize("text, reason", [
    ("<rrd><version>0003</version>", "not XML"),
    ("<xport/>", "expected <rrd>"),
    ("<rrd><version>0003</version><step>x</step></rrd>", "<step> 'x' is not a number"),
    ("<rrd><version>0003</version><step>5</step><lastupdate>1</lastupdate></rrd>", "no <rra>"),
])
def test_bad_dumps_name_the_fault(text, reason):
    with pytest.raises(RrdError, match=reason):
        parse_xml(text)


def test_xport_newest_first_with_legend(tmp_path):
    store = filled_store(tmp_path, 30)
    text = store.rrd_updates(HOST_UUID, {"start": "-60", "host": "true"})
    root = ElementTree.fromstring(text)
    meta = root.find("meta")
    legend = [e.text for e in meta.iter("entry")]
    assert f"AVERAGE:host:{HOST_UUID}:cpu0" in legend
    assert f"AVERAGE:vm:{VM_UUID}:memory" in legend
    times = [int(r.find("t").text) for r in root.iter("row")]
    assert times == sorted(times, reverse=True) and times[0] == T0 + 150
    assert times[-1] >= T0 + 150 - 60
    assert int(meta.find("rows").text) == len(times)
    assert int(meta.find("columns").text) == len(legend)
    assert all(len(r.findall("v")) == len(legend) for r in root.iter("row"))
    assert int(meta.find("step").text) == 5


def test_json_and_filters(tmp_path):
    store = filled_store(tmp_path, 30)
    doc = json.loads(store.rrd_updates(HOST_UUID, {"start": T0, "json": "true",
                                                   "vm_uuid": VM_UUID}))
    assert doc["meta"]["legend"] == [f"AVERAGE:vm:{VM_UUID}:cpu0",
                                     f"AVERAGE:vm:{VM_UUID}:memory"]
    assert doc["data"][0]["t"] == T0 + 150 and doc["data"][0]["values"][1] == 2.0 ** 30
    maxes = json.loads(store.rrd_updates(HOST_UUID, {"start": T0, "json": "1", "host": "1",
                                                     "cf": "max", "interval": "60"}))
    assert maxes["meta"]["step"] == 60
    assert all(e.startswith("MAX:") for e in maxes["meta"]["legend"])
    assert f"MAX:host:{HOST_UUID}:loadavg" in maxes["meta"]["legend"]


@pytest.mark.parametrize("params, name", [
    ({}, "start"), ({"start": "abc"}, "start"), ({"start": 0, "interval": "-5"}, "interval"),
    ({"start": 0, "cf": "LAST"}, "cf"), ({"start": 0, "host": "maybe"}, "host"),
    ({"start": 0, "vm_uuid": "../x"}, "vm_uuid"), ({"start": 0, "bogus": 1}, "bogus"),
])
def test_bad_update_params_say_which_and_why(params, name):
    with pytest.raises(XapiError) as err:
        parse_update_params(params, T0)
    assert err.value.code == "INVALID_VALUE" and err.value.params[0] == name
    assert len(err.value.params) == 3 and err.value.params[2]


def test_unknown_vm_is_a_clear_error(tmp_path):
    store = filled_store(tmp_path, 3)
    with pytest.raises(XapiError, match="no RRD for this VM"):
        store.rrd_updates(HOST_UUID, {"start": 0, "vm_uuid": HOST_UUID.replace("1", "2")})


def test_archives_saved_and_loaded(tmp_path):
    paths = Paths(tmp_path)
    store = filled_store(tmp_path, 20)
    assert store.save() == (2, pytest.approx(store.save(only_dirty=False)[1]))
    assert store.save() == (0, 0)   # nothing changed since
    raw = paths.rrd_archive(HOST_UUID).read_bytes()
    assert gzip.decompress(raw).startswith(b'<?xml version="1.0"')
    fresh = RrdStore(paths)
    fresh.load_all(HOST_UUID)
    assert dump_xml(fresh.entries[HOST_UUID].rrd) == dump_xml(store.entries[HOST_UUID].rrd)
    assert fresh.entries[VM_UUID].kind == VM
    assert {a.cf for a in fresh.entries[HOST_UUID].rrd.archives} == {AVERAGE, MIN, MAX}
    assert {a.cf for a in fresh.entries[VM_UUID].rrd.archives} == {AVERAGE}


@pytest.mark.parametrize("content", [b"not gzip", gzip.compress(b"<rrd>half"),
                                     gzip.compress(b"<rrd><version>0003</version></rrd>")])
def test_corrupt_archive_is_set_aside_and_a_fresh_rrd_starts(tmp_path, caplog, content):
    paths = Paths(tmp_path)
    path = paths.rrd_archive(HOST_UUID)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    store = RrdStore(paths)
    note = store.load(HOST_UUID, HOST)
    assert "archive corrupt" in note and HOST_UUID not in store.entries
    aside = list(path.parent.glob(f"{HOST_UUID}.gz.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content and not path.exists()
    assert "is corrupt" in caplog.text and str(path) in caplog.text
    store.update(HOST_UUID, HOST, T0 + 5, {"loadavg": 1.0})
    assert store.save() == (1, pytest.approx(path.stat().st_size))


def test_archive_names_only_uuids(tmp_path):
    with pytest.raises(XapiError, match="UUID_INVALID"):
        archive.save(Paths(tmp_path), "../../etc/passwd", None)


def test_data_source_names_and_deadlines():
    assert host_source("cpu3").type == "DERIVE" and host_source("cpu3").max == 1.0
    assert host_source("pif_eth0_rx").min == 0.0 and host_source("memory_free_kib").type == "GAUGE"
    assert vm_source("memory").type == "GAUGE"
    with pytest.raises(RrdError):
        vm_source("loadavg")
    assert next_deadline(T0 + 0.1) == T0 + 5 and next_deadline(T0 + 5) == T0 + 10
    assert xport_xml({"start": 0, "step": 5, "end": 0, "legend": [], "rows": []}).endswith(
        "<data></data></xport>")
