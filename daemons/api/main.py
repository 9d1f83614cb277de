"""xapi-api: the XenAPI front. XML-RPC and JSON-RPC over HTTP on the unix socket, on TCP and
on TLS (the management interface), sessions, the methods generated from the schema, events,
the host's boot state, the HTTP pages /pool/xmldbdump, /status and /status.json, the RRD
handlers (/rrd_updates, /host_rrd, /vm_rrd: xapi-rrd's answers), SR.scan and the RPCs of two
periodic jobs (api.scan_srs, api.revalidate_sessions)."""

import asyncio
import gc
import shutil
import socket
import sys

from common import inventory
from common.daemon import Daemon
from common.errors import XapiError
from common.rpc import AsyncRpcClient
from daemons.api import jsonrpc_wire, xmlrpc_wire
from daemons.api.dbclient import DbClient
from daemons.api import marshal as m
from daemons.api.dispatch import Dispatcher
from daemons.api.events import Events
from daemons.api.http import HttpServer, Limits, Response
from daemons.api.methods import build_table
from daemons.api.pages import Pages
from daemons.api import revalidate
from daemons.api.storage import Storage
from daemons.api.sessions import Sessions
from daemons.api import tls

BOOT_STATES = ("booting", "ready", "emergency")
LISTENERS = ("unix", "localhost", "management")
XMLRPC_PATHS = ("/", "/RPC2")
JSONRPC_PATH = "/jsonrpc"
ADDRESS_LOOKUP_TIMEOUT_S = 2.0


class ApiDaemon(Daemon):
    """The XenAPI front. The boot state comes from xapi-init as a command; so do the method
    table (api.register_methods) and the listeners (api.listen)."""

    program = "xapi-api"

    def __init__(self, argv=None):
        super().__init__(argv)
        self.boot_state = "booting"
        self.boot_error = ["HOST_STILL_BOOTING"]
        self.master_address = None
        self.listen_errors = {}        # listener -> the error that kept it closed
        self.certificate = None        # tls.describe() of the management certificate
        self._tasks = set()            # background work (reading the certificate)

    async def setup(self):
        self.db = DbClient(self.paths.rpc_endpoint("xapi-db"))
        self.rrd = AsyncRpcClient(self.paths.rpc_endpoint("xapi-rrd"))
        self.storage = Storage(self)
        self.sessions = Sessions(self)
        self.events = Events(self)
        self.dispatcher = Dispatcher(self)
        self.http = HttpServer(self.handle_http, Limits.from_config(self.config))
        self.pages = Pages(self)
        shutil.rmtree(self.paths.api_spool, ignore_errors=True)   # dumps of a previous life
        self.register("api.set_boot_state", self.set_boot_state, command=True)
        self.register("api.register_methods", self.register_methods, command=True)
        self.register("api.listen", self.listen, command=True)
        self.register("api.check_listener", self.check_listener)
        self.register("api.scan_srs", self.storage.scan_srs)
        self.register("api.revalidate_sessions", lambda: revalidate.revalidate_sessions(self))

    # -- commands ---------------------------------------------------------------------------------
    def set_boot_state(self, state, error=None):
        """Command: ``booting``, ``ready`` or ``emergency`` with the XenAPI error that every call
        outside the emergency list answers with."""
        if state not in BOOT_STATES:
            raise XapiError("INVALID_VALUE", "boot_state", state)
        self.boot_state = state
        if state == "ready":
            self.boot_error = None
        else:
            self.boot_error = list(error) if error else ["HOST_STILL_BOOTING"]
        self.log.info("boot state is now %s%s", state,
                      f" ({' '.join(self.boot_error)})" if self.boot_error else "")
        return True

    def register_methods(self):
        """Command (the step "Register RPC callbacks"): the method table, generated from the
        schema, is served from now on."""
        self.dispatcher.table = build_table([*self.events.methods(), *self.storage.methods()])
        gc.collect()
        gc.freeze()     # the table's thousands of objects live for good: out of the GC's scans
        return {"methods": len(self.dispatcher.table)}

    async def listen(self, *names):
        """Command: the listeners that are to be open, all of them (each start-up step sends
        the set so far, so the newest command, the one replayed after a restart, names them
        all): ``unix`` (var/lib/xcp/xapi, mode 0600), ``localhost`` (localhost-address:http-port)
        and ``management`` (TLS on the management address:https-port). Open listeners are
        kept. A listener that cannot be opened is logged and remembered, and the others are
        still opened: the command does not fail, so that a replay after a restart still brings
        up the rest; each step asks ``api.check_listener`` (not replayed) about its own."""
        unknown = [name for name in names if name not in LISTENERS]
        if unknown or not names:
            raise XapiError("INVALID_VALUE", "listener", ",".join(map(str, unknown or names)))
        for name in names:
            if self.http.endpoint(name):
                continue
            try:
                where = await self._open(name)
            except XapiError as exc:
                self.listen_errors[name] = list(exc.description)
                self.log.error("XenAPI listener %s not opened: %s", name, exc)
                continue
            self.listen_errors.pop(name, None)
            self.log.info("XenAPI listening on %s (%s)", where, name)
        return {name: self.http.endpoint(name) or "not open" for name in names}

    def check_listener(self, name):
        """The step's check: ``name`` is open (its endpoint), else the error that kept it
        closed."""
        where = self.http.endpoint(name)
        if where:
            return {"listening": where}
        raise XapiError(*(self.listen_errors.get(name)
                          or ["API_LISTEN_FAILED", str(name), "not asked to listen"]))

    def listener_endpoints(self):
        return {name: self.http.endpoint(name) for name in LISTENERS}

    async def _open(self, name):
        if name == "unix":
            return await self.http.listen_unix("unix", self.paths.api_socket)
        if name == "localhost":
            host, port, context = self.config["localhost-address"], self.config["http-port"], None
        else:
            host, port = await self.management_address(), self.config["https-port"]
            context = await self._tls_context(host)
        try:
            return await self.http.listen_tcp(name, host, port, ssl_context=context)
        except OSError as exc:
            raise XapiError("API_LISTEN_FAILED", f"{host}:{port}",
                            exc.strerror or str(exc)) from None

    async def management_address(self):
        """The option management-address if set, else the address of this host's record
        (set from the management PIF at start-up), else 127.0.0.1."""
        configured = (self.config["management-address"] or "").strip()
        if configured:
            return configured
        if not self.paths.rpc_socket("xapi-db").exists():    # a slave before its DB starts
            return "127.0.0.1"
        try:
            host_uuid = inventory.read_inventory(self.paths.inventory).get(
                inventory.INSTALLATION_UUID)
            host_ref = await self.db.call("db.get_by_uuid", "host", host_uuid,
                                          timeout_s=ADDRESS_LOOKUP_TIMEOUT_S)
            address = await self.db.call("db.read_field", "host", host_ref, "address",
                                          timeout_s=ADDRESS_LOOKUP_TIMEOUT_S)
            if address:
                return address
        except XapiError as exc:
            if exc.code == "UUID_INVALID":       # first start: dbsync makes it later
                self.log.info("management address: no host record yet; using 127.0.0.1")
            else:
                self.log.warning("management address: the host record is out of reach "
                                 "(%s); using 127.0.0.1", exc)
        return "127.0.0.1"

    async def _tls_context(self, address):
        """The certificate (made on first start if missing) and the SSL context from it. An
        existing file is checked by OpenSSL as the context loads it; reading its names (with
        the ``cryptography`` package, slow to import) is left to the background, off the
        start-up path, unless the file is refused and the reason is wanted."""
        path = self.paths.xapi_ssl_pem
        loop = asyncio.get_running_loop()
        if path.exists():
            try:
                context = tls.server_context(path)
            except XapiError:
                await loop.run_in_executor(None, tls.describe, path)   # the precise reason
                raise
            task = loop.create_task(self._describe_certificate(path, address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return context
        try:
            info = await loop.run_in_executor(None, tls.ensure_certificate, path,
                                              socket.gethostname(), [address])
        except OSError as exc:
            raise XapiError("SERVER_CERTIFICATE_INVALID", str(path),
                            f"cannot write: {exc.strerror or exc}") from None
        self.log.info("made a self-signed certificate %s for %s (valid until %s)", path,
                      ", ".join(info["names"]), info["not_after"])
        self.certificate = {k: info[k] for k in ("subject", "names", "not_after")}
        return tls.server_context(path)

    async def _describe_certificate(self, path, address):
        try:
            info = await asyncio.get_running_loop().run_in_executor(None, tls.describe, path)
        except XapiError as exc:
            self.log.warning("the certificate %s cannot be described: %s", path, exc)
            return
        if address not in info["names"]:
            self.log.warning("the certificate %s does not name the management address %s "
                             "(it names %s): clients that check names will refuse it", path,
                             address, ", ".join(info["names"]) or "nothing")
        self.certificate = {k: info[k] for k in ("subject", "names", "not_after")}

    # -- HTTP ---------------------------------------------------------------------------------------
    async def handle_http(self, request):
        page = self.pages.handlers.get(request.path)
        if page is not None:
            return await self.pages.serve(request, page)
        if request.path in XMLRPC_PATHS or request.path == JSONRPC_PATH:
            if request.method != "POST":
                return Response(405, b"POST a call here\n", close=True,
                                headers={"Allow": "POST"})
            if request.path == JSONRPC_PATH:
                return await self._jsonrpc(request)
            return await self._xmlrpc(request)
        return Response(404, f"no handler for {request.path[:200]}\n".encode(), close=True)

    async def _xmlrpc(self, request):
        try:
            name, params = xmlrpc_wire.parse(request.body)
        except xmlrpc_wire.WireError as exc:
            self.log.info("XML-RPC from %s: %s", request.peer, exc)
            return Response(500, f"{exc}\n".encode(), close=True)
        ok, value = await self.dispatcher.dispatch(name, params, request.transport, m.XML,
                                                   xmlrpc_wire.success_typed)
        try:
            body = value if ok else xmlrpc_wire.failure(value)
        except (TypeError, ValueError, OverflowError) as exc:
            self.log.error("%s: reply not encodable: %s", name, exc)
            body = xmlrpc_wire.failure(["INTERNAL_ERROR", f"{name}: reply not encodable"])
        return Response(200, body, content_type=xmlrpc_wire.CONTENT_TYPE)

    async def _jsonrpc(self, request):
        try:
            call = jsonrpc_wire.parse(request.body)
        except xmlrpc_wire.WireError as exc:
            self.log.info("JSON-RPC from %s: %s", request.peer, exc)
            return Response(500, f"{exc}\n".encode(), close=True)
        ok, value = await self.dispatcher.dispatch(call.method, call.params, request.transport,
                                                   m.JSON)
        try:
            body = jsonrpc_wire.success(call, value) if ok else jsonrpc_wire.failure(call, value)
        except (TypeError, ValueError) as exc:
            self.log.error("%s: reply not encodable: %s", call.method, exc)
            body = jsonrpc_wire.failure(call, ["INTERNAL_ERROR", "reply not encodable"])
        return Response(200, body, content_type=jsonrpc_wire.CONTENT_TYPE)

    # -- health -------------------------------------------------------------------------------------
    def health(self):
        health = super().health()
        health["boot_state"] = self.boot_state
        health["boot_error"] = self.boot_error
        health["listeners"] = self.listener_endpoints()
        health["listen_errors"] = dict(self.listen_errors)
        health["certificate"] = self.certificate
        health["methods"] = len(self.dispatcher.table)
        return health

    def stats(self):
        stats = super().stats()
        stats["http"] = dict(self.http.stats)
        stats["api_calls"] = self.dispatcher.calls
        stats["api_failures"] = dict(self.dispatcher.failures)
        stats["sessions_local"] = len(self.sessions.local)
        stats["sr_scans"] = self.storage.scans
        stats["sr_scan_failures"] = self.storage.scan_failures
        return stats

    async def teardown(self):
        await self.http.close()
        self.db.close()
        self.rrd.close()


def main(argv=None):
    return ApiDaemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
