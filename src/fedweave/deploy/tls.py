"""TLS material: gRPC credentials from PEM files, and self-signed certificates for tests and demos."""

from __future__ import annotations

import datetime as _dt
import ipaddress
from pathlib import Path

from ..core.errors import ConfigError


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"The {what} file {str(p)!r} does not exist.")
    data = p.read_bytes()
    if b"-----BEGIN" not in data:
        raise ConfigError(f"The {what} file {str(p)!r} is not PEM (no -----BEGIN line).")
    return data


def server_credentials(cert: str | Path, key: str | Path):
    import grpc

    return grpc.ssl_server_credentials([(_read(key, "TLS key"), _read(cert, "TLS certificate"))])


def channel_credentials(root_ca: str | Path | None):
    """Credentials that trust ``root_ca`` (a PEM file), or the system's roots when None."""
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=None if root_ca is None else _read(root_ca, "root CA"))


def write_self_signed(cert_path: str | Path, key_path: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                      days: int = 7) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``hosts``; clients pass it as ``--root-ca``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
