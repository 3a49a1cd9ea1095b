"""A whole deployment on loopback in one process: the server and clients as threads.

For tests, benchmarks and demos; real deployments run ``fedweave serve`` and
``fedweave join`` in separate processes. Everything listens on 127.0.0.1 only.

>>> run = LoopbackRun({"schedule": {"rounds": 2}}, out="runs/loopback")
>>> run.start_clients()            # one thread per client, partition i of the config's dataset
>>> result = run.wait(timeout=120)
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from ..config import load_config
from ..rundir import RunDirectory
from .client import DeployClient
from .server import DeployServer
from .tokens import TokenStore


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackRun:
    """Build the run, start its server on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, config: Any, *, out: str | Path, overrides: list[str] | None = None, tls: tuple | None = None,
                 server_kwargs: dict | None = None, max_examples: int | None = None):
        from ..experiment import build_experiment

        self.config = load_config(config, overrides)
        self.config.output.dir = str(out)
        self.exp = build_experiment(self.config)
        self.run_dir = RunDirectory(out)
        self.run_dir.create(self.config.to_yaml())
        n = self.exp.data.num_clients
        self.tokens_store, self.tokens = TokenStore.generate(n, max_examples=max_examples)
        self.tls = tls  # (cert, key) paths
        kw = dict(server_kwargs or {})
        self.server = DeployServer(self.exp, self.run_dir, self.tokens_store, address="127.0.0.1:0",
                                   tls_cert=tls[0] if tls else None, tls_key=tls[1] if tls else None, **kw)
        self.port = self.server.start()
        self.address = f"127.0.0.1:{self.port}"
        self.result = None
        self.error: BaseException | None = None
        self.clients: dict[int, DeployClient] = {}
        self.client_errors: dict[int, BaseException] = {}
        self._threads: list[threading.Thread] = []
        self._server_thread = threading.Thread(target=self._serve, name="fedweave-server", daemon=True)
        self._server_thread.start()

    def _serve(self) -> None:
        try:
            self.result = self.server.run()
        except BaseException as exc:  # surfaced by wait()
            self.error = exc

    def client(self, cid: int, **kwargs) -> DeployClient:
        kwargs.setdefault("dataset", self.exp.data)
        if self.tls:
            kwargs.setdefault("root_ca", self.tls[0])
        return DeployClient(self.address, self.tokens[cid], partition=cid, give_up_s=kwargs.pop("give_up_s", 30.0),
                            poll_ms=kwargs.pop("poll_ms", 1000), **kwargs)

    def start_clients(self, ids: list[int] | None = None, **kwargs) -> None:
        for cid in range(self.exp.data.num_clients) if ids is None else ids:
            c = self.client(cid, **kwargs)
            self.clients[cid] = c
            t = threading.Thread(target=self._client_main, args=(cid, c), name=f"fedweave-client-{cid}", daemon=True)
            t.start()
            self._threads.append(t)

    def _client_main(self, cid: int, c: DeployClient) -> None:
        try:
            c.run()
        except BaseException as exc:
            self.client_errors[cid] = exc

    def wait(self, timeout: float = 120.0):
        """The run's RunResult; raises if the server failed or did not finish in time."""
        self._server_thread.join(timeout)
        if self._server_thread.is_alive():
            self.server.stop()
            self._server_thread.join(10)
            raise TimeoutError(f"the loopback run did not finish within {timeout:g} s")
        for t in self._threads:
            t.join(10)
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self) -> None:
        self.server.stop()
        self._server_thread.join(10)
