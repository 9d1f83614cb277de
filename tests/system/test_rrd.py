"""xapi-rrd on a real tree: after start-up the host RRD exists and rrd.updates returns the
host's data sources; host_metrics memory is written; kill -9 of xapi-rrd loses at most what
changed since the last flush. One tree for the module."""

import json
import os
import signal

import pytest

from common import inventory

from .conftest import running_tree, wait_until


@pytest.fixture(scope="module")
def tree():
    with running_tree() as t:
        yield t


def host_uuid(tree):
    return inventory.read_inventory(tree.paths.inventory)[inventory.INSTALLATION_UUID]


def updates(tree, **params):
    return json.loads(tree.call("xapi-rrd", "rrd.updates", {**params, "json": "true"}))


@pytest.mark.timeout(240)
def test_host_rrd_after_start_up(tree):
    uuid = host_uuid(tree)
    steps = {s["name"]: s for s in tree.status()["steps"]}
    assert steps["Start monitoring thread"]["status"] == "ok", steps["Start monitoring thread"]
    assert steps["Start database calls monitoring thread"]["status"] == "ok"
    wait_until(lambda: tree.call("xapi-rrd", "sys.stats")["cycles"] >= 3, 60,
               "three monitoring cycles")
    doc = updates(tree, start="-60", host="true")
    legend = doc["meta"]["legend"]
    for name in ("cpu0", "cpu_avg", "loadavg", "memory_total_kib", "memory_free_kib",
                 "xapi_db_rows", "xapi_db_calls"):
        assert f"AVERAGE:host:{uuid}:{name}" in legend, legend
    total = legend.index(f"AVERAGE:host:{uuid}:memory_total_kib")
    assert any(row["values"][total] and row["values"][total] > 0 for row in doc["data"])
    times = [row["t"] for row in doc["data"]]
    assert times == sorted(times, reverse=True) and all(t % 5 == 0 for t in times)
    assert tree.call("xapi-rrd", "rrd.host_rrd").startswith('<?xml version="1.0"')
    with pytest.raises(Exception, match="INVALID_VALUE"):
        tree.call("xapi-rrd", "rrd.updates", {"start": "yesterday"})


@pytest.mark.timeout(240)
def test_kill_9_loses_at_most_one_flush_period(tree):
    uuid = host_uuid(tree)
    assert tree.call("xapi-rrd", "rrd.flush")["files"] >= 1
    archive = tree.paths.rrd_archive(uuid)
    assert archive.exists()
    flushed = tree.call("xapi-rrd", "rrd.updates", {"start": "-5", "host": "true",
                                                    "json": "true"})
    flushed_end = json.loads(flushed)["meta"]["end"]
    pid = tree.health("xapi-rrd")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _pid(tree) not in (None, pid), 60, "xapi-rrd back with a new pid")
    wait_until(lambda: tree.call("xapi-rrd", "sys.stats")["cycles"] >= 1, 60,
               "a monitoring cycle after the restart (start_monitor replayed)")
    doc = updates(tree, start=str(flushed_end - 30), host="true")
    times = {row["t"] for row in doc["data"]}
    assert flushed_end in times   # the row flushed before the kill is still there
    loadavg = doc["meta"]["legend"].index(f"AVERAGE:host:{uuid}:loadavg")
    row = next(r for r in doc["data"] if r["t"] == flushed_end)
    assert row["values"][loadavg] is not None


def _pid(tree):
    try:
        return tree.health("xapi-rrd", timeout_s=1.0)["pid"]
    except Exception:   # noqa: BLE001 - not answering yet
        return None
