"""TLS for the API: the embedded cluster's private CA, and how a client trusts a server.

``dlapp up --tls`` keeps a private certificate authority in ``<home>/tls/`` (``ca.pem``,
``ca.key``) and issues the server a fresh certificate for ``127.0.0.1``, ``::1``,
``localhost`` and this host's name at each start (``server.pem``, ``server.key``). Keys are
mode 0600, the directory 0700. The CA's certificate is what clients trust: the CLI finds it
through ``server.json``; for a remote server it is ``dlapp login URL --ca-file ca.pem``.

``cryptography`` is imported only to make certificates, so a client does not pay for it.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dlapp.credentials import write_private
from dlapp.errors import DlappError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

TLS_DIR = "tls"
CA_DAYS = 3650
SERVER_DAYS = 397  # issued anew at every start; the longest a browser accepts
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class EmbeddedTls:
    """The files of the embedded cluster's TLS: what the server serves, what clients trust."""

    ca: Path
    cert: Path
    key: Path


def paths(home: Path) -> EmbeddedTls:
    d = home / TLS_DIR
    return EmbeddedTls(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


def ensure_embedded(home: Path, now: datetime.datetime | None = None) -> EmbeddedTls:
    """The CA of ``home`` (made on first use, then kept) and a new server certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = now or datetime.datetime.now(datetime.UTC)
    files = paths(home)
    ca_key_path = files.ca.with_name("ca.key")
    files.ca.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.ca.parent.chmod(0o700)
    try:
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError("not a key dlapp made")
        if ca_cert.not_valid_after_utc < now + datetime.timedelta(days=SERVER_DAYS):
            raise ValueError("the CA expires soon")
    except (OSError, ValueError):  # none yet, unreadable or expiring: a new CA
        ca_key = _new_key()
        ca_cert = _ca_certificate(ca_key, now)
        write_private(ca_key_path, _key_pem(ca_key))
        files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = _new_key()
    cert = _server_certificate(key, ca_cert, ca_key, now, server_names())
    write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def server_names() -> list[str]:
    """What the embedded server's certificate covers: loopback, and this host's name."""
    names = [*LOOPBACK_IPS, *LOOPBACK_NAMES]
    host = socket.gethostname()
    if host and host.isascii() and host not in names:
        names.append(host)
    return names


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """What a client verifies a server's certificate with: ``ca_file`` alone, else the system's
    certificate authorities."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except FileNotFoundError:
        raise DlappError(f"cannot read the CA file {ca_file}: it does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise DlappError(f"cannot use the CA file {ca_file}: {exc}") from None


def verify_failure(exc: BaseException) -> str | None:
    """Why a server's certificate was refused, when that is what ``exc`` comes from."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return str(cur.verify_message or cur.reason or "certificate verify failed")
        cur = cur.__cause__ or cur.__context__
    return None


# -- making certificates ------------------------------------------------------------------------


def _new_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: EllipticCurvePrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _ca_certificate(key: EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dlapp"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"dlapp local CA ({socket.gethostname()})"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    now: datetime.datetime,
    names: list[str],
) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dlapp server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
