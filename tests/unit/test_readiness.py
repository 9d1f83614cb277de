"""sd_notify between the daemons and xapi-init (common/readiness.py): a real NotifyReceiver
bound in a short temp dir, Notifiers in this process and in a child process."""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from common.readiness import MAX_DATAGRAM_BYTES, Notifier, NotifyReceiver, parse_notification


@pytest.fixture
def sock_path():
    tmp = tempfile.mkdtemp(prefix="x", dir="/tmp")
    try:
        yield os.path.join(tmp, "notify.sock")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def notify_env(sock_path, monkeypatch):
    """NOTIFY_SOCKET set for the Notifier; monkeypatch restores the environment after."""
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    return sock_path


class Inbox:
    def __init__(self):
        self.messages = []

    def __call__(self, pid, fields):
        self.messages.append((pid, fields))

    async def wait_for(self, count, timeout_s=3.0):
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(self.messages)} messages, expected {count}: "
                                     f"{self.messages}")
            await asyncio.sleep(0.005)
        return self.messages


class receiving:
    """A started NotifyReceiver for the duration of an ``async with``."""

    def __init__(self, path):
        self.inbox = Inbox()
        self.receiver = NotifyReceiver(path, self.inbox)

    async def __aenter__(self):
        self.receiver.start(asyncio.get_running_loop())
        return self.inbox

    async def __aexit__(self, *exc):
        self.receiver.close(asyncio.get_running_loop())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_receiver_gets_ready_status_watchdog_stopping_with_pid_and_name(notify_env):
    async def main():
        async with receiving(notify_env) as inbox:
            notifier = Notifier("xapi-db")
            assert notifier.enabled
            notifier.ready("serving requests")
            notifier.status("loading the database")
            notifier.watchdog()
            notifier.stopping()
            messages = await inbox.wait_for(4)
        assert [pid for pid, _ in messages] == [os.getpid()] * 4
        assert [fields for _, fields in messages] == [
            {"READY": "1", "STATUS": "serving requests", "MAINPID": str(os.getpid()),
             "X_XAPI_NAME": "xapi-db"},
            {"STATUS": "loading the database", "X_XAPI_NAME": "xapi-db"},
            {"WATCHDOG": "1", "X_XAPI_NAME": "xapi-db"},
            {"STOPPING": "1", "STATUS": "stopping", "X_XAPI_NAME": "xapi-db"},
        ]
    run(main())


def test_send_returns_true_when_delivered(notify_env):
    async def main():
        async with receiving(notify_env) as inbox:
            assert Notifier("xapi-api").send(STATUS="x=y") is True
            (pid, fields), = await inbox.wait_for(1)
        assert fields == {"STATUS": "x=y", "X_XAPI_NAME": "xapi-api"}
    run(main())


def test_receiver_survives_a_failing_handler(notify_env):
    seen = []

    def handler(pid, fields):
        seen.append(fields)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    async def main():
        receiver = NotifyReceiver(notify_env, handler)
        receiver.start(asyncio.get_running_loop())
        try:
            notifier = Notifier("xapi-rrd")
            notifier.status("first")
            notifier.status("second")
            deadline = time.monotonic() + 3
            while len(seen) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            receiver.close(asyncio.get_running_loop())
        assert [f["STATUS"] for f in seen] == ["first", "second"]
    run(main())


def test_receiver_socket_is_private_to_the_user(notify_env):
    async def main():
        async with receiving(notify_env):
            assert os.stat(notify_env).st_mode & 0o077 == 0
    run(main())


@pytest.mark.parametrize("data, expected", [
    (b"READY=1\nSTATUS=ok\n", {"READY": "1", "STATUS": "ok"}),
    (b"READY=1\nmalformed\n=novalue\n\nSTATUS=a=b\nEMPTY=\n",
     {"READY": "1", "STATUS": "a=b", "EMPTY": ""}),
    (b"", {}),
    (b"no equals sign at all", {}),
    (b"\xff\xfe=\xff\nOK=1", {"\ufffd\ufffd": "\ufffd", "OK": "1"}),
    (b"STATUS=caf\xc3\xa9", {"STATUS": "café"}),
])
def test_parse_notification_ignores_malformed_lines(data, expected):
    assert parse_notification(data) == expected


def test_notifier_without_notify_socket_sends_nothing(monkeypatch, sock_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    async def main():
        async with receiving(sock_path) as inbox:
            notifier = Notifier("xapi-ha")
            assert notifier.enabled is False
            assert notifier.send(READY=1) is False
            notifier.ready()
            notifier.status("x")
            notifier.watchdog()
            notifier.stopping()
            assert notifier._notifier is None  # no socket was even made
            # Prove the receiver works, so the silence above means something.
            monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
            Notifier("probe").status("probe")
            messages = await inbox.wait_for(1)
        assert [f["X_XAPI_NAME"] for _, f in messages] == ["probe"]
    run(main())


def test_notifier_with_no_receiver_there_returns_false(notify_env):
    notifier = Notifier("xapi-mailer")
    assert notifier.enabled
    assert notifier.send(STATUS="nobody listens") is False
    notifier.ready()  # no exception either


def test_notifier_reaches_a_receiver_recreated_at_the_same_path(notify_env):
    async def main():
        notifier = Notifier("xapi-liveness")
        async with receiving(notify_env) as first:
            assert notifier.send(STATUS="one") is True
            await first.wait_for(1)
        # The receiver is gone: the message is lost, not an exception.
        assert notifier.send(STATUS="lost") is False
        async with receiving(notify_env) as second:
            assert notifier.send(STATUS="two") is True
            messages = await second.wait_for(1)
        assert [f["STATUS"] for _, f in first.messages] == ["one"]
        assert [(pid, f["STATUS"]) for pid, f in messages] == [(os.getpid(), "two")]
    run(main())


def test_notifier_reconnects_without_a_send_in_between(notify_env):
    async def main():
        notifier = Notifier("xapi-periodic")
        async with receiving(notify_env) as first:
            notifier.watchdog()
            await first.wait_for(1)
        async with receiving(notify_env) as second:
            assert notifier.send(WATCHDOG=1) is True
            (pid, fields), = await second.wait_for(1)
        assert fields == {"WATCHDOG": "1", "X_XAPI_NAME": "xapi-periodic"}
    run(main())


def test_message_from_a_child_process_carries_the_child_pid(notify_env):
    code = ("import sys; from common.readiness import Notifier; "
            "n = Notifier('xapi-child'); "
            "sys.exit(0 if n.send(READY=1, STATUS='child') else 3)")

    async def main():
        async with receiving(notify_env) as inbox:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, env={**os.environ, "NOTIFY_SOCKET": notify_env},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 8)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, err.decode()
            (pid, fields), = await inbox.wait_for(1)
        assert pid == proc.pid
        assert pid != os.getpid()
        assert fields == {"READY": "1", "STATUS": "child", "X_XAPI_NAME": "xapi-child"}
    run(main())


@pytest.mark.parametrize("text", ["café", "dom0 → ready", "主机"])
def test_non_ascii_status_arrives_intact(notify_env, text):
    async def main():
        async with receiving(notify_env) as inbox:
            assert Notifier("xapi-api").send(STATUS=text) is True
            (pid, fields), = await inbox.wait_for(1)
        assert fields["STATUS"] == text
    run(main())


def test_long_status_keeps_the_program_name(notify_env):
    async def main():
        async with receiving(notify_env) as inbox:
            Notifier("xapi-db").send(READY=1, STATUS="e" * (MAX_DATAGRAM_BYTES + 100))
            (pid, fields), = await inbox.wait_for(1)
        assert fields.get("X_XAPI_NAME") == "xapi-db"
        assert fields.get("READY") == "1"
    run(main())
