"""Checks of the ``fedweave serve`` options, made before anything is created.

``serve`` makes a run directory and prints one token per client; an option that can only
fail later (a port out of range, a key that is not PEM, ``--min-clients 0``) must fail
first, so a mistyped command leaves no directory and shows no tokens that will never work.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from pathlib import Path

from ..core.errors import ConfigError
from .wire import MAX_FRAME_BYTES


def check_address(address: str, option: str = "--address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) with a port in 0..65535 (0: any free port)."""
    example = f"{option} must be HOST:PORT with a port in 0..65535 (0 picks a free port), e.g. 127.0.0.1:50051, " \
              f"0.0.0.0:50051 or [::1]:50051"
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not port.isascii():
        raise ConfigError(f"{example}; got {address!r}.")
    number = int(port)
    if number > 65535:
        raise ConfigError(f"{example}; got port {number} in {address!r}.")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{example}; got {address!r}.")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{example}; {host!r} is not an IPv6 address.") from None
    elif ":" in host or any(ch.isspace() for ch in host):
        raise ConfigError(f"{example} (IPv6 hosts go in brackets); got {address!r}.")
    return host, number


def check_port_free(address: str) -> None:
    """Refuse, before any run directory or token exists, an address another process
    already listens on (the server itself binds later; a race in between is reported
    then). Port 0 always has a free port; a host name that does not resolve is left to
    the server's own bind, whose message names it."""
    host, port = check_address(address)
    if port == 0:
        return
    host = host[1:-1] if host.startswith("[") else host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise ConfigError(f"Cannot listen on {address}: {exc.strerror or exc}. Another process holds the port; "
                              f"choose another with --address HOST:PORT (port 0 picks a free one).") from None


def _check_pem(path: Path, what: str, kind: str) -> None:
    """``kind``: 'certificate' or 'private key'. Parsed with ``cryptography`` (the deploy
    extra), so a file that merely contains a BEGIN line is refused too."""
    if not path.is_file():
        raise ConfigError(f"The {what} file {str(path)!r} does not exist.")
    data = path.read_bytes()
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        if kind == "certificate":
            x509.load_pem_x509_certificates(data)
        else:
            serialization.load_pem_private_key(data, password=None)
    except ImportError:  # cryptography missing: the BEGIN line is the check left
        if f"-----BEGIN {'CERTIFICATE' if kind == 'certificate' else ''}".encode() not in data:
            raise ConfigError(f"The {what} file {str(path)!r} is not a PEM {kind}.") from None
    except (ValueError, TypeError) as exc:
        extra = " (an encrypted key is not supported: give it unencrypted, readable by this user only)" \
            if "password" in str(exc).lower() or "encrypted" in str(exc).lower() else ""
        raise ConfigError(f"The {what} file {str(path)!r} is not a PEM {kind}{extra}: {exc}. Give the PEM files of "
                          "a certificate and its private key (e.g. made by openssl or "
                          "fedweave.deploy.tls.write_self_signed).") from None


def check_serve_options(*, address: str, frame_bytes: int, min_clients: int | None, join_timeout_s: float | None,
                        tls_cert: str | Path | None, tls_key: str | Path | None) -> None:
    """Every ``serve`` option that does not need the built experiment."""
    check_address(address)
    if isinstance(frame_bytes, bool) or not isinstance(frame_bytes, int) or not 1 <= frame_bytes <= MAX_FRAME_BYTES:
        raise ConfigError(f"--frame-bytes must be an integer in 1..{MAX_FRAME_BYTES} (tensor bytes per gRPC message; "
                          f"default {1 << 20}), got {frame_bytes!r}.")
    if min_clients is not None and (isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1):
        raise ConfigError(f"--min-clients must be an integer >= 1 (connected clients needed before a round starts; "
                          f"default schedule.clients_per_round), got {min_clients!r}.")
    if join_timeout_s is not None and not (isinstance(join_timeout_s, (int, float)) and math.isfinite(join_timeout_s)
                                           and join_timeout_s > 0):
        raise ConfigError(f"--join-timeout must be a number of seconds > 0 (leave it out to wait for clients "
                          f"without limit), got {join_timeout_s!r}.")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("Give both --tls-cert and --tls-key, or neither.")
    if tls_cert is not None:
        _check_pem(Path(tls_cert), "--tls-cert", "certificate")
        _check_pem(Path(tls_key), "--tls-key", "private key")
