"""xapi-api in a real tree, driven by the real XenAPI SDK over the unix socket (its
UDSTransport, through a symlink whose path has no "_") and over TCP on 127.0.0.1:<free port>,
plus raw HTTP for the wire shapes and the limits. One tree for the module."""

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import xmlrpc.client

import pytest
import XenAPI

from .conftest import BIN, Tree, clean_env, describe, wait_until

HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 12
MAX_BODY = 1024 * 1024
PASSWORD = "s3cret pw"


@pytest.fixture(scope="module")
def tree():
    tree = Tree()
    link_dir = None
    try:
        tree.init()
        tree.configure(api_header_timeout=HEADER_TIMEOUT_S,
                       api_max_connections=MAX_CONNECTIONS, api_max_body_bytes=MAX_BODY)
        done = tree.up()
        assert done.returncode == 0, describe(done)
        set_password(tree, PASSWORD)
        while True:        # the SDK turns "_" into "/": a link path without underscores
            link_dir = tempfile.mkdtemp(prefix="xs", dir="/tmp")
            if "_" not in link_dir:
                break
            os.rmdir(link_dir)
        os.symlink(tree.paths.api_socket, os.path.join(link_dir, "sock"))
        tree.unix_uri = "http://" + os.path.join(link_dir, "sock").replace("/", "_") + "/"
        yield tree
    finally:
        tree.cleanup()
        if link_dir:
            shutil.rmtree(link_dir, ignore_errors=True)


def set_password(tree, password):
    """`xapi-ctl passwd root` with the password on standard input."""
    done = subprocess.run([str(BIN / "xapi-ctl"), "--root", tree.root, "passwd", "root"],
                          input=password + "\n", text=True, capture_output=True, timeout=30,
                          env=clean_env())
    assert done.returncode == 0, done.stderr


def local_session(tree):
    session = XenAPI.Session(tree.unix_uri, transport=XenAPI.UDSTransport())
    session.xenapi.login_with_password("root", "", "2.3", "tests")
    return session


def tcp_session(tree, password=PASSWORD):
    session = XenAPI.Session(f"http://127.0.0.1:{tree.http_port}/")
    session.xenapi.login_with_password("root", password, "2.3", "tests")
    return session


def failure(fn, *args):
    with pytest.raises(XenAPI.Failure) as err:
        fn(*args)
    return err.value.details


def api_alive(tree):
    health = tree.health("xapi-api")
    assert health["state"] == "serving" and health["boot_state"] == "ready", health
    return health


def raw_http(tree, method, path, body=b"", headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", tree.http_port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def jsonrpc(tree, payload):
    status, body = raw_http(tree, "POST", "/jsonrpc", json.dumps(payload).encode(),
                            {"Content-Type": "application/json"})
    assert status == 200, (status, body)
    return json.loads(body)


# -- the SDK over the unix socket -------------------------------------------------------------

def test_status_names_both_listeners(tree):
    status = tree.status()
    assert status["api"]["unix_socket"] == str(tree.paths.api_socket)
    assert status["api"]["http_url"] == f"http://127.0.0.1:{tree.http_port}/"
    assert stat.S_IMODE(os.stat(tree.paths.api_socket).st_mode) == 0o600
    steps = {s["name"]: s for s in status["steps"]}
    for name in ("Register RPC callbacks",
                 "Start listening on the Unix domain socket used for RPC.",
                 "Start listening on the localhost Internet socket used for RPC."):
        assert steps[name]["status"] == "ok", steps[name]


def test_reads_through_the_sdk(tree):
    x = local_session(tree).xenapi
    pools = x.pool.get_all()
    assert len(pools) == 1
    master = x.pool.get_master(pools[0])
    record = x.host.get_record(master)
    assert record["uuid"] == x.host.get_uuid(master)
    assert x.host.get_by_uuid(record["uuid"]) == master
    assert x.host.get_API_version_major(master) == "2"     # ints travel as strings
    assert record["API_version_major"] == "2"
    assert isinstance(record["enabled"], bool) and isinstance(record["PIFs"], list)
    vms = x.VM.get_all_records()
    assert vms and all(r["uuid"] for r in vms.values())
    dom0 = [ref for ref, r in vms.items() if r["is_control_domain"]]
    assert dom0 and vms[dom0[0]]["resident_on"] == master
    assert isinstance(x.task.get_all_records(), dict)
    assert x.pool.is_slave(master) is False
    assert x.host.is_in_emergency_mode() is False


def test_writes_are_read_back(tree):
    x = local_session(tree).xenapi
    vm = next(iter(x.VM.get_all()))
    x.VM.set_name_label(vm, "renamed by the test")
    assert x.VM.get_name_label(vm) == "renamed by the test"
    assert vm in x.VM.get_by_name_label("renamed by the test")
    x.VM.add_to_other_config(vm, "test-key", "v1")
    assert x.VM.get_other_config(vm)["test-key"] == "v1"
    assert failure(x.VM.add_to_other_config, vm, "test-key", "v2")[0] == "MAP_DUPLICATE_KEY"
    x.VM.remove_from_other_config(vm, "test-key")
    assert "test-key" not in x.VM.get_other_config(vm)
    x.VM.add_tags(vm, "blue")
    assert x.VM.get_tags(vm) == ["blue"]
    x.VM.set_user_version(vm, "7")
    assert x.VM.get_user_version(vm) == "7"


def test_errors_of_bad_calls(tree):
    x = local_session(tree).xenapi
    vm = next(iter(x.VM.get_all()))
    generation = tree.health("xapi-db")["generation"]
    assert failure(x.VM.get_record, "OpaqueRef:nope") == ["HANDLE_INVALID", "VM",
                                                          "OpaqueRef:nope"]
    host = x.host.get_all()[0]
    assert failure(x.VM.get_record, host)[0] == "HANDLE_INVALID"   # a ref of another class
    assert failure(x.VM.get_by_uuid, "not-a-uuid") == ["UUID_INVALID", "VM", "not-a-uuid"]
    assert failure(x.VM.get_record) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record",
                                        "2", "1"]
    assert failure(x.VM.set_name_label, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH",
                                                "VM.set_name_label", "3", "2"]
    assert failure(x.VM.no_such_call, vm) == ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_call"]
    assert failure(x.VM.set_power_state, vm, "Running")[0] == "MESSAGE_METHOD_UNKNOWN"
    assert failure(x.VM.set_user_version, vm, "seven") == ["FIELD_TYPE_ERROR", "value"]
    assert failure(x.VM.set_name_label, vm, 5) == ["FIELD_TYPE_ERROR", "value"]
    with pytest.raises(xmlrpc.client.ProtocolError) as err:   # not XML: expat refuses it
        x.VM.set_name_label(vm, "bad\x01")
    assert err.value.errcode == 500
    # none of them wrote anything
    assert tree.health("xapi-db")["generation"] == generation
    api_alive(tree)


def test_messages(tree):
    x = local_session(tree).xenapi
    host = x.host.get_all()[0]
    host_uuid = x.host.get_uuid(host)
    before = xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ",
                                                  time.gmtime(time.time() - 2)))
    ref = x.message.create("TEST_MESSAGE", "3", "Host", host_uuid, "the body")
    since = x.message.get_since(before)
    assert ref in since and since[ref]["name"] == "TEST_MESSAGE"
    assert since[ref]["priority"] == "3" and since[ref]["obj_uuid"] == host_uuid
    assert isinstance(since[ref]["timestamp"], xmlrpc.client.DateTime)
    assert ref in x.message.get_all_records()
    assert failure(x.message.create, "T", "3", "Host", "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                   "b")[0] == "UUID_INVALID"
    x.message.destroy(ref)
    assert ref not in x.message.get_all_records()
    assert failure(x.message.destroy, ref)[0] == "HANDLE_INVALID"


def test_event_from_blocks_until_another_client_writes(tree):
    watcher, writer = local_session(tree), local_session(tree)
    event_from = getattr(watcher.xenapi.event, "from")
    first = event_from(["vm"], "", 5.0)
    assert first["events"] and all(e["operation"] == "add" for e in first["events"])
    assert first["valid_ref_counts"]["vm"] == len(first["events"])
    vm = first["events"][0]["ref"]
    calls_before = tree.call("xapi-db", "sys.stats")["calls"].get("db.events_since", 0)
    result = {}

    def wait():
        started = time.monotonic()
        result["batch"] = event_from(["vm"], first["token"], 60.0)
        result["took"] = time.monotonic() - started
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    # the watcher's call is waiting inside xapi-db before the write is made
    wait_until(lambda: tree.call("xapi-db", "sys.stats")["calls"].get("db.events_since", 0)
               > calls_before, 10, "the blocking event.from to reach xapi-db")
    assert thread.is_alive()
    writer.xenapi.VM.set_name_label(vm, "woken")
    thread.join(30)
    assert not thread.is_alive()
    assert result["took"] < 30, result["took"]        # woken by the write, not the timeout
    events = result["batch"]["events"]
    assert [(e["operation"], e["ref"]) for e in events] == [("mod", vm)]
    assert events[0]["snapshot"]["name_label"] == "woken"
    # inject: a token just below the touched row, so the next event.from sees it
    token = writer.xenapi.event.inject("vm", vm)
    injected = event_from(["vm"], token, 5.0)
    assert [e["ref"] for e in injected["events"]] == [vm]
    assert int(watcher.xenapi.event.get_current_id()) >= int(token.split(",")[0])


def test_legacy_event_register_next(tree):
    session, writer = local_session(tree), local_session(tree)
    x = session.xenapi
    assert failure(x.event.next)[0] == "SESSION_NOT_REGISTERED"
    x.event.register(["vm"])
    vm = x.VM.get_all()[0]
    writer.xenapi.VM.set_name_description(vm, "next sees this")
    events = x.event.next()
    assert any(e["ref"] == vm and e["operation"] == "mod" for e in events)
    x.event.unregister(["vm"])
    assert failure(x.event.next)[0] == "SESSION_NOT_REGISTERED"


def test_logout_then_the_sdk_logs_in_again(tree):
    session = local_session(tree)
    old = session._session
    assert session.xenapi.session.get_uuid(old)
    # another client ends this session behind the SDK's back
    proxy = xmlrpc.client.ServerProxy(tree.unix_uri, transport=XenAPI.UDSTransport())
    assert proxy.session.logout(old) == {"Status": "Success", "Value": ""}
    assert proxy.VM.get_all(old)["ErrorDescription"] == ["SESSION_INVALID", old]
    assert session.xenapi.pool.get_all()      # SESSION_INVALID -> the SDK logs in again
    assert session._session != old
    session.xenapi.session.logout()


# -- TCP ----------------------------------------------------------------------------------------

def test_tcp_login_needs_the_password(tree):
    assert failure(tcp_session, tree, "wrong") == ["SESSION_AUTHENTICATION_FAILED", "root",
                                                   "Authentication failure"]
    session = tcp_session(tree)
    assert len(session.xenapi.pool.get_all()) == 1
    record = session.xenapi.session.get_record(session._session)
    assert record["auth_user_name"] == "root" and record["originator"] == "tests"
    assert isinstance(record["last_active"], xmlrpc.client.DateTime)
    # a new password counts at once, without a restart
    set_password(tree, "another")
    assert failure(tcp_session, tree)[0] == "SESSION_AUTHENTICATION_FAILED"
    assert tcp_session(tree, "another").xenapi.pool.get_all()
    set_password(tree, PASSWORD)


def test_a_slave_refuses_tcp_logins_and_emergency_mode_gates_calls(tree):
    session = local_session(tree)
    try:
        tree.call("xapi-api", "sys.set_role", "slave", "127.0.0.9")
        assert failure(tcp_session, tree) == ["HOST_IS_SLAVE", "127.0.0.9"]
        tree.call("xapi-api", "api.set_boot_state", "emergency", ["HOST_BROKEN"])
        assert failure(session.xenapi.pool.get_all) == ["HOST_BROKEN"]
        secret = tree.paths.ptoken.read_text().strip()
        emergency = XenAPI.Session(tree.unix_uri, transport=XenAPI.UDSTransport())
        assert failure(emergency.slave_local_login, "wrong")[0] == \
            "SESSION_AUTHENTICATION_FAILED"
        emergency.slave_local_login(secret)
        assert emergency.xenapi.host.is_in_emergency_mode() is True
        assert emergency.xenapi.pool.is_slave("OpaqueRef:any") is True
        emergency.xenapi.session.logout()          # a local session: local_logout
    finally:
        tree.call("xapi-api", "sys.set_role", "master", None)
        tree.call("xapi-api", "api.set_boot_state", "ready")
    assert session.xenapi.pool.get_all()


def test_jsonrpc_v1_and_v2(tree):
    login = jsonrpc(tree, {"method": "session.login_with_password",
                           "params": ["root", PASSWORD, "2.3", "json"], "id": "a"})
    assert login["error"] is None and login["id"] == "a"
    session = login["result"]
    hosts = jsonrpc(tree, {"jsonrpc": "2.0", "method": "host.get_all_records",
                           "params": [session], "id": 7})
    assert hosts["jsonrpc"] == "2.0" and hosts["id"] == 7 and "error" not in hosts
    record = next(iter(hosts["result"].values()))
    assert record["API_version_major"] == 2                 # a JSON number
    assert isinstance(record["enabled"], bool)
    bad = jsonrpc(tree, {"jsonrpc": "2.0", "method": "VM.get_all", "params": ["OpaqueRef:x"],
                         "id": 8})
    assert bad == {"jsonrpc": "2.0", "id": 8, "error": {"code": 1, "message": "SESSION_INVALID",
                                                         "data": ["OpaqueRef:x"]}}
    bad = jsonrpc(tree, {"method": "VM.nope", "params": [session], "id": 9})
    assert bad == {"result": None, "error": ["MESSAGE_METHOD_UNKNOWN", "VM.nope"], "id": 9}


# -- bad input and limits: an error or a closed connection, never a crash ------------------

def test_malformed_bodies(tree):
    for path, body in (("/", b"<methodCall><oops"), ("/RPC2", b"\x00\xff"),
                       ("/jsonrpc", b"{not json"), ("/jsonrpc", b'{"method": "x"}')):
        status, _ = raw_http(tree, "POST", path, body)
        assert status == 500, (path, body, status)
    assert raw_http(tree, "GET", "/nowhere")[0] == 404
    assert raw_http(tree, "GET", "/RPC2")[0] == 405
    api_alive(tree)


def test_huge_body_is_413(tree):
    # the server answers from the headers and closes without reading the body: send only
    # the head, else the client may get EPIPE while it is still writing the body
    with socket.create_connection(("127.0.0.1", tree.http_port), timeout=10) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413"), data
    api_alive(tree)


def test_slow_loris_is_cut_off(tree):
    with socket.create_connection(("127.0.0.1", tree.http_port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")     # headers never finished
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        took = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408"), data
    assert took < HEADER_TIMEOUT_S + 5, took
    api_alive(tree)


def test_too_many_connections_are_refused(tree):
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", tree.http_port), timeout=10)
            held.append(sock)
        # every slot is taken once the server has accepted them all
        def refused():
            with socket.create_connection(("127.0.0.1", tree.http_port), timeout=10) as s:
                return s.recv(4096).startswith(b"HTTP/1.1 503")
        wait_until(refused, 10, "a connection past the limit to be refused")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: raw_http(tree, "POST", "/jsonrpc", b"{}")[0] == 500, 10,
               "the server to serve again once the connections are closed")
    api_alive(tree)
    assert tree.call("xapi-api", "sys.stats")["http"]["refused"] >= 1


def test_nothing_crashed(tree):
    health = api_alive(tree)
    assert tree.status()["_exit"] == 0
    assert health["pid"] == tree.status()["daemons"][1]["pid"]
    assert tree.health("xapi-db")["state"] == "serving"
