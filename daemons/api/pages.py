"""xapi-api's HTTP handlers beside the RPC wires: ``GET /pool/xmldbdump`` (the pool database as
state.db XML, streamed), ``GET /status`` (an HTML page, no script) and ``GET /status.json``;
the RRD handlers (/rrd_updates, /host_rrd, /vm_rrd) are rrd_pages.py's, served from here.

Who may read them:
- the unix socket is pre-authenticated as root (as for the XenAPI): everything;
- ``/pool/xmldbdump`` elsewhere: the pool secret in a ``pool_secret`` cookie (how a slave of
  xapi fetches the database) or a valid session in a ``session_id`` query parameter;
- ``/status`` and ``/status.json`` are open on the localhost listener (a local operator, as on
  the unix socket) and need a valid ``session_id`` (or the pool secret cookie) on the
  management interface, which faces the network.
Missing credentials: 401; wrong ones: 403.

The status object is common/status.py's gather (the same as `xapi-ctl status --json`), run in
an executor thread (it is blocking); concurrent page requests share one gathering, and a
gathering serves for ``STATUS_CACHE_S``.
"""

import asyncio
import hmac
import html
import itertools
import json
import logging
import os
import time
from urllib.parse import parse_qs

from common import status as status_mod
from common.errors import XapiError
from daemons.api.http import Response

log = logging.getLogger("xapi-api")

DUMP_TIMEOUT_S = 120.0
CHUNK_BYTES = 256 * 1024
STATUS_CACHE_S = 0.5
HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json"
XML_TYPE = "application/xml"
_SERIAL = itertools.count()


class Denied(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


def cookies(request):
    """The request's cookies as {name: value} (the last one of a name wins)."""
    out = {}
    for part in request.headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out[name] = value.strip().strip('"')
    return out


def query(request):
    try:
        return {k: v[-1] for k, v in parse_qs(request.query, max_num_fields=32).items()}
    except ValueError:
        return {}


class Pages:
    def __init__(self, api):
        self.api = api
        from daemons.api.rrd_pages import RrdPages    # it uses this module's query()
        self.rrd = RrdPages(api, self)   # /rrd_updates, /host_rrd, /vm_rrd
        self._status = None              # (monotonic time, status) of the last gathering
        self._status_lock = asyncio.Lock()

    @property
    def handlers(self):
        return {"/pool/xmldbdump": self.xmldbdump, "/status": self.status_html,
                "/status.json": self.status_json, **self.rrd.handlers}

    async def serve(self, request, handler):
        if request.method != "GET":
            return Response(405, b"GET this page\n", close=True, headers={"Allow": "GET"})
        try:
            return await handler(request)
        except Denied as exc:
            log.info("%s %s from %s (%s): %s", request.method, request.path, request.peer,
                     request.listener, exc.reason)
            return Response(exc.status, f"{exc.reason}\n".encode(), close=True)

    # -- who may read -------------------------------------------------------------------------
    def _pool_secret_ok(self, request):
        given = cookies(request).get("pool_secret")
        if not given:
            return None
        try:
            secret = self.api.paths.ptoken.read_text().strip()
        except OSError as exc:
            log.error("cannot read the pool secret %s: %s", self.api.paths.ptoken, exc)
            return False
        return bool(secret) and hmac.compare_digest(given.encode(), secret.encode())

    async def _authorise(self, request, open_on_localhost):
        if request.transport == "unix":
            return
        if open_on_localhost and request.listener == "localhost":
            return
        secret_ok = self._pool_secret_ok(request)
        if secret_ok:
            return
        session = query(request).get("session_id")
        if session:
            try:
                await self.api.sessions.check(session)
                return
            except XapiError as exc:
                raise Denied(403, f"session_id refused: {exc.code}") from None
        if secret_ok is False:
            raise Denied(403, "pool_secret refused")
        raise Denied(401, "authorisation needed: a session_id query parameter "
                          "(or the pool_secret cookie)")

    # -- /pool/xmldbdump ------------------------------------------------------------------------
    async def xmldbdump(self, request):
        """xapi-db writes its dump to a private temp file; the file is opened, unlinked and
        streamed, so nothing is left behind whatever the client does."""
        await self._authorise(request, open_on_localhost=False)
        spool = self.api.paths.api_spool
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = spool / f"xmldbdump.{os.getpid()}.{next(_SERIAL)}.db"
        try:
            result = await self.api.db.call("db.dump", str(path), timeout_s=DUMP_TIMEOUT_S)
            f = open(path, "rb")
        except (XapiError, OSError) as exc:
            log.error("/pool/xmldbdump: the dump failed: %s", exc)
            return Response(503, f"the database dump failed: {exc}\n".encode(), close=True)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        size = os.fstat(f.fileno()).st_size
        log.info("/pool/xmldbdump to %s: generation %s, %d bytes", request.peer,
                 result.get("generation"), size)
        return Response(200, content_type=XML_TYPE, stream=_file_chunks(f), length=size,
                        headers={"X-Generation": str(result.get("generation", ""))})

    # -- /status -----------------------------------------------------------------------------
    async def gather(self):
        async with self._status_lock:
            now = time.monotonic()
            if self._status is not None and now - self._status[0] < STATUS_CACHE_S:
                return self._status[1]
            endpoints = status_mod.api_endpoints_of(self.api.listener_endpoints())
            status, code = await asyncio.get_running_loop().run_in_executor(
                None, lambda: status_mod.gather(self.api.paths, api_endpoints=endpoints))
            status["healthy"] = code == status_mod.EXIT_OK
            self._status = (time.monotonic(), status)
            return status

    async def status_json(self, request):
        await self._authorise(request, open_on_localhost=True)
        status = await self.gather()
        body = json.dumps(status, indent=1, sort_keys=True, default=str).encode()
        return Response(200, body + b"\n", content_type=JSON_TYPE)

    async def status_html(self, request):
        await self._authorise(request, open_on_localhost=True)
        return Response(200, render_html(await self.gather()).encode("utf-8"),
                        content_type=HTML_TYPE)


async def _file_chunks(f):
    loop = asyncio.get_running_loop()
    try:
        while chunk := await loop.run_in_executor(None, f.read, CHUNK_BYTES):
            yield chunk
    finally:
        f.close()


# -- the HTML page ---------------------------------------------------------------------------

def _e(value):
    return html.escape("" if value is None else str(value))


def _duration(seconds):
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 60:
        return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _table(headers, rows):
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>\n"
                   for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
         ".ok{color:#070}.bad{color:#b00}.pending{color:#a60}")


def render_html(status):
    """The status object as a page readable without any script."""
    host, init = status.get("host") or {}, status.get("init") or {}
    api = status.get("api") or {}
    state = init.get("state") or "unknown"
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">",
        f"<title>xapi status: {_e(host.get('uuid'))}</title><style>{STYLE}</style></head>",
        "<body>\n<h1>xapi status</h1>\n",
        _table(["host", "role", "master", "start-up", "ready file", "init complete"],
               [[_e(host.get("uuid")), _e(host.get("role")), _e(host.get("master_address")),
                 _e(state) + (" <b class=\"bad\">EMERGENCY MODE</b>"
                              if init.get("emergency") else ""),
                 "yes" if init.get("ready") else "no",
                 "yes" if init.get("complete") else "no"]]),
    ]
    if init.get("error"):
        parts.append(f"<p class=\"bad\">error in {_e(init.get('failed_step'))}: "
                     f"{_e(init['error'])}</p>\n")
    if status.get("error"):
        parts.append(f"<p class=\"bad\">{_e(status['error'])}</p>\n")
    parts.append("<h2>XenAPI</h2>\n" + _table(
        ["unix socket", "http", "https"],
        [[_e(api.get("unix_socket")), _e(api.get("http_url")), _e(api.get("https_url"))]]))
    rows = []
    for d in status.get("daemons", []):
        notes = [n for n in (d.get("last_error"),
                             "stopped by operator" if d.get("operator_stopped") else None) if n]
        ready = '<span class="ok">yes</span>' if d.get("ready") else \
            '<span class="bad">no</span>'
        rows.append([_e(d.get("name")), _e(d.get("state")), ready, _e(d.get("pid") or "-"),
                     _e(_duration(d.get("uptime_s"))),
                     _e(d.get("restarts") if d.get("restarts") is not None else "-"),
                     _e("; ".join(notes))])
    parts.append("<h2>Programs</h2>\n" + _table(
        ["program", "state", "ready", "pid", "uptime", "restarts", "notes"], rows))
    rows = []
    for step in status.get("steps", []):
        result = step.get("status", "")
        css = {"ok": "ok", "failed": "bad", "pending": "pending"}.get(result, "")
        detail = step.get("error") or (step.get("pending") if result == "pending" else None) \
            or step.get("note")
        rows.append([_e(step.get("name")), f"<span class=\"{css}\">{_e(result)}</span>",
                     _e(_duration(step.get("duration_s"))), _e(detail)])
    parts.append("<h2>Start-up steps</h2>\n" + _table(["step", "result", "took", "detail"],
                                                      rows))
    parts.append("</body></html>\n")
    return "".join(parts)
