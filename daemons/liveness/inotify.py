"""inotify(7) through ctypes: the kernel says when a file of a directory is replaced, so
xapi-liveness waits for the simulated hypervisor's changes without polling (the standard library
has no inotify, and one small wrapper is lighter than a dependency)."""

import ctypes
import errno
import os
import struct

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
# the watch itself is gone (its directory removed or moved) or events were lost
IN_LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW | IN_IGNORED

_EVENT = struct.Struct("iIII")     # struct inotify_event: wd, mask, cookie, len (then the name)
_READ_BYTES = 64 * 1024

_libc = None


def _lib():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)   # the C library the interpreter runs on
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = libc
    return _libc


def _check(result, what, path=None):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", *([str(path)] if path else []))
    return result


class Inotify:
    """One non-blocking, close-on-exec inotify descriptor: ``fileno()`` for the event loop's
    add_reader, ``add_watch`` per directory, ``read()`` for the events that are ready."""

    def __init__(self):
        self._fd = _check(_lib().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")

    def fileno(self):
        return self._fd

    def add_watch(self, path, mask):
        """Watch ``path`` for ``mask``; returns the watch descriptor (OSError naming the path,
        e.g. ENOENT when it does not exist)."""
        return _check(_lib().inotify_add_watch(self._fd, os.fsencode(path), mask),
                      "inotify_add_watch", path)

    def read(self):
        """The events ready now, as [(wd, mask, name)]; [] when there are none."""
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return []
            raise
        events, offset = [], 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = data[offset:offset + length].rstrip(b"\0").decode(errors="replace")
            offset += length
            events.append((wd, mask, name))
        return events

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
