"""The management interface's TLS: the certificate file ``etc/xensource/xapi-ssl.pem`` (as
xapi's, one PEM file holding the private key and the certificate, mode 0600) and the server
SSL context made from it.

On first start the file is missing and is made here: a self-signed RSA 2048 / SHA-256
certificate valid 10 years (as xapi's gencert), its subject the host name, with subject
alternative names for the host name and the management address, so a client that trusts the
file checks the name it connects to. An existing file is never replaced (an operator may have
installed a certificate of their own); a file that cannot be used (not PEM, no key, no
certificate, key and certificate not a pair) is ``SERVER_CERTIFICATE_INVALID [path, reason]``.

``cryptography`` is imported only when a certificate is made or read, not at xapi-api's start.
"""

import datetime
import ipaddress
import ssl

from common.errors import XapiError
from common.fileutil import atomic_write

FILE_MODE = 0o600
VALID_DAYS = 3650
RSA_BITS = 2048


def _invalid(path, reason):
    return XapiError("SERVER_CERTIFICATE_INVALID", str(path), reason)


def _san_entry(name):
    from cryptography import x509
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_certificate(hostname, addresses, now=None):
    """PEM bytes: an unencrypted PKCS#8 private key, then a self-signed certificate for
    ``hostname`` and ``addresses`` (IP addresses or DNS names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "xapi")])
    sans, seen = [], set()
    for entry in [hostname, *addresses]:
        if entry and entry not in seen:
            seen.add(entry)
            sans.append(_san_entry(entry))
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                         key_cert_sign=True, content_commitment=False,
                                         data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def describe(path):
    """What the file holds: {"subject", "not_after", "names"}; SERVER_CERTIFICATE_INVALID
    when it is not a usable key and certificate pair."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _invalid(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _invalid(path, "no PEM certificate in the file") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _invalid(path, "the private key is encrypted (a passphrase is not supported)") \
            from None
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid(path, "no usable PEM private key in the file") from None
    cert = certs[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.PEM, pub)
            != cert.public_key().public_bytes(serialization.Encoding.PEM, pub)):
        raise _invalid(path, "the private key is not the certificate's")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    return {"subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(), "names": names}


def ensure_certificate(path, hostname, addresses):
    """Make the certificate file if it is missing (atomically, mode 0600); check it either way.
    Returns describe()'s dict plus ``created``."""
    created = False
    if not path.exists():
        atomic_write(path, make_certificate(hostname, addresses), mode=FILE_MODE)
        created = True
    info = describe(path)
    info["created"] = created
    return info


class _EncryptedKey(Exception):
    """The key file needs a passphrase."""


def _no_passphrase():
    """OpenSSL asks for a passphrase: there is none (and no terminal to prompt on)."""
    raise _EncryptedKey()


def server_context(path):
    """The SSL context of the management listener: TLS 1.2 or later, the file's key and
    certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(path), password=_no_passphrase)
    except _EncryptedKey:
        raise _invalid(path, "the private key is encrypted (a passphrase is not supported)") \
            from None
    except ssl.SSLError as exc:
        raise _invalid(path, f"rejected by OpenSSL: {exc.reason or exc}") from None
    except OSError as exc:
        raise _invalid(path, f"cannot read: {exc.strerror or exc}") from None
    return context
