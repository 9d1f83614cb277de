"""The supervisord client's own XML-RPC (common/supervisor.py), checked against the standard
library's xmlrpc.client (what supervisord itself speaks), and against a real supervisord."""

import os
import subprocess
import sys
import time
import xmlrpc.client

import pytest

from common.errors import XapiError
from common.supervisor import (Fault, ProtocolError, Supervisor, SupervisorUnreachable,
                               decode_response, encode_call)

PROCESS_INFO = {"name": "xapi-db", "group": "xapi-db", "start": 1796065020, "stop": 0,
                "now": 1796065025, "state": 20, "statename": "RUNNING", "spawnerr": "",
                "exitstatus": 0, "logfile": "/r/var/log/xapi-db.err", "pid": 4242,
                "description": "pid 4242, uptime 0:00:05"}


@pytest.mark.parametrize("value", [
    True, False, 0, -7, 2**31 - 1, 1.5, "", "plain", "a <b> & 'c' \"d\" é ✓",
    PROCESS_INFO, [PROCESS_INFO, dict(PROCESS_INFO, name="xapi-api", pid=0)], [], {},
    {"nested": [1, "two", [False], {"x": ""}]},
])
def test_replies_read_as_xmlrpc_client_writes_them(value):
    body = xmlrpc.client.dumps((value,), methodresponse=True).encode()
    assert decode_response(body) == value


def test_an_untyped_value_is_a_string():
    body = (b"<?xml version='1.0'?><methodResponse><params><param><value>  RUNNING "
            b"</value></param></params></methodResponse>")
    assert decode_response(body) == "  RUNNING "


def test_a_fault_raises_with_its_string():
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(10, "BAD_NAME: nope")).encode()
    with pytest.raises(Fault) as info:
        decode_response(body)
    assert (info.value.faultCode, info.value.faultString) == (10, "BAD_NAME: nope")


@pytest.mark.parametrize("body", [
    b"", b"<methodResponse>", b"not xml at all", b"<methodCall/>",
    b"<methodResponse><params><param><value><base64>AA==</base64></value></param></params>"
    b"</methodResponse>",
    b"<methodResponse><params><param/></params></methodResponse>",
])
def test_malformed_or_unknown_replies_are_protocol_errors(body):
    with pytest.raises(ProtocolError):
        decode_response(body)


@pytest.mark.parametrize("params", [(), ("xapi-db",), ("xapi-db", False), ("x&<y>", True),
                                    ("xapi-db", -2000, 0), (None, 1.25)])
def test_calls_read_back_as_xmlrpc_client_reads_them(params):
    assert xmlrpc.client.loads(encode_call("supervisor.someMethod", params)) == (
        params, "supervisor.someMethod")


def test_a_value_it_cannot_send_is_refused():
    with pytest.raises(TypeError, match="bytes"):
        encode_call("supervisor.x", (b"raw",))


def test_no_socket_means_unreachable(tmp_path):
    sv = Supervisor(tmp_path / "none.sock", timeout_s=1.0)
    assert sv.alive() is False
    with pytest.raises(SupervisorUnreachable, match="supervisor.getPID"):
        sv.pid()


@pytest.fixture
def supervisord(tmp_path):
    """A real supervisord with one program that sleeps, on a unix socket in tmp_path."""
    sock = tmp_path / "sv.sock"
    conf = tmp_path / "sv.conf"
    conf.write_text(f"""[unix_http_server]
file={sock}
[supervisord]
logfile={tmp_path}/sv.log
pidfile={tmp_path}/sv.pid
childlogdir={tmp_path}
nodaemon=false
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:sleeper]
command={sys.executable} -c "import time; time.sleep(600)"
autostart=false
startsecs=0
stdout_logfile={tmp_path}/sleeper.log
""")
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bin_dir, "supervisord"), "-c", str(conf)], check=True,
                   timeout=60)
    sv = Supervisor(sock, timeout_s=10.0)
    deadline = time.monotonic() + 30
    while not sv.alive():
        assert time.monotonic() < deadline, "supervisord did not answer"
        time.sleep(0.02)
    pid = sv.pid()
    try:
        yield sv
    finally:
        try:
            sv.stop("sleeper", True)
            sv.shutdown()
        except XapiError:
            os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)


def test_against_a_real_supervisord(supervisord):
    sv = supervisord
    assert sv.info("sleeper")["statename"] == "STOPPED"
    assert sv.start("sleeper", True) is True
    assert sv.start("sleeper", False) is True            # already started: not an error
    info = sv.all_info()["sleeper"]
    assert info["statename"] == "RUNNING" and info["pid"] > 0
    with pytest.raises(XapiError, match="BAD_NAME"):
        sv.info("no-such-program")
    assert sv.stop("sleeper", True) is True
    assert sv.stop("sleeper", True) is True              # not running: fine
    assert sv.info("sleeper")["statename"] == "STOPPED"
