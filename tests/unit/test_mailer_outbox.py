"""xapi-mailer's outbox, repeat folding and state file: durable entries, shedding the oldest
of the lowest priority, corrupt files set aside, fold decisions."""

import json
import logging

import pytest

from common.errors import ConfigError
from daemons.mailer.fold import FOLD_INTO, FOLD_NEW, MAIL, RepeatFolder
from daemons.mailer.outbox import Outbox
from daemons.mailer.state import MailerState, message_generation

log = logging.getLogger("test")


def make(priority, generation, kind="mail", due=0.0):
    return {"seq": None, "kind": kind, "due": due, "queued_at": 0.0, "generation": generation,
            "to": ["ops@example.com"],
            "message": {"ref": "r", "uuid": f"u{generation}", "name": "N", "priority": priority,
                        "cls": "Host", "obj_uuid": "o", "timestamp": "20250101T00:00:00Z",
                        "body": "b"}}


def test_write_load_round_trip_and_remove(tmp_path):
    box = Outbox(tmp_path / "mailer", 10, log)
    entries = [make(1, 1), make(2, 2)]
    for e in entries:
        assert box.stage(e) == []
    box.write(entries)
    box.commit()
    again = Outbox(tmp_path / "mailer", 10, log)
    assert again.load() == 2
    assert [e["message"]["uuid"] for e in again.entries.values()] == ["u1", "u2"]
    assert again.next_seq == 3 and again.max_generation == 2
    again.remove(1)
    third = Outbox(tmp_path / "mailer", 10, log)
    assert third.load() == 1 and list(third.entries) == [2]


def test_unfinished_and_corrupt_files(tmp_path, caplog):
    d = tmp_path / "mailer"
    d.mkdir()
    (d / ".000000000001.json.123.0.tmp").write_text("half")
    (d / "000000000001.json").write_text("{not json")
    (d / "000000000002.json").write_text(json.dumps({"seq": 3, "kind": "mail"}))
    box = Outbox(d, 10, log)
    with caplog.at_level(logging.ERROR):
        assert box.load() == 0
    assert box.corrupt == 2
    assert sorted(p.name for p in (d / "corrupt").iterdir()) == ["000000000001.json",
                                                                  "000000000002.json"]
    assert not list(d.glob("*.tmp"))
    assert "000000000002.json is not a valid entry (missing due" in caplog.text


def test_shedding_oldest_of_lowest_priority_first_and_never_silently(tmp_path, caplog):
    box = Outbox(tmp_path, 3, log)
    first = [make(5, 1), make(1, 2), make(5, 3)]
    for e in first:
        box.stage(e)
    box.commit()
    with caplog.at_level(logging.WARNING):
        shed = box.stage(make(3, 4))
    assert [(v["message"]["uuid"], committed) for v, committed in shed] == [("u1", True)]
    assert box.shed == 1 and "shed the mail entry 1 of message u1" in caplog.text
    # the in-flight entry is never shed; a new entry of the lowest priority may be
    box.commit()
    box.in_flight = {3}
    shed = box.stage(make(4, 5))
    assert [v["message"]["uuid"] for v, _ in shed] == ["u5"]
    assert sorted(e["message"]["uuid"] for e in box.entries.values()) == ["u2", "u3", "u4"]


def test_next_ready_honours_due_and_skip(tmp_path):
    box = Outbox(tmp_path, 10, log)
    for e in (make(1, 1, kind="fold", due=100.0), make(1, 2, due=0.0)):
        box.stage(e)
    box.commit()
    entry, _ = box.next_ready(50.0)
    assert entry["seq"] == 2
    entry, wait = box.next_ready(50.0, skip={2})
    assert entry is None and wait == 50.0
    entry, _ = box.next_ready(100.0)
    assert entry["seq"] == 1


def test_fold_decisions():
    folder = RepeatFolder()
    key = ("N", "Host", "o")
    assert folder.decide(key, 0.0, 60.0, now=0.0) == (MAIL, None)
    decision, due = folder.decide(key, 1.0, 60.0, now=1.0)
    assert (decision, due) == (FOLD_NEW, 60.0)
    fold = {"due": due}
    folder.opened(key, fold)
    assert folder.decide(key, 2.0, 60.0, now=2.0) == (FOLD_INTO, fold)
    # once due (or picked for delivery) it collects no more; the next repeat opens the next
    assert folder.decide(key, 61.0, 60.0, now=61.0) == (FOLD_NEW, 120.0)
    folder.closed(key, fold)
    # quiet for a period after the last e-mail: the next one goes at once
    assert folder.decide(key, 500.0, 60.0, now=500.0) == (MAIL, None)
    assert folder.decide(("M", "Host", "o"), 500.5, 60.0, now=500.5) == (MAIL, None)
    assert folder.decide(key, 501.0, 0.0, now=501.0) == (MAIL, None)   # period 0: no folding
    folder.prune(now=10_000.0, period=60.0)
    assert folder.windows() == {}


def test_fold_adopt_extends_the_window():
    folder = RepeatFolder({("N", "Host", "o"): 10.0})
    fold = {"due": 70.0}
    folder.adopt(("N", "Host", "o"), fold)
    assert folder.decide(("N", "Host", "o"), 20.0, 60.0, now=20.0) == (FOLD_INTO, fold)


def test_state_round_trip_and_bad_file(tmp_path):
    state = MailerState(tmp_path / "mailer.state")
    assert state.load() is False
    state.token, state.generation = "%020d,%020d" % (5, 7), 7
    state.windows = {("N", "Host", "o"): 12.5}
    state.save()
    again = MailerState(tmp_path / "mailer.state")
    assert again.load() is True
    assert (again.token, again.generation, again.windows) == (state.token, 7,
                                                              {("N", "Host", "o"): 12.5})
    (tmp_path / "mailer.state").write_text('{"version": 1, "token": 3}')
    with pytest.raises(ConfigError, match="mailer.state: not a valid mailer state"):
        MailerState(tmp_path / "mailer.state").load()
    assert message_generation("00000000000000000005,00000000000000000009") == 9
    with pytest.raises(ValueError):
        message_generation("12")
