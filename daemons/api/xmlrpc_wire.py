"""XML-RPC requests and replies, as xapi speaks it: a reply is always a struct
``{Status: Success, Value}`` or ``{Status: Failure, ErrorDescription: [code, ...]}``, never an
XML-RPC fault; ``<nil/>`` is neither sent nor accepted (the parser turns it into None, which no
parameter type takes). Parsing is the stdlib's ``xmlrpc.client``; replies are encoded here (the
hot path: about twice as fast as ``xmlrpc.client.dumps``, for the types marshal.py
produces: str, bool, int, float, DateTime, list, dict; strings without a type tag, which
XML-RPC reads as string)."""

import re
import xml.parsers.expat
import xmlrpc.client

CONTENT_TYPE = "text/xml"


class WireError(Exception):
    """A body that is not a method call: the HTTP layer answers 500, as xapi does."""


# Characters XML 1.0 cannot hold; an error parameter echoing client input may carry them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def parse(body):
    """-> (method name, params list)."""
    try:
        params, method = xmlrpc.client.loads(body, use_datetime=False, use_builtin_types=False)
    except (xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError, ValueError,
            TypeError, IndexError, KeyError, OverflowError) as exc:
        raise WireError(f"XML-RPC parse error: {exc}") from None
    if not isinstance(method, str) or not method:
        raise WireError("XML-RPC parse error: not a methodCall with a methodName")
    return method, list(params)


MAXINT, MININT = 2 ** 31 - 1, -2 ** 31
_HEAD = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
_TAIL = "\n</param>\n</params>\n</methodResponse>\n"


def _escape(text):
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def _value(value, out):
    kind = type(value)
    if kind is str:
        out += ("<value>", _escape(value), "</value>")
    elif kind is dict:
        out.append("<value><struct>")
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"struct key {key!r} is not a string")
            out += ("<member><name>", _escape(key), "</name>")
            _value(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif kind is list or kind is tuple:
        out.append("<value><array><data>")
        for item in value:
            _value(item, out)
        out.append("</data></array></value>")
    elif kind is bool:
        out.append("<value><boolean>1</boolean></value>" if value
                   else "<value><boolean>0</boolean></value>")
    elif kind is int:
        if not MININT <= value <= MAXINT:
            raise OverflowError("int exceeds XML-RPC limits")
        out.append(f"<value><int>{value}</int></value>")
    elif kind is float:
        out.append(f"<value><double>{value!r}</double></value>")
    elif isinstance(value, xmlrpc.client.DateTime):
        out.append(f"<value><dateTime.iso8601>{value.value}</dateTime.iso8601></value>")
    else:
        raise TypeError(f"cannot marshal {kind.__name__} objects")


def _encode(struct):
    out = [_HEAD]
    _value(struct, out)
    out.append(_TAIL)
    return "".join(out).encode("utf-8")


def success(value):
    """``value`` already in wire form (marshal.to_wire with XML)."""
    return _encode({"Status": "Success", "Value": value})


def failure(description):
    clean = [_NOT_XML.sub("?", str(item)) for item in description]
    return _encode({"Status": "Failure", "ErrorDescription": clean})
