"""The supervisord XML-RPC client (over its unix socket), shared by xapi-init and xapi-ctl."""

import http.client
import socket
import xmlrpc.client

from common.errors import XapiError

# supervisord's process states (supervisor.states.ProcessStates)
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")
RUNNING_STATES = (STARTING, RUNNING, BACKOFF, STOPPING)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout_s):
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path, timeout_s):
        super().__init__()
        self._path = path
        self._timeout_s = timeout_s

    def make_connection(self, host):
        return _UnixHTTPConnection(self._path, self._timeout_s)


class SupervisorUnreachable(XapiError):
    code = "SUPERVISOR_UNREACHABLE"


class Supervisor:
    """One supervisord, reached at its unix socket. Every call is bounded by ``timeout_s``; a
    new connection per call, so one object may be used from several threads."""

    def __init__(self, socket_path, timeout_s=30.0):
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s

    def _proxy(self, timeout_s=None):
        return xmlrpc.client.ServerProxy(
            "http://localhost/RPC2",
            transport=_UnixTransport(self.socket_path, timeout_s or self.timeout_s),
            allow_none=True,
        )

    def _call(self, name, *args, timeout_s=None):
        proxy = self._proxy(timeout_s)
        try:
            return getattr(proxy, name)(*args)
        except xmlrpc.client.Fault as fault:
            raise XapiError("SUPERVISOR_FAULT", name, fault.faultString) from None
        except (OSError, http.client.HTTPException) as exc:
            raise SupervisorUnreachable(
                "SUPERVISOR_UNREACHABLE", self.socket_path, str(exc)) from None
        finally:
            proxy("close")()

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
