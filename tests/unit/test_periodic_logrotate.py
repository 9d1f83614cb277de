"""Log rotation (daemons/periodic/logrotate.py): files past their size renamed, N old copies
kept, and a WatchedFileHandler writing on into a new file."""

import logging
import logging.handlers

import pytest

from daemons.periodic.logrotate import rotate_logs


def write(path, size, char="x"):
    path.write_text(char * size)


def test_only_logs_past_their_size_are_rotated(tmp_path):
    write(tmp_path / "big.log", 101)
    write(tmp_path / "small.log", 100)
    write(tmp_path / "big.err", 1000)                 # supervisord's: not ours
    assert rotate_logs(tmp_path, 100, 3) == ["big.log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.err", "big.log.1", "small.log"]
    assert rotate_logs(tmp_path, 100, 3) == []


def test_old_copies_shift_and_only_keep_are_kept(tmp_path):
    log = tmp_path / "a.log"
    for generation in "12345":
        write(log, 50, generation)
        rotate_logs(tmp_path, 10, 3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.log.1", "a.log.2", "a.log.3"]
    assert [(tmp_path / f"a.log.{n}").read_text()[0] for n in (1, 2, 3)] == ["5", "4", "3"]


def test_lowering_keep_removes_the_copies_beyond_it(tmp_path):
    for n in range(1, 6):
        write(tmp_path / f"a.log.{n}", 5)
    write(tmp_path / "a.log.old", 5)                  # not a numbered copy: left alone
    write(tmp_path / "a.log", 50)
    rotate_logs(tmp_path, 10, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log.1", "a.log.2", "a.log.old"]


def test_keep_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        rotate_logs(tmp_path, 10, 0)


def test_a_watched_file_handler_reopens_after_the_rename(tmp_path):
    path = tmp_path / "xapi-db.log"
    handler = logging.handlers.WatchedFileHandler(path)
    logger = logging.getLogger("test-periodic-logrotate")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("before %s", "x" * 200)
        assert rotate_logs(tmp_path, 100, 2) == ["xapi-db.log"]
        logger.warning("after the rotation")
        handler.flush()
        assert "before" in (tmp_path / "xapi-db.log.1").read_text()
        assert path.read_text() == "after the rotation\n"
    finally:
        logger.removeHandler(handler)
        handler.close()
