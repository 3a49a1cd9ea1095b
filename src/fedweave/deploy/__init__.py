"""Deployment: the same method code on real processes over gRPC.

* :mod:`fedweave.deploy.server` — ``fedweave serve``: the Strategy on the wall clock;
* :mod:`fedweave.deploy.client` — ``fedweave join``: the ClientAlgorithm on local data;
* :mod:`fedweave.deploy.wire` — the message format (JSON header + raw tensor bytes, in frames);
* :mod:`fedweave.deploy.tokens` — per-client tokens (the server stores hashes only);
* :mod:`fedweave.deploy.tls` — TLS credentials and self-signed certificates;
* ``fedweave.proto`` and its committed generated code (``fedweave_pb2*.py``).

Needs the ``deploy`` extra: ``pip install "fedweave[deploy]"`` (grpcio, protobuf, cryptography).
See docs/deployment.md and docs/howto/deploy.md.
"""

from __future__ import annotations

from ..core.errors import FedweaveError


def require_grpc() -> None:
    """Fail with an actionable message when the deploy extra is missing."""
    try:
        import google.protobuf  # noqa: F401
        import grpc  # noqa: F401
    except ImportError as exc:
        raise FedweaveError(f"Deployment needs grpcio and protobuf ({exc}); install them with "
                            "pip install \"fedweave[deploy]\".") from None
