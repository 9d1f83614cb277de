"""The supervisord XML-RPC client (over its unix socket), shared by xapi-init and xapi-ctl.

A small one of our own: xmlrpc.client brings http.client, email, ssl and decimal with it, some
40 ms of every start of xapi-init and xapi-ctl, both on the way to init complete. supervisord
answers the few types below; anything else is refused with an error naming it."""

import socket
from xml.parsers import expat

from common.errors import XapiError

# supervisord's process states (supervisor.states.ProcessStates)
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")
RUNNING_STATES = (STARTING, RUNNING, BACKOFF, STOPPING)

MAX_REPLY_BYTES = 64 * 1024 * 1024


class SupervisorUnreachable(XapiError):
    code = "SUPERVISOR_UNREACHABLE"


class ProtocolError(Exception):
    """supervisord's reply is not the HTTP or XML-RPC we expect."""


class Fault(Exception):
    def __init__(self, code, string):
        super().__init__(code, string)
        self.faultCode, self.faultString = code, string


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _encode_value(value):
    if isinstance(value, bool):          # before int: a bool is an int
        return f"<boolean>{int(value)}</boolean>"
    if isinstance(value, int):
        return f"<int>{value}</int>"
    if isinstance(value, str):
        return f"<string>{_escape(value)}</string>"
    if isinstance(value, float):
        return f"<double>{value!r}</double>"
    if value is None:
        return "<nil/>"
    raise TypeError(f"XML-RPC to supervisord: cannot send a {type(value).__name__}")


def encode_call(method, params):
    """The body of a methodCall."""
    args = "".join(f"<param><value>{_encode_value(p)}</value></param>" for p in params)
    return (f"<?xml version='1.0'?>\n<methodCall><methodName>{_escape(method)}</methodName>"
            f"<params>{args}</params></methodCall>").encode("utf-8")


def _tree(data):
    """The document as nested [tag, children, text parts]."""
    root = [None, [], []]
    stack = [root]

    def start(tag, _attrs):
        node = [tag, [], []]
        stack[-1][1].append(node)
        stack.append(node)

    parser = expat.ParserCreate("utf-8")
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _tag: stack.pop()
    parser.CharacterDataHandler = lambda text: stack[-1][2].append(text)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ProtocolError(f"malformed XML: {exc}") from None
    if not root[1]:
        raise ProtocolError("an empty reply")
    return root[1][0]


def _child(node, tag):
    for kid in node[1]:
        if kid[0] == tag:
            return kid
    raise ProtocolError(f"<{node[0]}> without <{tag}>")


def _decode_value(node):
    if not node[1]:                      # <value>text</value>: a string
        return "".join(node[2])
    tag, kids, parts = node[1][0]
    text = "".join(parts)
    if tag == "string":
        return text
    if tag in ("int", "i4", "i8"):
        return int(text)
    if tag == "boolean":
        return text.strip() == "1"
    if tag == "double":
        return float(text)
    if tag == "nil":
        return None
    if tag == "array":
        return [_decode_value(v) for v in _child(node[1][0], "data")[1] if v[0] == "value"]
    if tag == "struct":
        return {"".join(_child(m, "name")[2]): _decode_value(_child(m, "value"))
                for m in kids if m[0] == "member"}
    raise ProtocolError(f"an XML-RPC <{tag}> value, which this client does not read")


def decode_response(data):
    """The result of a methodResponse; a fault raises Fault."""
    root = _tree(data)
    if root[0] != "methodResponse" or not root[1]:
        raise ProtocolError(f"<{root[0]}> where a methodResponse was expected")
    body = root[1][0]
    if body[0] == "fault":
        fault = _decode_value(_child(body, "value"))
        raise Fault(fault.get("faultCode"), fault.get("faultString", ""))
    if body[0] != "params":
        raise ProtocolError(f"<{body[0]}> in a methodResponse")
    return _decode_value(_child(_child(body, "param"), "value"))


def _post(socket_path, body, timeout_s):
    """One HTTP/1.0 POST to /RPC2 over the unix socket; the reply's body."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(socket_path)
        sock.sendall(b"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        chunks, size = [], 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise ProtocolError(f"a reply over {MAX_REPLY_BYTES} bytes")
    finally:
        sock.close()
    reply = b"".join(chunks)
    head, sep, payload = reply.partition(b"\r\n\r\n")
    if not sep:
        raise ProtocolError("a reply without HTTP headers" if reply else "an empty reply")
    status_line = head.split(b"\r\n", 1)[0]
    status = status_line.split(None, 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"200":
        raise ProtocolError(f"HTTP status {status_line.decode(errors='replace')!r}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
            if len(payload) < length:
                raise ProtocolError(f"a body cut at {len(payload)} of {length} bytes")
            payload = payload[:length]
    return payload


class Supervisor:
    """One supervisord, reached at its unix socket. Every call is bounded by ``timeout_s``; a
    new connection per call, so one object may be used from several threads."""

    def __init__(self, socket_path, timeout_s=30.0):
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s

    def _call(self, name, *args, timeout_s=None):
        try:
            return decode_response(_post(self.socket_path, encode_call(name, args),
                                         timeout_s or self.timeout_s))
        except Fault as fault:
            raise XapiError("SUPERVISOR_FAULT", name, fault.faultString) from None
        except (OSError, ProtocolError, ValueError) as exc:
            raise SupervisorUnreachable(
                "SUPERVISOR_UNREACHABLE", self.socket_path, f"{name}: {exc}") from None

    def alive(self):
        try:
            return self._call("supervisor.getState", timeout_s=5)["statename"] == "RUNNING"
        except XapiError:
            return False

    def pid(self):
        return self._call("supervisor.getPID")

    def info(self, name):
        return self._call("supervisor.getProcessInfo", name)

    def all_info(self):
        return {info["name"]: info for info in self._call("supervisor.getAllProcessInfo")}

    def start(self, name, wait=False):
        """Ask supervisord to start ``name``; already running is not an error."""
        try:
            return self._call("supervisor.startProcess", name, wait)
        except XapiError as exc:
            if "ALREADY_STARTED" in str(exc):
                return True
            raise

    def stop(self, name, wait=True, timeout_s=None):
        """Stop ``name`` and (with ``wait``) return once it is down; not running is fine."""
        try:
            return self._call("supervisor.stopProcess", name, wait, timeout_s=timeout_s)
        except XapiError as exc:
            if "NOT_RUNNING" in str(exc):
                return True
            raise

    def signal(self, name, signame):
        return self._call("supervisor.signalProcess", name, signame)

    def tail_log(self, name, length_bytes=2000, channel="stderr"):
        method = ("supervisor.readProcessStderrLog" if channel == "stderr"
                  else "supervisor.readProcessStdoutLog")
        try:
            return self._call(method, name, -length_bytes, 0)
        except XapiError:
            return ""

    def shutdown(self):
        return self._call("supervisor.shutdown")
