"""periodic.db (daemons/periodic/store.py): jobs and their deadlines survive a restart; a file
that cannot be used is renamed aside with a log line naming the fault."""

import json
import logging
import os
import stat

import pytest

from daemons.periodic.schedule import Schedule, check_spec
from daemons.periodic.store import Store, decode, encode


def make_schedule():
    sched = Schedule()
    job, _ = sched.register(check_spec("flush", "periodic", 300, 300, "xapi-db", "db.flush_now"),
                            now=1000.0)
    job.index, job.runs, job.failures, job.skipped = 7, 7, 2, 1
    job.last_run, job.last_duration_s, job.last_error = 3100.0, 0.25, "RPC_TIMEOUT: x"
    job.last_lateness_s, job.max_lateness_s = 0.01, 0.5
    once, _ = sched.register(check_spec("once", "oneshot", 5, None, "xapi-periodic",
                                        "periodic.heartbeat", args=["a", {"b": 1}],
                                        timeout_s=3, origin="startup"), now=1000.0)
    once.done = True
    return sched


def test_round_trip_keeps_registrations_deadlines_and_counters(tmp_path):
    sched = make_schedule()
    store = Store(tmp_path / "periodic.db")
    store.save(encode(sched.jobs.values()))
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["periodic.db"]   # no temp file left
    again = Schedule()
    for spec, state in store.load():
        again.restore(spec, state)
    for name, job in sched.jobs.items():
        copy = again.jobs[name]
        assert copy.spec() == job.spec() and copy.state() == job.state()
        assert copy.running is False
    assert again.jobs["flush"].next_deadline() == 1300.0 + 7 * 300.0


def test_no_file_is_no_jobs(tmp_path):
    assert Store(tmp_path / "periodic.db").load() == []


def good_text():
    return encode(make_schedule().jobs.values())


def corrupt(mutate):
    data = json.loads(good_text())
    mutate(data)
    return json.dumps(data)


@pytest.mark.parametrize("text, fault", [
    ("{not json", "not JSON"),
    (json.dumps({"format": "other"}), "key 'format'"),
    (corrupt(lambda d: d.update(version=9)), "key 'version'"),
    (corrupt(lambda d: d.update(jobs={})), "key 'jobs'"),
    (corrupt(lambda d: d["jobs"][0].pop("state")), "job 1: expected the keys spec and state"),
    (corrupt(lambda d: d["jobs"][0]["spec"].pop("kind")), "job 1: 'spec' must have"),
    (corrupt(lambda d: d["jobs"][0]["spec"].update(period=-3)),
     "job 1 ('flush'): INVALID_VALUE: period"),
    (corrupt(lambda d: d["jobs"][1]["state"].update(index=-1)),
     "job 2 ('once'): key 'state.index'"),
    (corrupt(lambda d: d["jobs"][1]["state"].update(done="yes")), "key 'state.done'"),
    (corrupt(lambda d: d["jobs"].append(d["jobs"][0])), "a second job of that name"),
])
def test_a_corrupt_file_is_renamed_aside_with_a_log_line(tmp_path, caplog, text, fault):
    path = tmp_path / "periodic.db"
    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="xapi-periodic"):
        assert Store(path).load() == []
    assert not path.exists()
    [aside] = list(tmp_path.iterdir())
    assert aside.name.startswith("periodic.db.corrupt-")
    assert aside.read_text() == text                      # nothing lost
    [record] = caplog.records
    assert str(path) in record.getMessage() and fault in record.getMessage()
    assert aside.name in record.getMessage()


def test_decode_gives_checked_specs():
    [(flush_spec, flush_state), (once_spec, _)] = decode(good_text())
    assert flush_spec["period"] == 300.0 and flush_state["index"] == 7
    assert once_spec["args"] == ["a", {"b": 1}] and once_spec["origin"] == "startup"
