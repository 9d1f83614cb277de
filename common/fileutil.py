"""Atomic file writes: temp file, fsync, rename, fsync of the directory."""

import itertools
import os
from pathlib import Path

# Temp names are made here rather than by tempfile (whose import, with shutil's, costs a daemon
# several milliseconds of start-up): pid plus a counter, created with O_EXCL.
_TEMP_SERIAL = itertools.count()


def create_temp_beside(path):
    """A new empty file beside ``path``, open for reading and writing, mode 0600: (fd, its
    path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TEMP_SERIAL)}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:   # left by a crashed process that had our pid
            continue


def atomic_write(path, data, mode=0o644, durable=True):
    """Replace ``path`` with ``data`` (str or bytes) so a reader sees the old or the new file,
    never a half-written one, even across a crash.

    ``durable=False`` leaves out the two fsyncs, for the run-time records under var/run (tmpfs
    on a host, emptied at boot): the rename still shows readers, and a restarted process, a
    whole file; only a power loss could lose the newest copy, and a boot forgets them anyway."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_beside(path)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def touch(path):
    """Create ``path`` if missing, else update its mtime (the cookies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a"):
        pass
    os.utime(path)
