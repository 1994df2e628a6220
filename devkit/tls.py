"""The dev stack's own certificate authorities (``cryptography``): a CA for the NATS
servers' certificate (127.0.0.1/localhost) and the clients' (mutual TLS), and a CA of
its own for the cluster routes, which signs the route certificate only. A route is then
mutual TLS with that CA alone: a client's or a server's certificate can neither open a
route nor answer one (a server dialing a peer checks the peer's certificate too, and
only the route CA's pass). Private keys are written 0600 at creation."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from libs.secret_files import write_secret

VALID_DAYS = 30


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    ca: Path
    server: CertFiles
    client: CertFiles
    # Presented by every server on its cluster routes, and the only certificate a server
    # accepts a route from (nats-server maps it to the route user: ``route_user``); signed
    # by ``route_ca``, which signs nothing else.
    route: CertFiles
    route_ca: Path

    def route_user(self) -> str:
        """The route certificate's subject as nats-server names it (RFC 4514), which
        ``verify_and_map`` compares with the cluster's authorization user."""
        return subject_of(self.route.cert)


ROUTE_NAME = "nats-route"


def subject_of(cert_path: Path) -> str:
    """A certificate's subject, RFC 4514 (most specific first, as nats-server prints it)."""
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).subject.rfc4514_string()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lantau dev stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(
    directory: Path, stem: str = "ca", common_name: str = "Lantau dev CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    if ca_cert.exists() and ca_key.exists():
        cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_secret(ca_key, _key_pem(key))
    ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue(
    directory: Path,
    name: str,
    *,
    server: bool,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> CertFiles:
    """A certificate signed by the dev CA: for a server (127.0.0.1, localhost; server and
    client auth, so cluster routes can use it too) or for a client (client auth)."""
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}-key.pem")
    if files.cert.exists() and files.key.exists():
        return files
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(
        ca_key, hashes.SHA256()
    )
    files.key.unlink(missing_ok=True)
    write_secret(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def make_pki(directory: Path) -> DevPki:
    """The dev CA and its certificates in ``directory`` (kept when already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _load_ca(directory)
    route_ca = _load_ca(directory, "route-ca", "Lantau dev route CA")
    return DevPki(
        ca=directory / "ca.pem",
        server=issue(directory, "nats-server", server=True, ca=ca),
        client=issue(directory, "lantau-client", server=False, ca=ca),
        route=issue(directory, ROUTE_NAME, server=True, ca=route_ca),
        route_ca=directory / "route-ca.pem",
    )
