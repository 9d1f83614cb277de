"""Readiness handshakes (sd_notify): the sender every daemon uses, the receiver in xapi-init
(which checks the sender's pid from SO_PASSCRED), and the watchdog pinger."""

import asyncio
import logging
import os
import socket
import struct

import sdnotify

log = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 4096
_UCRED = struct.Struct("iII")  # pid, uid, gid


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET, each tagged with the program's name.
    Without NOTIFY_SOCKET (a daemon started by hand) every send is a no-op."""

    def __init__(self, program):
        self.program = program
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = None

    def send(self, **fields):
        """Send one message; a receiver that was restarted (a new socket at the same path) is
        reconnected to, and a receiver that is not there loses the message, like sd_notify."""
        if not self.enabled:
            return False
        message = encode_notification(self.program, fields)
        for _attempt in range(2):
            try:
                if self._notifier is None:
                    self._notifier = sdnotify.SystemdNotifier(debug=True)
                # sdnotify finds and connects the socket; the bytes are UTF-8 (its own
                # notify() encodes latin-1, which garbles or refuses other text).
                self._notifier.socket.sendall(message)
                return True
            except OSError:
                if self._notifier is not None and self._notifier.socket is not None:
                    self._notifier.socket.close()
                self._notifier = None
        return False

    def ready(self, status="serving"):
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, text):
        self.send(STATUS=text)

    def stopping(self):
        self.send(STOPPING=1, STATUS="stopping")

    def watchdog(self):
        self.send(WATCHDOG=1)


async def ping_watchdog(notifier, interval_s):
    """Send WATCHDOG=1 every ``interval_s`` from the daemon's own loop: a wedged loop stops the
    pings, which is the point."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)


def encode_notification(program, fields):
    """One datagram: the program's name first, so a receiver never loses it, and the whole
    message cut to fit MAX_DATAGRAM_BYTES (a long STATUS is shortened, not the name)."""
    lines = [f"X_XAPI_NAME={program}"]
    lines += [f"{key}={value}".replace("\n", " ") for key, value in fields.items()]
    data = "\n".join(lines).encode("utf-8")
    if len(data) > MAX_DATAGRAM_BYTES:
        data = data[:MAX_DATAGRAM_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return data


def parse_notification(data):
    """``KEY=VALUE`` lines of one datagram as a dict; malformed lines are ignored."""
    fields = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifyReceiver:
    """Binds the unix datagram socket the daemons notify, and calls ``on_message(pid, fields)``
    for each datagram with the sender's pid as the kernel vouches for it."""

    def __init__(self, path, on_message):
        self.path = str(path)
        self.on_message = on_message
        self._sock = None

    def start(self, loop=None):
        loop = loop or asyncio.get_running_loop()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o077)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            # before bind: a datagram that arrives in between would carry no credentials
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._read)

    def _read(self):
        while True:
            try:
                data, ancdata, flags, _addr = self._sock.recvmsg(
                    MAX_DATAGRAM_BYTES, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            if flags & socket.MSG_TRUNC:
                log.warning("notify: a message over %d bytes was cut", MAX_DATAGRAM_BYTES)
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[:_UCRED.size])[0]
            if pid is None:
                log.warning("notify: a message without sender credentials was dropped")
                continue
            try:
                self.on_message(pid, parse_notification(data))
            except Exception:
                log.exception("notify: handling a message from pid %d failed", pid)

    def close(self, loop=None):
        if self._sock is not None:
            loop = loop or asyncio.get_event_loop()
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
