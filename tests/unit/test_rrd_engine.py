"""The RRD engine against values computed by hand, and against Debian's rrdtool fed the same
updates (random series with gaps, unknowns, heartbeat misses and counter resets)."""

import math
import random
import shutil
import subprocess
from xml.etree import ElementTree

import pytest

from daemons.rrd.engine import (ABSOLUTE, AVERAGE, DERIVE, GAUGE, LAST, MAX, MIN, DataSource,
                                Rrd, RrdError, archive_specs)

T0 = 1_699_999_980   # a multiple of 5 and of 60


def nan(x):
    return isinstance(x, float) and math.isnan(x)


def rows(rrd, cf, pdp_cnt, ds=0):
    """{row time: value of data source ``ds``} of the archive (cf, pdp_cnt)."""
    a = next(a for a in rrd.archives if a.cf == cf and a.pdp_cnt == pdp_cnt)
    return {t: row[ds] for t, row in rrd.archive_rows(a)}


def gauge_rrd(xff=0.5, heartbeat=300):
    return Rrd(T0, 5, [DataSource("g", GAUGE, heartbeat)],
               [(AVERAGE, 1, 120, xff), (AVERAGE, 12, 10, xff), (MIN, 12, 10, xff),
                (MAX, 12, 10, xff), (LAST, 12, 10, xff)])


def test_xapi_archives():
    host = archive_specs()
    assert [(cf, p, r) for cf, p, r, _ in host[:4]] == [
        (AVERAGE, 1, 120), (AVERAGE, 12, 120), (MIN, 12, 120), (MAX, 12, 120)]
    assert {(p, r) for _, p, r, _ in host} == {(1, 120), (12, 120), (720, 168), (17280, 366)}
    assert len(host) == 10 and {x for *_, x in host} == {1.0}
    vm = Rrd.create(T0, cfs=(AVERAGE,), xff=0.5)
    assert [(a.cf, a.pdp_cnt, a.rows, a.xff) for a in vm.archives] == [
        (AVERAGE, 1, 120, 0.5), (AVERAGE, 12, 120, 0.5), (AVERAGE, 720, 168, 0.5),
        (AVERAGE, 17280, 366, 0.5)]


def test_gauge_consolidation_by_hand():
    rrd = gauge_rrd()
    for n in range(1, 25):   # 1..24 at each 5 s boundary: two whole minutes
        rrd.update(T0 + 5 * n, {"g": float(n)})
    five = rows(rrd, AVERAGE, 1)
    assert [five[T0 + 5 * n] for n in range(1, 25)] == [float(n) for n in range(1, 25)]
    # the minute ending at T0+60 holds 1..12, the next 13..24
    assert rows(rrd, AVERAGE, 12)[T0 + 60] == sum(range(1, 13)) / 12 == 6.5
    assert rows(rrd, AVERAGE, 12)[T0 + 120] == sum(range(13, 25)) / 12 == 18.5
    assert rows(rrd, MIN, 12)[T0 + 120] == 13.0
    assert rows(rrd, MAX, 12)[T0 + 120] == 24.0
    assert rows(rrd, LAST, 12)[T0 + 120] == 24.0


def test_gauge_between_boundaries_is_time_weighted():
    rrd = gauge_rrd()
    rrd.update(T0 + 2, {"g": 10.0})    # 10 over (0, 2]
    rrd.update(T0 + 5, {"g": 40.0})    # 40 over (2, 5]
    assert rows(rrd, AVERAGE, 1)[T0 + 5] == (10 * 2 + 40 * 3) / 5 == 28.0


def test_derive_counter_reset_is_unknown_then_recovers():
    rrd = Rrd(T0, 5, [DataSource("d", DERIVE, 300, 0, None)], [(AVERAGE, 1, 20, 0.5)])
    for n, counter in enumerate([100, 150, 250, 20, 70, 120], start=1):
        rrd.update(T0 + 5 * n, {"d": counter})
    r = rows(rrd, AVERAGE, 1)
    assert nan(r[T0 + 5])                          # no previous value
    assert (r[T0 + 10], r[T0 + 15]) == (10.0, 20.0)
    assert nan(r[T0 + 20])                         # 250 -> 20: a reset, negative rate < min 0
    assert (r[T0 + 25], r[T0 + 30]) == (10.0, 10.0)


def test_derive_without_min_keeps_the_negative_rate_as_rrdtool():
    rrd = Rrd(T0, 5, [DataSource("d", DERIVE)], [(AVERAGE, 1, 20, 0.5)])
    for n, counter in enumerate([100, 50], start=1):
        rrd.update(T0 + 5 * n, {"d": counter})
    assert rows(rrd, AVERAGE, 1)[T0 + 10] == -10.0


def test_absolute_and_max():
    rrd = Rrd(T0, 5, [DataSource("a", ABSOLUTE, 300, None, 3)], [(AVERAGE, 1, 20, 0.5)])
    rrd.update(T0 + 5, {"a": 10})    # 2/s
    rrd.update(T0 + 10, {"a": 20})   # 4/s > max 3: unknown
    r = rows(rrd, AVERAGE, 1)
    assert r[T0 + 5] == 2.0 and nan(r[T0 + 10])


def test_heartbeat_missed_makes_the_gap_unknown():
    rrd = gauge_rrd(heartbeat=300)
    rrd.update(T0 + 5, {"g": 1.0})
    rrd.update(T0 + 5 + 305, {"g": 2.0})   # 305 s > heartbeat 300
    r = rows(rrd, AVERAGE, 1)
    assert r[T0 + 5] == 1.0
    assert all(nan(r[T0 + 5 + 5 * k]) for k in range(1, 61))
    rrd.update(T0 + 315, {"g": 3.0})
    assert rows(rrd, AVERAGE, 1)[T0 + 315] == 3.0


@pytest.mark.parametrize("xff, unknown, expected", [
    (0.5, 6, sum(range(7, 13)) / 6),   # 6 of 12 unknown: not more than 0.5 * 12, known
    (0.5, 7, math.nan),                # 7 of 12: more than half, unknown
    (1.0, 11, 12.0),                   # the host's xff 1.0: one known PDP is enough
    (1.0, 12, math.nan),               # none known: unknown (never an infinite MIN/MAX)
])
def test_unknown_points_and_xff(xff, unknown, expected):
    rrd = gauge_rrd(xff=xff)
    for n in range(1, 13):
        rrd.update(T0 + 5 * n, {"g": None if n <= unknown else float(n)})
    for cf in (AVERAGE, MIN, MAX):
        got = rows(rrd, cf, 12)[T0 + 60]
        if math.isnan(expected):
            assert nan(got), (cf, got)
    got = rows(rrd, AVERAGE, 12)[T0 + 60]
    assert nan(got) if math.isnan(expected) else got == pytest.approx(expected)


def test_new_data_source_has_unknown_history():
    rrd = gauge_rrd()
    rrd.update(T0 + 5, {"g": 1.0})
    rrd.add_source(DataSource("h", GAUGE))
    rrd.update(T0 + 10, {"g": 2.0, "h": 5.0})
    a = rrd.archives[0]
    assert a.data[a.cur_row] == [2.0, 5.0]
    assert nan(dict(rrd.archive_rows(a))[T0 + 5][1])


def test_bad_updates_are_refused_with_the_reason():
    rrd = gauge_rrd()
    rrd.update(T0 + 5, {"g": 1.0})
    with pytest.raises(RrdError, match="not after the last update"):
        rrd.update(T0 + 5, {"g": 1.0})
    with pytest.raises(RrdError, match="no data source 'x'"):
        rrd.update(T0 + 10, {"x": 1.0})
    with pytest.raises(RrdError, match="type"):
        DataSource("x", "COUNTERISH")
    with pytest.raises(RrdError, match="1 to 64 characters"):
        DataSource("a" * 65)
    assert DataSource("memory_internal_free").name == "memory_internal_free"   # xcp-rrdd's


def rrdtool():
    path = shutil.which("rrdtool")
    assert path, "Debian's rrdtool is needed (apt-get install rrdtool; .ci/run installs it)"
    return path


SPECS = [(AVERAGE, 1, 20, 0.5), (AVERAGE, 3, 20, 0.5), (MIN, 3, 20, 0.5), (MAX, 3, 20, 0.5),
         (LAST, 3, 20, 0.5), (AVERAGE, 7, 10, 0.3), (MAX, 7, 10, 0.0)]


def random_updates(seed, count=300):
    """(t, g, d, a) with gaps of 1 s to 150 s (heartbeat 30), unknowns and counter resets.
    Gaps stay shorter than the 3-PDP archives' ring: past a whole ring, which rows rrdtool 1.7
    keeps is not matched here."""
    rnd, t, counter, out = random.Random(seed), T0 + 3, 0, []
    for _ in range(count):
        t += rnd.choice([1, 2, 3, 4, 5, 5, 5, 6, 7, 9, 11, 17, 25, 40, 150])
        counter = counter + rnd.randint(0, 50) if rnd.random() > 0.05 else rnd.randint(0, 10)
        out.append((t, None if rnd.random() < 0.1 else rnd.uniform(-5, 110),
                    None if rnd.random() < 0.05 else counter,
                    None if rnd.random() < 0.1 else rnd.uniform(0, 100)))
    return out


def engine_for_specs():
    return Rrd(T0 + 3, 5, [DataSource("g", GAUGE, 30, 0, 100), DataSource("d", DERIVE, 30, 0),
                           DataSource("a", ABSOLUTE, 30)], SPECS)


def rrdtool_rows(tmp_path, updates):
    f = str(tmp_path / "x.rrd")
    subprocess.run([rrdtool(), "create", f, "--start", str(T0 + 3), "--step", "5",
                    "DS:g:GAUGE:30:0:100", "DS:d:DERIVE:30:0:U", "DS:a:ABSOLUTE:30:U:U"]
                   + [f"RRA:{cf}:{x}:{p}:{r}" for cf, p, r, x in SPECS], check=True)
    s = (lambda v: "U" if v is None else repr(v))
    lines = [f"{t}:{s(g)}:{s(d)}:{s(a)}" for t, g, d, a in updates]
    for i in range(0, len(lines), 100):
        subprocess.run([rrdtool(), "update", f, "--"] + lines[i:i + 100], check=True)
    xml = subprocess.run([rrdtool(), "dump", f], capture_output=True, text=True,
                         check=True).stdout
    root = ElementTree.fromstring(xml)
    return int(root.find("lastupdate").text), [
        [[float(v.text) for v in row.iter("v")] for row in rra.iter("row")]
        for rra in root.findall("rra")]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 11])
def test_same_rows_as_rrdtool(tmp_path, seed):
    updates = random_updates(seed)
    rrd = engine_for_specs()
    for t, g, d, a in updates:
        rrd.update(t, {"g": g, "d": d, "a": a})
    last, theirs = rrdtool_rows(tmp_path, updates)
    assert last == rrd.last_update
    for a, their_rows in zip(rrd.archives, theirs):
        ours = a.rows_oldest_first()
        assert len(ours) == len(their_rows)
        for r, (x, y) in enumerate(zip(their_rows, ours)):
            for u, w in zip(x, y):
                assert math.isnan(u) == math.isnan(w) and (
                    math.isnan(u) or w == pytest.approx(u, rel=1e-9, abs=1e-9)), \
                    (a.cf, a.pdp_cnt, r, x, y)
