"""xapi-api's certificate file (daemons/api/tls.py: made on first start, checked, clear errors
naming the file) and its XML-RPC reply encoder (xmlrpc_wire.py), which must read back through
the stdlib's parser exactly as xmlrpc.client.dumps' output does."""

import os
import stat
import xmlrpc.client
from datetime import timezone

import pytest
from hypothesis import given, settings, strategies as st

from common import schema
from common.errors import XapiError
from daemons.api import marshal as m
from daemons.api import tls, xmlrpc_wire


def test_a_missing_certificate_is_made_once_mode_0600(tmp_path):
    pem = tmp_path / "xapi-ssl.pem"
    info = tls.ensure_certificate(pem, "host-a", ["127.0.0.7"])
    assert info["created"] is True and stat.S_IMODE(os.stat(pem).st_mode) == 0o600
    assert info["names"] == ["host-a", "127.0.0.7"] and info["subject"] == "CN=host-a"
    assert info["not_after"].startswith(str(int(info["not_after"][:4])))
    first = pem.read_bytes()
    again = tls.ensure_certificate(pem, "other", ["10.0.0.1"])
    assert again["created"] is False and pem.read_bytes() == first   # never replaced
    assert tls.server_context(pem) is not None


@pytest.mark.parametrize("content, reason", [
    (b"", "no PEM certificate"),
    (b"garbage\n", "no PEM certificate"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
     "no PEM certificate"),
])
def test_a_bad_file_is_an_error_naming_it(tmp_path, content, reason):
    pem = tmp_path / "xapi-ssl.pem"
    pem.write_bytes(content)
    with pytest.raises(XapiError) as err:
        tls.ensure_certificate(pem, "h", ["127.0.0.1"])
    assert err.value.description[:2] == ["SERVER_CERTIFICATE_INVALID", str(pem)]
    assert reason in err.value.description[2]
    assert pem.read_bytes() == content                     # left as it was


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path):
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    tls.ensure_certificate(a, "a", ["127.0.0.1"])
    tls.ensure_certificate(b, "b", ["127.0.0.1"])
    key_a = a.read_bytes().split(b"-----BEGIN CERTIFICATE-----")[0]
    cert_b = b"-----BEGIN CERTIFICATE-----" + b.read_bytes().split(
        b"-----BEGIN CERTIFICATE-----")[1]
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(key_a + cert_b)
    with pytest.raises(XapiError) as err:
        tls.describe(mixed)
    assert "not the certificate's" in str(err.value) and str(mixed) in str(err.value)
    cert_only = tmp_path / "cert.pem"
    cert_only.write_bytes(cert_b)
    with pytest.raises(XapiError) as err:
        tls.describe(cert_only)
    assert "no usable PEM private key" in str(err.value)


TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn")), max_size=20)
WIRE = st.recursive(
    st.one_of(TEXT, st.booleans(), st.integers(-2 ** 31, 2 ** 31 - 1),
              st.floats(allow_nan=False, allow_infinity=False),
              st.datetimes().map(lambda d: xmlrpc.client.DateTime(d.strftime("%Y%m%dT%H:%M:%S")))),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(value=WIRE)
def test_the_reply_encoder_reads_back_as_the_stdlibs(value):
    ours = xmlrpc.client.loads(xmlrpc_wire.success(value))
    stdlib = xmlrpc.client.loads(xmlrpc.client.dumps(
        ({"Status": "Success", "Value": value},), methodresponse=True).encode("utf-8"))
    assert ours == stdlib


def test_the_reply_encoder_refuses_what_xmlrpc_cannot_carry():
    for bad in (2 ** 31, None, {1: "x"}, object()):
        with pytest.raises((TypeError, OverflowError)):
            xmlrpc_wire.success(bad)


# -- the typed reply encoder (success_typed) writes what success(to_wire(...)) writes -----------

def _typed_values(t):
    """Values of the marshal type ``t`` as the DB hands them over (and a few it should not)."""
    kind = t[0]
    if kind in ("string", "ref"):
        return st.one_of(TEXT, st.none(), st.integers())
    if kind == "enum":
        return st.sampled_from(t[1]) if t[1] else TEXT
    if kind == "int":
        return st.one_of(st.integers(-2 ** 70, 2 ** 70), st.booleans())
    if kind == "float":
        return st.one_of(st.floats(), st.integers(-2 ** 40, 2 ** 40))
    if kind == "bool":
        return st.one_of(st.booleans(), st.none())
    if kind == "datetime":
        return st.one_of(st.datetimes(timezones=st.just(timezone.utc)),
                         st.just("20250319T04:16:24Z"))
    if kind == "set":
        return st.one_of(st.none(), st.lists(_typed_values(t[1]), max_size=3))
    if kind == "map":
        return st.one_of(st.none(), st.dictionaries(TEXT, _typed_values(t[1]), max_size=3))
    if kind == "record":
        fields = m.record_fields(t[1])
        return st.fixed_dictionaries({}, optional={name: _typed_values(ftype)
                                                   for name, ftype, _ in fields})
    return st.just("")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_typed_encoder_writes_the_bytes_of_to_wire_then_success(data):
    """Every class's record (fields left out take their defaults), and sets and maps of it."""
    cls_name = data.draw(st.sampled_from(sorted(schema.CLASSES)))
    t = data.draw(st.sampled_from([m.record(cls_name), m.map_of(m.record(cls_name)),
                                   m.set_of(m.ref(cls_name)), m.VOID, m.INT, m.DATETIME]))
    value = data.draw(_typed_values(t))
    assert xmlrpc_wire.success_typed(t, value) == \
        xmlrpc_wire.success(m.to_wire(t, value, m.XML))


def test_the_typed_encoder_takes_the_other_types_through_to_wire():
    event = {"id": 3, "timestamp": "1.5", "class": "message", "operation": "del", "ref": "r",
             "snapshot": None}
    t = m.EVENT_BATCH
    value = {"events": [event], "valid_ref_counts": {"VM": 2}, "token": "5,3"}
    assert xmlrpc_wire.success_typed(t, value) == \
        xmlrpc_wire.success(m.to_wire(t, value, m.XML))
    assert xmlrpc.client.loads(xmlrpc_wire.success_typed(m.INT, 2 ** 40))[0] == \
        ({"Status": "Success", "Value": str(2 ** 40)},)


# -- the request parser's fast path (the SDK's calls) gives what the stdlib's parser gives ------

NAME = st.text(st.sampled_from("abcXYZ019_.:-"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(name=NAME, params=st.lists(st.one_of(st.text(max_size=12), TEXT), max_size=4))
def test_the_request_parser_reads_the_sdks_calls_as_the_stdlib_does(name, params):
    body = xmlrpc.client.dumps(tuple(params), name).encode("utf-8")
    try:
        stdlib, method = xmlrpc.client.loads(body)
    except Exception:
        stdlib = None
    if stdlib is None or not method:
        with pytest.raises(xmlrpc_wire.WireError):
            xmlrpc_wire.parse(body)
    else:
        assert xmlrpc_wire.parse(body) == (method, list(stdlib))


def test_the_request_parser_takes_the_fast_path_for_plain_strings_only():
    plain = xmlrpc.client.dumps(("OpaqueRef:a-1", ""), "host.get_record").encode()
    assert xmlrpc_wire._SDK_CALL.fullmatch(plain)
    assert xmlrpc_wire.parse(plain) == ("host.get_record", ["OpaqueRef:a-1", ""])
    for other in [("a&b",), ("x]]>y",), ("é",), (5,), ("a\r\nb",), ({"k": "v"},)]:
        body = xmlrpc.client.dumps(other, "VM.f").encode()
        assert not xmlrpc_wire._SDK_CALL.fullmatch(body)
        assert xmlrpc_wire.parse(body) == ("VM.f", list(xmlrpc.client.loads(body)[0]))
