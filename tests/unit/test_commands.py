"""The command record (daemons/init/commands.py) and the start-up record
(daemons/init/progress.py): semantics, persistence, corrupt files, resumption."""

import json

import pytest

from daemons.init import progress as pr
from daemons.init.commands import CommandLog
from daemons.init.progress import Progress
from daemons.init.steps import steps_for


@pytest.fixture
def commands_json(tmp_path):
    return tmp_path / "var" / "run" / "xapi" / "commands.json"


def methods(log, program):
    return [c["m"] for c in log.for_program(program)]


# -- CommandLog ------------------------------------------------------------------------------

def test_record_keeps_order_per_program(commands_json):
    log = CommandLog(commands_json).load()
    log.record("xapi-api", "api.set_boot_state", ["booting"])
    log.record("xapi-api", "api.listen", ["127.0.0.1", 80])
    log.record("xapi-db", "db.set_mode", ["master"], {"generation": 3})
    assert log.for_program("xapi-api") == [
        {"m": "api.set_boot_state", "a": ["booting"], "kw": {}},
        {"m": "api.listen", "a": ["127.0.0.1", 80], "kw": {}},
    ]
    assert log.for_program("xapi-db") == [
        {"m": "db.set_mode", "a": ["master"], "kw": {"generation": 3}}]
    assert log.for_program("xapi-ha") == []


def test_same_method_replaces_the_older_one_and_moves_last(commands_json):
    log = CommandLog(commands_json).load()
    log.record("xapi-api", "api.set_boot_state", ["booting"])
    log.record("xapi-api", "api.listen", ["unix"])
    log.record("xapi-api", "api.set_role", ["master"])
    log.record("xapi-api", "api.set_boot_state", ["ready"])
    assert methods(log, "xapi-api") == ["api.listen", "api.set_role", "api.set_boot_state"]
    assert log.for_program("xapi-api")[-1]["a"] == ["ready"]
    assert [c["a"] for c in log.for_program("xapi-api")
            if c["m"] == "api.set_boot_state"] == [["ready"]]


def test_same_method_on_another_program_is_independent(commands_json):
    log = CommandLog(commands_json).load()
    log.record("xapi-api", "sys.set_role", ["master"])
    log.record("xapi-db", "sys.set_role", ["master"])
    log.record("xapi-api", "sys.set_role", ["slave"])
    assert log.for_program("xapi-db") == [{"m": "sys.set_role", "a": ["master"], "kw": {}}]
    assert log.for_program("xapi-api") == [{"m": "sys.set_role", "a": ["slave"], "kw": {}}]


def test_for_program_is_a_copy(commands_json):
    log = CommandLog(commands_json).load()
    log.record("xapi-api", "api.listen", ["unix"])
    log.for_program("xapi-api").clear()
    assert methods(log, "xapi-api") == ["api.listen"]


def test_record_is_persisted_and_reloaded(commands_json):
    log = CommandLog(commands_json).load()
    log.record("xapi-api", "api.set_boot_state", ("booting",))
    log.record("xapi-api", "api.listen", ("127.0.0.1", 80), {"tls": False})
    log.record("xapi-api", "api.set_boot_state", ("ready",))
    assert commands_json.is_file()
    assert json.loads(commands_json.read_text()) == {"xapi-api": [
        {"m": "api.listen", "a": ["127.0.0.1", 80], "kw": {"tls": False}},
        {"m": "api.set_boot_state", "a": ["ready"], "kw": {}},
    ]}
    again = CommandLog(commands_json).load()
    assert again.by_program == log.by_program
    assert commands_json.stat().st_mode & 0o777 == 0o600


def test_clear_empties_the_file(commands_json):
    log = CommandLog(commands_json).load()
    log.record("xapi-api", "api.listen", ["unix"])
    log.clear()
    assert CommandLog(commands_json).load().by_program == {}


def test_missing_file_loads_as_empty(commands_json):
    assert CommandLog(commands_json).load().by_program == {}


@pytest.mark.parametrize("text", ["", "{", '{"xapi-api": [', "\x00\x00garbage", "not json"])
def test_corrupt_commands_json_loads_as_empty(commands_json, text):
    commands_json.parent.mkdir(parents=True)
    commands_json.write_text(text)
    log = CommandLog(commands_json).load()
    assert log.by_program == {}
    log.record("xapi-api", "api.listen", ["unix"])  # and it is usable
    assert CommandLog(commands_json).load().for_program("xapi-api") == [
        {"m": "api.listen", "a": ["unix"], "kw": {}}]


@pytest.mark.parametrize("text", ["null", "[]", '"text"', "42"])
def test_commands_json_of_the_wrong_shape_loads_as_empty(commands_json, text):
    commands_json.parent.mkdir(parents=True)
    commands_json.write_text(text)
    log = CommandLog(commands_json).load()
    assert log.by_program == {}
    log.record("xapi-api", "api.listen", ["unix"])
    assert log.for_program("xapi-api") == [{"m": "api.listen", "a": ["unix"], "kw": {}}]


def test_corrupt_utf8_commands_json_loads_as_empty(commands_json):
    commands_json.parent.mkdir(parents=True)
    commands_json.write_bytes(b'{"xapi-api": "\xff\xfe"}')
    assert CommandLog(commands_json).load().by_program == {}


# -- Progress --------------------------------------------------------------------------------

SUPERVISOR_PID = 4242


@pytest.fixture
def startup_json(tmp_path):
    return tmp_path / "startup.json"


@pytest.fixture
def run_master(startup_json):
    progress = Progress(startup_json)
    progress.new_run(steps_for("master"), "master", SUPERVISOR_PID, host_uuid="h-1")
    return progress


def test_new_run_records_every_step_waiting(run_master, startup_json):
    data = Progress.load(startup_json).data
    assert data["state"] == pr.RUN_STARTING
    assert data["role"] == "master" and data["supervisor_pid"] == SUPERVISOR_PID
    assert data["host_uuid"] == "h-1"
    steps = steps_for("master")
    assert [s["name"] for s in data["steps"]] == [s.name for s in steps]
    assert [s["pending"] for s in data["steps"]] == [s.pending for s in steps]
    assert {s["status"] for s in data["steps"]} == {pr.WAITING}


def test_mark_is_persisted(run_master, startup_json):
    run_master.mark(0, pr.OK, duration_s=0.25)
    run_master.mark(2, pr.FAILED, error=["STARTUP_STEP_FAILED", "x", "y"])
    loaded = Progress.load(startup_json)
    assert loaded.step(0)["status"] == pr.OK and loaded.step(0)["duration_s"] == 0.25
    assert loaded.step(1)["status"] == pr.WAITING
    assert loaded.step(2)["status"] == pr.FAILED
    assert loaded.step(2)["error"] == ["STARTUP_STEP_FAILED", "x", "y"]


def test_new_run_replaces_the_previous_record(run_master, startup_json):
    run_master.mark(0, pr.OK)
    again = Progress(startup_json)
    again.new_run(steps_for("slave"), "slave", SUPERVISOR_PID + 1)
    loaded = Progress.load(startup_json)
    assert loaded.data["role"] == "slave"
    assert loaded.step(0)["status"] == pr.WAITING
    assert len(loaded.data["steps"]) == len(steps_for("slave"))


@pytest.mark.parametrize("state", [pr.RUN_STARTING, pr.RUN_COMPLETE, pr.RUN_FAILED])
def test_can_resume_same_role_same_supervisor_resumable_state(run_master, startup_json, state):
    run_master.set_state(state)
    assert run_master.can_resume("master", SUPERVISOR_PID) is True
    assert Progress.load(startup_json).can_resume("master", SUPERVISOR_PID) is True


@pytest.mark.parametrize("state", [pr.RUN_STOPPED, pr.RUN_EMERGENCY, pr.RUN_RESTARTING])
def test_cannot_resume_from_a_final_state(run_master, startup_json, state):
    run_master.set_state(state)
    assert Progress.load(startup_json).can_resume("master", SUPERVISOR_PID) is False


def test_cannot_resume_under_another_supervisor(run_master, startup_json):
    assert Progress.load(startup_json).can_resume("master", SUPERVISOR_PID + 1) is False


@pytest.mark.parametrize("role", ["slave", "broken"])
def test_cannot_resume_in_another_role(run_master, startup_json, role):
    assert Progress.load(startup_json).can_resume(role, SUPERVISOR_PID) is False


def test_cannot_resume_a_run_without_steps(startup_json):
    progress = Progress(startup_json)
    progress.new_run([], "master", SUPERVISOR_PID)
    assert Progress.load(startup_json).can_resume("master", SUPERVISOR_PID) is False


@pytest.mark.parametrize("text", [None, "", "{", "garbage"])
def test_missing_or_corrupt_startup_json_cannot_resume(startup_json, text):
    if text is not None:
        startup_json.write_text(text)
    progress = Progress.load(startup_json)
    assert progress.data == {}
    assert progress.can_resume("master", SUPERVISOR_PID) is False


@pytest.mark.parametrize("text", ["null", "[]", '"text"'])
def test_startup_json_of_the_wrong_shape_cannot_resume(startup_json, text):
    startup_json.write_text(text)
    progress = Progress.load(startup_json)
    assert progress.can_resume("master", SUPERVISOR_PID) is False
