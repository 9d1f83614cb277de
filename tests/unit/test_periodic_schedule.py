"""The scheduler's pure core (daemons/periodic/schedule.py): registrations checked, fixed-rate
deadlines, coalescing, skipping while running, clock jumps. Times are plain numbers."""

import pytest

from common.errors import XapiError
from daemons.periodic.schedule import Schedule, check_spec


def spec(name="j", kind="periodic", delay=10.0, period=10.0, target="xapi-db",
         method="db.flush_now", args=None, timeout_s=None, origin="operator"):
    return check_spec(name, kind, delay, period, target, method, args, timeout_s, origin)


# -- registrations ---------------------------------------------------------------------------

@pytest.mark.parametrize("key, kwargs, why", [
    ("name", {"name": ""}, "printable name"),
    ("name", {"name": " x"}, "surrounding spaces"),
    ("name", {"name": "a\nb"}, "printable"),
    ("kind", {"kind": "daily"}, "oneshot, periodic"),
    ("delay", {"delay": -1}, "at least 0"),
    ("delay", {"delay": float("nan")}, "finite"),
    ("delay", {"delay": "5"}, "finite number"),
    ("period", {"period": 0}, "at least 0.05"),
    ("period", {"period": None}, "finite number"),
    ("period", {"kind": "oneshot", "period": 5}, "no period"),
    ("target", {"target": "xapi-nope"}, "xapi-db"),
    ("method", {"method": ""}, "method name"),
    ("method", {"method": "db flush"}, "method name"),
    ("args", {"args": "x"}, "list"),
    ("args", {"args": [object()]}, "plain values"),
    ("args", {"args": [float("inf")]}, "plain values"),
    ("timeout_s", {"timeout_s": 0}, "at least"),
    ("origin", {"origin": "x"}, "operator"),
])
def test_a_bad_registration_names_the_key_and_what_was_expected(key, kwargs, why):
    with pytest.raises(XapiError) as err:
        spec(**kwargs)
    assert err.value.code == "INVALID_VALUE"
    assert err.value.params[0] == key
    assert why in err.value.params[2]


def test_a_good_registration_is_normalised():
    s = spec(delay=1, period=2, args=("a", 1), kind="periodic")
    assert s["delay"] == 1.0 and isinstance(s["delay"], float)
    assert s["args"] == ["a", 1]
    one = spec(kind="oneshot", period=0)
    assert one["period"] is None


def test_registration_is_idempotent_and_a_change_replaces():
    sched = Schedule()
    job, outcome = sched.register(spec(), now=100.0)
    assert outcome == "new" and job.anchor == 110.0
    job.runs = 3
    again, outcome = sched.register(spec(), now=105.0)
    assert outcome == "unchanged" and again is job and job.anchor == 110.0 and job.runs == 3
    other, outcome = sched.register(spec(period=20.0), now=105.0)
    assert outcome == "replaced" and other is not job and other.runs == 0
    assert sched.jobs["j"] is other


# -- deadlines -------------------------------------------------------------------------------

def run_at(sched, now, duration=0.0):
    """Start what is due at ``now`` and finish each run ``duration`` later; the starts."""
    starts = sched.due(now)
    for s in starts:
        sched.finished(s.job, now, now + duration, None)
    return starts


def test_no_drift_over_1000_periods_even_when_every_wake_is_late():
    sched = Schedule()
    job, _ = sched.register(spec(delay=5.0, period=10.0), now=0.0)
    starts = []
    for k in range(1000):
        deadline = 5.0 + 10.0 * k
        late = (k * 7919 % 13) / 10.0            # 0 .. 1.2 s late, irregularly
        got = run_at(sched, deadline + late, duration=2.0)
        assert [s.deadline for s in got] == [deadline]
        starts.append(got[0])
        assert got[0].lateness_s == pytest.approx(late)
    # The 1000th deadline is exactly where the grid says: lateness never accumulated.
    assert job.next_deadline() == pytest.approx(5.0 + 10.0 * 1000, abs=1e-6)
    assert job.runs == 1000 and job.skipped == 0
    assert max(s.lateness_s for s in starts) <= 1.2 + 1e-9


def test_nothing_is_due_before_the_deadline():
    sched = Schedule()
    sched.register(spec(delay=5.0), now=0.0)
    assert sched.due(4.999) == []
    assert sched.next_wakeup() == 5.0
    assert len(sched.due(5.0)) == 1


def test_missed_deadlines_are_coalesced_into_one_run():
    sched = Schedule()
    job, _ = sched.register(spec(delay=10.0, period=10.0), now=0.0)
    run_at(sched, 10.0)
    # The loop was stalled (or the scheduler down) for 5 deadlines: 20, 30, 40, 50, 60.
    got = run_at(sched, 65.0)
    assert len(got) == 1 and got[0].deadline == 20.0 and got[0].lateness_s == 45.0
    assert job.skipped == 4
    assert job.next_deadline() == 70.0       # back on the grid, not 75
    assert run_at(sched, 69.9) == []
    assert len(run_at(sched, 70.0)) == 1


def test_a_job_still_running_is_not_started_again():
    sched = Schedule()
    job, _ = sched.register(spec(delay=0.0, period=10.0), now=0.0)
    first = sched.due(0.0)
    assert len(first) == 1 and job.running
    assert sched.due(10.0) == [] and sched.due(20.5) == []
    assert job.skipped == 2
    sched.finished(job, 0.0, 25.0, None)
    assert job.next_deadline() == 30.0 and job.last_duration_s == 25.0
    assert len(sched.due(30.0)) == 1


def test_a_slow_job_does_not_delay_another():
    sched = Schedule()
    slow, _ = sched.register(spec("slow", delay=0.0, period=100.0), now=0.0)
    fast, _ = sched.register(spec("fast", delay=0.0, period=1.0), now=0.0)
    assert {s.job.name for s in sched.due(0.0)} == {"slow", "fast"}
    sched.finished(fast, 0.0, 0.1, None)
    for t in range(1, 50):
        got = sched.due(float(t))
        assert [s.job.name for s in got] == ["fast"] and got[0].lateness_s == 0.0
        sched.finished(fast, t, t + 0.1, None)
    assert slow.running and fast.runs == 50 and fast.max_lateness_s == 0.0


def test_a_failure_is_counted_and_the_job_tried_again_at_its_next_deadline():
    sched = Schedule()
    job, _ = sched.register(spec(delay=0.0, period=10.0), now=0.0)
    [start] = sched.due(0.0)
    sched.finished(job, 0.0, 2.0, "RPC_TIMEOUT: ipc://x/xapi-db.rpc db.flush_now 2")
    assert job.failures == 1 and job.runs == 1 and job.last_error.startswith("RPC_TIMEOUT")
    assert job.next_deadline() == 10.0
    [start] = sched.due(10.0)
    sched.finished(job, 10.0, 10.1, None)
    assert job.failures == 1 and job.runs == 2 and job.last_error is None


def test_a_oneshot_runs_once_then_is_done():
    sched = Schedule()
    job, _ = sched.register(spec(kind="oneshot", delay=3.0, period=None), now=0.0)
    assert sched.due(2.0) == []
    [start] = sched.due(3.5)
    assert sched.due(4.0) == []             # running: not started twice
    sched.finished(job, 3.5, 4.0, None)
    assert job.done and job.next_deadline() is None and sched.next_wakeup() is None
    assert sched.due(1000.0) == []


def test_deregister_during_a_run_drops_its_result():
    sched = Schedule()
    job, _ = sched.register(spec(delay=0.0), now=0.0)
    [start] = sched.due(0.0)
    assert sched.deregister("j") is job
    new, outcome = sched.register(spec(delay=0.0), now=1.0)
    assert outcome == "new"
    assert sched.finished(job, 0.0, 2.0, "boom") is False
    assert new.runs == 0 and new.failures == 0 and new.last_error is None
    assert sched.deregister("nope") is None


def test_run_now_keeps_the_grid_and_refuses_a_running_job():
    sched = Schedule()
    job, _ = sched.register(spec(delay=10.0, period=10.0), now=0.0)
    assert sched.start_now("j", 3.0) is job
    with pytest.raises(XapiError) as err:
        sched.start_now("j", 3.5)
    assert err.value.code == "PERIODIC_JOB_RUNNING"
    sched.finished(job, 3.0, 4.0, None)
    assert job.next_deadline() == 10.0 and job.runs == 1
    with pytest.raises(XapiError) as err:
        sched.start_now("nope", 5.0)
    assert err.value.code == "PERIODIC_JOB_UNKNOWN" and "j" in err.value.params[1]


def test_a_clock_that_went_back_pulls_the_deadline_back():
    sched = Schedule()
    job, _ = sched.register(spec(delay=10.0, period=10.0), now=1000.0)
    run_at(sched, 1010.0)
    assert job.next_deadline() == 1020.0
    # The wall clock is set back an hour: the next run is one period from now, not an hour.
    assert sched.due(-2600.0 + 1015.0) == []
    assert job.next_deadline() == pytest.approx(-2600.0 + 1015.0 + 10.0)
    assert len(run_at(sched, -2600.0 + 1025.0)) == 1
