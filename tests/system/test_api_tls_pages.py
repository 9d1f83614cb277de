"""xapi-api's management interface (TLS on management-address:https-port, with the
self-signed certificate made on first start) and its HTTP pages /status, /status.json and
/pool/xmldbdump, in a real tree, with the XenAPI SDK over https and raw HTTP on every listener.
One tree for the module; the last test breaks the certificate and restarts xapi-api."""

import http.client
import json
import os
import socket
import ssl
import stat
import subprocess
import xml.etree.ElementTree as ET
import xmlrpc.client

import pytest
import XenAPI
from cryptography import x509

from common.errors import XapiError
from common.paths import PROGRAMS

from .conftest import BIN, Tree, all_ready, clean_env, describe, free_port

PASSWORD = "tls pw"


@pytest.fixture(scope="module")
def tree():
    tree = Tree()
    try:
        tree.init()
        tree.https_port = free_port()
        tree.configure(https_port=tree.https_port, management_address="127.0.0.1")
        done = tree.up()
        assert done.returncode == 0, describe(done)
        done = subprocess.run([str(BIN / "xapi-ctl"), "--root", tree.root, "passwd", "root"],
                              input=PASSWORD + "\n", text=True, capture_output=True,
                              timeout=30, env=clean_env())
        assert done.returncode == 0, done.stderr
        yield tree
    finally:
        tree.cleanup()


def trusting(tree):
    """A client context that trusts the host's own certificate (and checks the name)."""
    return ssl.create_default_context(cafile=str(tree.paths.xapi_ssl_pem))


def https_session(tree, context=None):
    transport = xmlrpc.client.SafeTransport(context=context or trusting(tree))
    session = XenAPI.Session(f"https://127.0.0.1:{tree.https_port}/", transport=transport)
    session.xenapi.login_with_password("root", PASSWORD, "2.3", "tls-test")
    return session


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def get(tree, where, path, headers=None):
    """GET ``path`` on a listener: ``unix``, ``localhost`` or ``management``."""
    if where == "unix":
        conn = UnixHTTPConnection(tree.paths.api_socket)
    elif where == "localhost":
        conn = http.client.HTTPConnection("127.0.0.1", tree.http_port, timeout=30)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", tree.https_port, timeout=30,
                                           context=trusting(tree))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_the_management_interface_serves_the_sdk_over_tls(tree):
    status = tree.status()
    steps = {s["name"]: s for s in status["steps"]}
    for name in ("Initing stunnel path", "Register http handlers",
                 "Bring up the management interface"):
        assert steps[name]["status"] == "ok", steps[name]
    assert status["api"]["https_url"] == f"https://127.0.0.1:{tree.https_port}/"
    pem = tree.paths.xapi_ssl_pem
    assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    assert socket.gethostname() in names.get_values_for_type(x509.DNSName)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3649 <= lifetime.days <= 3651
    session = https_session(tree)
    assert len(session.xenapi.pool.get_all()) == 1
    assert session.xenapi.session.get_record(session._session)["originator"] == "tls-test"
    with pytest.raises(XenAPI.Failure) as err:
        https_session(tree).xenapi.login_with_password("root", "wrong", "2.3", "t")
    assert err.value.details[0] == "SESSION_AUTHENTICATION_FAILED"
    # a client that does not trust the certificate refuses the server
    with pytest.raises(ssl.SSLCertVerificationError):
        https_session(tree, ssl.create_default_context())
    session.xenapi.session.logout()


def test_the_status_page_shows_every_daemon(tree):
    # right after `up` the last daemons may still be inside supervisord's startsecs (STARTING)
    status = tree.wait_status(
        lambda s: all_ready(s) and all(d["state"] == "RUNNING" for d in s["daemons"]), 30,
        "every program ready and RUNNING")
    for where in ("unix", "localhost"):          # open to a local operator
        code, headers, body = get(tree, where, "/status")
        assert code == 200 and headers["Content-Type"].startswith("text/html"), (code, body)
        page = body.decode()
        assert "<script" not in page
        for entry in status["daemons"]:
            assert f"<td>{entry['name']}</td>" in page
            assert f"<td>{entry['pid']}</td>" in page, entry
        assert status["host"]["uuid"] in page
        assert "Print &quot;server starting&quot; message" in page
    code, headers, body = get(tree, "localhost", "/status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert [d["name"] for d in data["daemons"]] == list(PROGRAMS)
    assert all(d["state"] == "RUNNING" and d["ready"] for d in data["daemons"])
    assert all(isinstance(d["uptime_s"], (int, float)) and d["uptime_s"] >= 0
               for d in data["daemons"])
    assert [s["name"] for s in data["steps"]] == [s["name"] for s in status["steps"]]
    assert all("duration_s" in s for s in data["steps"] if s["status"] == "ok")
    assert data["host"]["role"] == "master" and data["healthy"] is True
    assert data["api"] == status["api"]
    # xapi-ctl status --json has the uptimes too (the same gathering)
    assert all(isinstance(d["uptime_s"], (int, float)) for d in status["daemons"])


def test_the_status_page_needs_a_session_on_the_management_interface(tree):
    assert get(tree, "management", "/status")[0] == 401
    assert get(tree, "management", "/status.json?session_id=OpaqueRef:nope")[0] == 403
    session = https_session(tree)
    code, _, body = get(tree, "management", f"/status.json?session_id={session._session}")
    assert code == 200 and json.loads(body)["host"]["role"] == "master"
    assert get(tree, "management", f"/status?session_id={session._session}")[0] == 200
    session.xenapi.session.logout()


def test_xmldbdump_streams_the_database(tree):
    secret = tree.paths.ptoken.read_text().strip()
    assert get(tree, "localhost", "/pool/xmldbdump")[0] == 401
    assert get(tree, "localhost", "/pool/xmldbdump",
               {"Cookie": "pool_secret=wrong"})[0] == 403
    code, headers, body = get(tree, "localhost", "/pool/xmldbdump",
                              {"Cookie": f"other=1; pool_secret={secret}"})
    assert code == 200, body
    assert int(headers["Content-Length"]) == len(body)
    root = ET.fromstring(body)
    assert root.tag == "database"
    tables = {t.get("name"): t for t in root.iter("table")}
    hosts = tables["host"].findall("row")
    assert len(hosts) == 1
    assert hosts[0].get("uuid") == tree.status()["host"]["uuid"]
    assert int(headers["X-Generation"]) <= tree.health("xapi-db")["generation"]
    # with a session, over TLS
    session = https_session(tree)
    code, _, body2 = get(tree, "management", f"/pool/xmldbdump?session_id={session._session}")
    assert code == 200 and ET.fromstring(body2).tag == "database"
    session.xenapi.session.logout()
    # the unix socket is root already
    assert get(tree, "unix", "/pool/xmldbdump")[0] == 200
    assert list(tree.paths.api_spool.iterdir()) == []      # nothing left behind
    assert get(tree, "localhost", "/status.json", {"Cookie": f"pool_secret={secret}"})[0] == 200


def test_a_bad_certificate_keeps_the_host_manageable(tree):
    """A corrupt xapi-ssl.pem: xapi-api comes back (the replay of api.listen never fails), the
    unix socket and localhost serve, the management listener stays closed with an error naming
    the file; once the file is removed a restart makes a new certificate."""
    pem = tree.paths.xapi_ssl_pem
    old = pem.read_bytes()
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    tree.ctl_ok("restart", "xapi-api")
    health = tree.health("xapi-api")
    assert health["listeners"]["management"] is None
    error = health["listen_errors"]["management"]
    assert error[:2] == ["SERVER_CERTIFICATE_INVALID", str(pem)], error
    with pytest.raises(XapiError) as err:
        tree.call("xapi-api", "api.check_listener", "management")
    assert str(pem) in str(err.value)
    assert health["boot_state"] == "ready"
    assert get(tree, "unix", "/status.json")[0] == 200
    assert get(tree, "localhost", "/status.json")[0] == 200
    assert tree.status()["api"]["https_url"] is None
    pem.unlink()
    tree.ctl_ok("restart", "xapi-api")
    assert pem.read_bytes() != old
    assert tree.health("xapi-api")["listen_errors"] == {}
    session = https_session(tree)
    assert session.xenapi.pool.get_all()
    session.xenapi.session.logout()
