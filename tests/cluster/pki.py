"""Keys and certificates for a throw-away control plane.

Made fresh at every start, so nothing secret lives in the repo or the cache:
a CA, an API-server serving certificate signed by it (for 127.0.0.1 and
localhost), and the service-account signing key.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = datetime.timedelta(days=2)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: str, issuer: str, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clock skew
        .not_valid_after(now + _VALID)
    )


def write_pki(folder: Path) -> dict[str, Path]:
    """Write a CA, a serving cert for 127.0.0.1/localhost and an SA key.

    Returns paths by role: ``ca_crt``, ``serving_crt``, ``serving_key``,
    ``sa_key`` (RSA private key, PEM) and ``sa_pub`` (its public key, PEM).
    EC P-256 keys for TLS because they are made in microseconds; RSA for the
    service-account key, the algorithm the API server always accepts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder("maitred-test-ca", "maitred-test-ca", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        _builder("kube-apiserver", "maitred-test-ca", key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    files = {
        "ca_crt": _cert_pem(ca_cert),
        "serving_crt": _cert_pem(cert),
        "serving_key": _key_pem(key),
        "sa_key": _key_pem(sa_key),
        "sa_pub": sa_pub,
    }
    paths = {}
    for role, data in files.items():
        path = folder / f"{role}.pem"
        path.write_bytes(data)
        path.chmod(0o600)
        paths[role] = path
    return paths
