"""Hypothesis against a real xapi-api in a real tree: random XML-RPC bodies (well-formed calls
of random and of real method names with random parameters, random bytes, and valid calls cut
or spliced at random) never crash the daemon. Every request gets an HTTP answer; a 200 is a
XenAPI reply struct; a call that fails leaves its target record untouched (no partial write);
no call ends in INTERNAL_ERROR or a handler error; xapi-api keeps its pid and answers health."""

import http.client
import subprocess
import xmlrpc.client

import pytest
import XenAPI
from hypothesis import HealthCheck, given, settings, strategies as st

from common.rpc import RpcClient

from .conftest import BIN, Tree, clean_env, describe

PASSWORD = "fuzz pw"
EXAMPLES = 300

# Real methods that write the target VM (a template: nothing else in the tree writes it)
# or elsewhere; given the valid session and the target's ref, then random parameters.
TARGETED = ("VM.set_name_label", "VM.set_name_description", "VM.add_to_other_config",
            "VM.remove_from_other_config", "VM.set_other_config", "VM.add_tags",
            "VM.remove_tags", "VM.set_tags", "VM.set_user_version", "VM.set_VCPUs_max",
            "VM.set_memory_static_max", "VM.set_is_a_template", "VM.set_affinity",
            "VM.get_record", "VM.set_HVM_boot_params", "event.inject", "message.create",
            "event.from", "VM.add_to_blocked_operations", "VM.set_actions_after_crash")
OTHER_NAMES = ("session.login_with_password", "session.logout", "pool.get_all",
               "host.get_record", "event.get_current_id", "message.get_since",
               "session.slave_local_login", "VM.get_by_uuid", "")

INT32 = st.integers(min_value=-(2 ** 31), max_value=2 ** 31 - 1)
# text XML can carry, so that most bodies reach the dispatcher; the kind "raw-text" below
# sends any text (control characters make expat refuse the body)
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn")), max_size=40)
SCALARS = st.one_of(st.booleans(), INT32, TEXT,
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.binary(max_size=20).map(xmlrpc.client.Binary),
                    st.none(), st.sampled_from(["OpaqueRef:NULL", "", "1", "true",
                                                "20250101T00:00:00Z", "-1", "vm", "*"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12)


@pytest.fixture(scope="module")
def tree():
    tree = Tree()
    try:
        tree.init()
        done = tree.up()
        assert done.returncode == 0, describe(done)
        done = subprocess.run([str(BIN / "xapi-ctl"), "--root", tree.root, "passwd", "root"],
                              input=PASSWORD + "\n", text=True, capture_output=True,
                              timeout=30, env=clean_env())
        assert done.returncode == 0, done.stderr
        session = XenAPI.Session(f"http://127.0.0.1:{tree.http_port}/")
        session.xenapi.login_with_password("root", PASSWORD, "2.3", "fuzz")
        tree.session = session._session
        vms = session.xenapi.VM.get_all_records()
        tree.target = next(ref for ref, r in sorted(vms.items()) if r["is_a_template"])
        tree.api_pid = tree.health("xapi-api")["pid"]
        with RpcClient(tree.paths.rpc_endpoint("xapi-db"), timeout_s=10) as db:
            tree.db = db
            yield tree
    finally:
        tree.cleanup()


def dumps(params, name):
    return xmlrpc.client.dumps(tuple(params), name, allow_none=True).encode("utf-8")


@st.composite
def bodies(draw):
    """A request body; SESSION and TARGET stand for the session and the target VM."""
    kind = draw(st.sampled_from(["random-name", "targeted", "targeted", "targeted", "bytes",
                                 "cut", "splice", "raw-text"]))
    params = draw(st.lists(VALUES, max_size=5))
    if kind == "raw-text":
        params.insert(draw(st.integers(0, len(params))), draw(st.text(max_size=20)))
    if kind == "random-name":
        name = draw(st.one_of(TEXT, st.sampled_from(OTHER_NAMES)))
        return dumps([draw(st.sampled_from(["SESSION", "OpaqueRef:x", 1]))] + params, name)
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    name = draw(st.sampled_from(TARGETED))
    body = dumps(["SESSION", "TARGET"] + params, name)
    if kind in ("targeted", "raw-text"):
        return body
    if kind == "cut":
        return body[:draw(st.integers(0, len(body)))]
    if kind == "splice":
        at = draw(st.integers(0, len(body)))
    return body[:at] + draw(st.binary(min_size=1, max_size=20)) + body[at:]


class Client:
    """One keep-alive connection to the localhost listener, reopened when the server closes
    it (it does after a malformed body)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def post(self, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self.conn.request("POST", "/", body, {"Content-Type": "text/xml"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if resp.will_close:
            self.conn.close()
            self.conn = None
        return resp.status, data


def target_record(tree):
    return tree.db.call("db.read_record", "VM", tree.target)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies())
def test_random_xmlrpc_bodies_never_crash_the_daemon(tree, body):
    body = body.replace(b"SESSION", tree.session.encode()).replace(b"TARGET",
                                                                    tree.target.encode())
    client = getattr(tree, "fuzz_client", None) or Client(tree.http_port)
    tree.fuzz_client = client
    before = target_record(tree)
    status, data = client.post(body)
    assert status in (200, 500), (status, data[:200])
    if status == 200:
        (reply,), _ = xmlrpc.client.loads(data)
        assert reply["Status"] in ("Success", "Failure"), reply
        if reply["Status"] == "Failure":
            assert reply["ErrorDescription"][0] != "INTERNAL_ERROR", reply
            assert target_record(tree) == before, (body[:300], reply)
    else:
        assert target_record(tree) == before, body[:300]


def test_the_daemon_survived(tree):
    health = tree.health("xapi-api")
    assert health["pid"] == tree.api_pid and health["state"] == "serving"
    stats = tree.call("xapi-api", "sys.stats")
    assert stats["http"]["handler_errors"] == 0, stats
    assert "INTERNAL_ERROR" not in stats["api_failures"], stats["api_failures"]
    assert stats["api_calls"] >= EXAMPLES // 4     # most bodies reached the dispatcher
    status = tree.status()
    assert status["_exit"] == 0
