"""xapi-api's RRD handlers, answered by xapi-rrd over its RPC:

- ``GET /rrd_updates?session_id=&start=&interval=&cf=&host=&vm_uuid=&json=``: rrd.updates (xport
  XML, or JSON with json=true);
- ``GET /host_rrd?session_id=``: rrd.host_rrd, this host's full RRD as rrdtool-dump XML;
- ``GET /vm_rrd?session_id=&uuid=``: rrd.vm_rrd, a VM's full RRD.

Who may read them: as /pool/xmldbdump (pages.py): the unix socket is pre-authenticated, elsewhere
a valid session in ``session_id`` (or the pool secret cookie); missing: 401, refused: 403.
Replies: a bad parameter (xapi-rrd's INVALID_VALUE, UUID_INVALID) is 400 with its reason; no
RRD for what is asked (RRD_NOT_FOUND) 404; xapi-rrd not running or not answering in time 503.
"""

import logging

from common.errors import XapiError
from daemons.api.http import Response
from daemons.api.pages import query

log = logging.getLogger("xapi-api")

RRD_TIMEOUT_S = 15.0
XML_TYPE = "text/xml; charset=utf-8"
JSON_TYPE = "application/json"


def _text(status, text):
    return Response(status, (text + "\n").encode("utf-8", "replace"), close=status >= 400)


class RrdPages:
    def __init__(self, api, pages):
        self.api = api
        self.pages = pages

    @property
    def handlers(self):
        return {"/rrd_updates": self.rrd_updates, "/host_rrd": self.host_rrd,
                "/vm_rrd": self.vm_rrd}

    async def _ask(self, request, method, *args):
        """-> (True, text) or (False, error Response)."""
        if not self.api.paths.rpc_socket("xapi-rrd").exists():
            return False, _text(503, "xapi-rrd is not running: no RRD can be read now")
        try:
            return True, await self.api.rrd.call(method, *args, timeout_s=RRD_TIMEOUT_S)
        except XapiError as exc:
            if exc.code == "INVALID_VALUE":
                name, value, reason = (list(exc.params) + ["", "", ""])[:3]
                return False, _text(400, f"bad parameter {name}={value!r}: {reason}")
            if exc.code == "UUID_INVALID":
                return False, _text(400, f"bad uuid: {' '.join(map(str, exc.params))}")
            if exc.code == "RRD_NOT_FOUND":
                return False, _text(404, f"no RRD: {' '.join(map(str, exc.params))}")
            log.warning("%s from %s: xapi-rrd %s failed: %s", request.path, request.peer,
                        method, exc)
            return False, _text(503, f"xapi-rrd did not answer: {exc}")

    async def rrd_updates(self, request):
        await self.pages._authorise(request, open_on_localhost=False)
        params = query(request)
        params.pop("session_id", None)
        ok, result = await self._ask(request, "rrd.updates", params)
        if not ok:
            return result
        # xapi-rrd read the json flag: its answer is a JSON object or an XML document
        as_json = result.lstrip().startswith("{")
        return Response(200, result.encode("utf-8"),
                        content_type=JSON_TYPE if as_json else XML_TYPE)

    async def host_rrd(self, request):
        await self.pages._authorise(request, open_on_localhost=False)
        ok, result = await self._ask(request, "rrd.host_rrd")
        return Response(200, result.encode("utf-8"), content_type=XML_TYPE) if ok else result

    async def vm_rrd(self, request):
        await self.pages._authorise(request, open_on_localhost=False)
        uuid = query(request).get("uuid")
        if not uuid:
            return _text(400, "bad parameter uuid='': the VM's uuid is required")
        ok, result = await self._ask(request, "rrd.vm_rrd", uuid)
        return Response(200, result.encode("utf-8"), content_type=XML_TYPE) if ok else result
