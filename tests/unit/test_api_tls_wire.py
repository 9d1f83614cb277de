"""xapi-api's certificate file (daemons/api/tls.py: made on first start, checked, clear errors
naming the file) and its XML-RPC reply encoder (xmlrpc_wire.py), which must read back through
the stdlib's parser exactly as xmlrpc.client.dumps' output does."""

import os
import stat
import xmlrpc.client

import pytest
from hypothesis import given, settings, strategies as st

from common.errors import XapiError
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
